"""quilt3's configuration file (`config.yml` in quilt3's data directory), shared with the quilt3 client.

`config()` follows quilt3's `quilt3.config()` (spec section 1.4) with two deliberate differences: without
arguments and without a config.yml it returns the defaults and makes no network call (quilt3 autoconfigures
against open.quiltdata.com); and it returns the values as stored, where quilt3 validates them again (and
fails on a stored value it would refuse to set: validation is for setting values, spec section 1.3).  The
file is written exactly as quilt3 writes it (`yaml.dump` of a plain dict: sorted keys, PyYAML defaults), so
either client can read what the other wrote.
"""

from __future__ import annotations

import datetime
import json
import pathlib
from collections import OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import platformdirs
import yaml

from quiltmount.errors import QuiltException, UserError

CONFIG_JSON_TIMEOUT = 30.0


def data_dir() -> Path:
    """quilt3's BASE directory: `$XDG_DATA_HOME/Quilt` on Linux (author not part of the path)."""
    return Path(platformdirs.user_data_dir("Quilt", "QuiltData"))


def config_path() -> Path:
    return data_dir() / "config.yml"


def template() -> dict[str, Any]:
    """quilt3's defaults, in the template's order."""
    return {
        "navigator_url": None,
        "default_local_registry": (data_dir() / "packages").as_uri(),
        "default_remote_registry": None,
        "default_install_location": None,
        "registryUrl": None,
        "telemetry_disabled": False,
        "s3Proxy": None,
        "apiGatewayEndpoint": None,
        "binaryApiGatewayEndpoint": None,
        "default_registry_version": 1,
        "region": None,
    }


def validate_url(url: Any) -> None:
    """A URL must be a string with at least a scheme and a host (quilt3's `validate_url`, which fails with an
    AttributeError on a number)."""
    if not isinstance(url, str):
        raise QuiltException(f"Invalid URL -- Requires a string: {url!r}")
    parsed = urlparse(url)
    if not all((parsed.scheme, parsed.netloc)):
        raise QuiltException(f"Invalid URL -- Requires at least scheme and host: {url}")
    try:
        parsed.port
    except ValueError:
        raise QuiltException(f"Invalid URL -- Port must be a number: {url}") from None


