"""quilt3's configuration file (`config.yml` in quilt3's data directory), shared with the quilt3 client.

Only reading is implemented here so far; the package verbs need `default_local_registry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import platformdirs
import yaml

from quiltmount.errors import UserError


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


def load_config() -> dict[str, Any]:
    """The defaults overlaid with every key of config.yml (no network call, unlike quilt3 without a file)."""
    values = template()
    path = config_path()
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path} is not a YAML mapping")
        values.update(loaded)
    return values


def default_local_registry() -> str:
    return str(load_config()["default_local_registry"] or template()["default_local_registry"]).rstrip("/")


def default_remote_registry() -> str | None:
    value = load_config().get("default_remote_registry")
    return str(value).rstrip("/") if value else None


__all__ = ["config_path", "data_dir", "default_local_registry", "default_remote_registry", "load_config",
           "template"]