class QuiltConfig(OrderedDict):
    """An ordered mapping that validates on assignment, with quilt3's repr."""

    def __init__(self, filepath: str | Path, *args: Any, **kwargs: Any) -> None:
        self.filepath = pathlib.Path(filepath)
        super().__init__(*args, **kwargs)

    def __setitem__(self, key: Any, value: Any) -> None:
        if key == "navigator_url" and value:
            if not isinstance(value, str):
                raise ValueError(f"Expected a string for config key {key!r}, but got {value!r}")
            value = value.strip().rstrip("/")
        if isinstance(key, str) and key.endswith("_url") and value:
            validate_url(value)
        super().__setitem__(key, value)

    @classmethod
    def as_stored(cls, filepath: str | Path, values: dict[str, Any]) -> QuiltConfig:
        """`values` as they are, unvalidated: validation applies when values are set, not when they are read
        (spec 1.3), so that a value that would be refused still shows, and can be set right."""
        stored = cls(filepath)
        for key, value in values.items():
            OrderedDict.__setitem__(stored, key, value)
        return stored

    def __repr__(self) -> str:
        return f"<{type(self).__name__} at {str(self.filepath)!r} {json.dumps(self, indent=4)}>"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: the problem and where it is."""
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def load_config() -> dict[str, Any]:
    """The defaults overlaid with every key of config.yml (no network call, unlike quilt3 without a file).

    A config.yml that is not a YAML mapping with string keys is an error (quilt3 would fail later, e.g. when
    it writes the file back)."""
    values = template()
    path = config_path()
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"cannot read {path}: it is not UTF-8 text") from None
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise UserError(f"cannot read {path}: invalid YAML: {_yaml_problem(exc)}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path} is not a YAML mapping of settings")
        if not all(isinstance(key, str) for key in loaded):
            raise UserError(f"{path} has a setting whose name is not a string")
        values.update(loaded)
    return values


def get_from_config(key: str) -> Any:
    return load_config().get(key)


def write_config(data: dict[str, Any], *, keep_backup: bool = False) -> None:
    """Replace config.yml like quilt3's `write_yaml`: old file renamed to a timestamped backup first, the
    backup restored on failure and removed on success unless `keep_backup`."""
    path = config_path()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    backup = path.with_name(path.name + ".backup." + now)
    try:
        if path.exists():
            path.replace(backup)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as stream:
            yaml.dump(dict(data), stream)
    except Exception:
        if backup.exists():
            backup.replace(path)
        raise
    if backup.exists() and not keep_backup:
        backup.unlink()


def configure_from_url(catalog_url: str) -> dict[str, Any]:
    """Autoconfigure from `<catalog_url>/config.json`; every non-template setting is reset to its default."""
    import requests

    catalog_url = catalog_url.rstrip("/")
    validate_url(catalog_url)
    config_url = catalog_url + "/config.json"
    try:
        response = requests.get(config_url, timeout=CONFIG_JSON_TIMEOUT)
    except requests.RequestException as exc:
        raise QuiltException(f"Failed to connect to {catalog_url}: {exc}") from None
    if not response.ok:
        raise QuiltException(f"An HTTP Error ({response.status_code}) occurred: {response.reason}",
                             response=response)
    try:
        fetched = response.json()
    except ValueError:
        fetched = None
    if not isinstance(fetched, dict):
        raise QuiltException(f"{config_url} is not a Quilt catalog configuration (expected a JSON object)")
    try:
        new_config = QuiltConfig("", fetched)
    except (QuiltException, ValueError) as exc:  # a value quilt3 would refuse to set, or a non-string URL
        raise QuiltException(f"{config_url}: {exc}") from None
    if not new_config.get("navigator_url"):
        new_config["navigator_url"] = catalog_url
    values = template()
    for key, value in new_config.items():
        if key in values:
            values[key] = value
    write_config(values, keep_backup=True)
    return values


def config(*catalog_url: str, **config_values: Any) -> QuiltConfig:
    """Read or set quilt3's configuration, like `quilt3.config()`.

    * `config()`: the current config (the defaults, without network access, when there is no config.yml);
    * `config(url)`: autoconfigure from the catalog at `url` (previous file kept as a backup);
    * `config("")`: reset to the defaults (previous file kept as a backup);
    * `config(key=value, ...)`: validate and set values.
    """
    if catalog_url and config_values:
        raise QuiltException("Expected either an auto-config URL or key=value pairs, but got both.")
    if len(catalog_url) > 1:
        raise QuiltException("`catalog_url` cannot be used with other `config_values`.")
    if catalog_url:
        if catalog_url[0]:
            values = configure_from_url(catalog_url[0])
        else:
            values = template()
            write_config(values, keep_backup=True)
    elif config_values:
        values = load_config()
        for key, value in QuiltConfig("", config_values).items():
            values[key] = value
        write_config(values)
    else:
        values = load_config()
    return QuiltConfig.as_stored(config_path(), values)


def _registry_setting(key: str) -> str | None:
    value = load_config().get(key)
    if value and not isinstance(value, str):
        raise UserError(f"{key} in {config_path()} must be a registry URL, not a {type(value).__name__}")
    return value.rstrip("/") if value else None


def default_local_registry() -> str:
    return _registry_setting("default_local_registry") or str(template()["default_local_registry"])


def default_remote_registry() -> str | None:
    return _registry_setting("default_remote_registry")


__all__ = ["QuiltConfig", "config", "config_path", "configure_from_url", "data_dir", "default_local_registry",
           "default_remote_registry", "get_from_config", "load_config", "template", "validate_url",
           "write_config"]
