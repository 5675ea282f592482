"""Package workflows: validating a new revision against the registry's `.quilt/workflows/config.yml`, as
quilt3 8.0.0 does on every `build`/`push` (`quilt3.workflows`), and the header's `workflow` value it writes.

quilt3's steps, in its order, with its messages:

1. the config is read (absent: no workflows) and checked against quilt3's config schema (a copy ships
   with this module: `workflow-config-1.schema.json`), then its `version` (at most 1.1.0);
2. the workflow is chosen: `...` means `default_workflow` (None without one), None means none (refused if
   `is_workflow_required`, true by default), an unknown id is refused;
3. `handle_pattern` is compiled, and the `metadata_schema` then the `entries_schema` are loaded from the
   `schemas` section (`s3://` URLs, with an optional `versionId`, or absolute `file://` URLs; a local schema
   on an S3 registry is refused) and checked (Draft 7, no `$ref`);
4. the revision is checked: message (`is_message_required`), name (`handle_pattern`, searched), the
   header's `user_meta` (`{}` when absent), then the entries as a list of `{"logical_key", "size", "meta"}`
   (the entries' *user* metadata), in tree order.  Schemas are applied with jsonschema's validator for
   their `$schema` (Draft 7 only), without a format checker, exactly as quilt3 does.

The header then gets `{"id", "config", "schemas"?}`: the URLs of the config and schemas as read (S3: with the
`versionId` the read returned), so the top hash is quilt3's.

Deliberate differences: a `handle_pattern` that is not a regular expression is a `ConfigurationError`
(quilt3 lets `re.error` escape); a schema that is not UTF-8 is "Couldn't parse ... as JSON." (quilt3 lets
`UnicodeDecodeError` escape); the config of an S3 registry is read with a HEAD and a GET pinned to the
version the HEAD reported, and a version id of `"null"` (objects written while versioning was suspended)
is left out of its URL (quilt3 writes `?versionId=null`).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import botocore.exceptions
import jsonschema
import yaml

from quiltmount.errors import NotFound, QuiltException, StorageError
from quiltmount.packages.manifest import (
    PhysicalKey, PhysicalKeyError, format_physical_key, parse_physical_key, tree_sort_key,
)
from quiltmount.packages.registry import Registry
from quiltmount.storage.s3 import S3Store

__all__ = [
    "CONFIG_KEY", "ConfigurationError", "Workflow", "WorkflowConfig", "WorkflowValidationError", "load_config",
    "revision_entries", "select_workflow",
]

#: Where a registry keeps its workflow configuration (under its prefix).
CONFIG_KEY = ".quilt/workflows/config.yml"
#: quilt3's schema of that file (a verbatim copy of quilt3/workflows/config-1.schema.json).
CONFIG_SCHEMA = "workflow-config-1.schema.json"
#: The newest config version quilt3 8.0.0 understands.
CONFIG_DATA_VERSION = (1, 1, 0)
SUPPORTED_META_SCHEMAS = {"http://json-schema.org/draft-07/schema#": jsonschema.Draft7Validator}

JSONSchemaError = jsonschema.ValidationError | jsonschema.SchemaError


class WorkflowErrorBase(QuiltException):
    """quilt3's `WorkflowErrorBase`; `schema_validation_error` is jsonschema's error, when there is one."""

    schema_validation_error: JSONSchemaError | None = None

    @classmethod
    def from_schema_validation_error(cls, message: str, err: JSONSchemaError) -> WorkflowErrorBase:
        obj = cls(f"{message}: {err.message}.")
        obj.schema_validation_error = err
        return obj


class ConfigurationError(WorkflowErrorBase):
    """The registry's workflow configuration (or a schema it names) cannot be used."""


class WorkflowValidationError(WorkflowErrorBase):
    """The revision does not satisfy the chosen workflow."""


# --------------------------------------------------------------------------------------------------------
# Locations (quilt3's `PhysicalKey`: `file://` paths are resolved with realpath, as quilt3 does)

def _location_from_url(url: str) -> PhysicalKey:
    """`quilt3.util.PhysicalKey.from_url`; PhysicalKeyError for what quilt3 cannot parse."""
    location = parse_physical_key(url)
    if location.scheme == "file":
        return _local(location.path)
    return location


def _local(path: str) -> PhysicalKey:
    """`quilt3.util.PhysicalKey.from_path`: symlinks resolved, a trailing `/` kept."""
    resolved = os.path.realpath(path)
    if path.endswith("/") and not resolved.endswith("/"):
        resolved += "/"
    return PhysicalKey("file", None, resolved)


def _config_location(registry: Registry) -> PhysicalKey:
    """Where quilt3 reads the config of `registry` (without a version)."""
    base = parse_physical_key(registry.url)
    if base.scheme == "s3":
        return PhysicalKey("s3", base.bucket, registry.prefix + CONFIG_KEY)
    return PhysicalKey("file", None, _local(base.path).path.rstrip("/") + "/" + registry.prefix + CONFIG_KEY)


# --------------------------------------------------------------------------------------------------------
# The configuration

@functools.cache
def _config_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(resources.files(__package__).joinpath(CONFIG_SCHEMA).read_text(encoding="utf-8"))
    return jsonschema.Draft7Validator(schema)


def _parse_version(version: str) -> tuple[int, int, int]:
    """`ConfigDataVersion.parse`: '1' -> (1, 0, 0) (the config schema has checked the pattern)."""
    major, minor, patch = (*map(int, version.split(".")), 0, 0)[:3]
    return major, minor, patch


def _read_config(registry: Registry) -> tuple[bytes, PhysicalKey] | None:
    """The config's bytes and the URL they were read from (S3: with the version read), None if absent."""
    key = registry.prefix + CONFIG_KEY
    location = _config_location(registry)
    try:
        info = registry.store.head(key)
        data = registry.store.get_range(info, 0, info.size)
    except NotFound:
        return None
    except StorageError as exc:  # quilt3: anything but NoSuchKey (an ObjectChanged race included)
        raise ConfigurationError(f"Couldn't load workflows config. {exc}.") from None
    if location.scheme == "s3":
        location = PhysicalKey("s3", location.bucket, location.path, info.version_id)
    return data, location


def load_config(registry: Registry) -> WorkflowConfig | None:
    """The registry's workflow configuration, checked as quilt3 checks it; None if it has none."""
    read = _read_config(registry)
    if read is None:
        return None
    data, location = read
    try:
        # TODO (as in quilt3): duplicate keys are not refused.
        config = yaml.safe_load(data.decode())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigurationError("Couldn't parse workflows config as YAML.") from exc
    try:
        _config_validator().validate(config)
    except jsonschema.ValidationError as exc:
        raise ConfigurationError.from_schema_validation_error("Workflows config failed validation", exc) from exc
    version_obj = config["version"]
    version = _parse_version(version_obj if isinstance(version_obj, str) else version_obj["base"])
    if version > CONFIG_DATA_VERSION:
        raise ConfigurationError("Version '%s.%s.%s' is not supported" % version)
    return WorkflowConfig(config, location, registry)


# --------------------------------------------------------------------------------------------------------
# Schemas

def _refuse_ref(obj: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in obj:
        raise QuiltException("Currently we don't support $ref in schema.")
    return obj


_load_schema_json = json.JSONDecoder(object_hook=_refuse_ref).decode


def _s3_get(registry: Registry, location: PhysicalKey) -> tuple[bytes, str | None]:
    """One GET of an S3 object (a version of it if the URL names one), with the credentials and endpoint of
    the registry's store (the default chain for a local registry, as quilt3 would); its bytes and the
    `VersionId` S3 answered, as is (quilt3 records it)."""
    store: Any = registry.store
    while store is not None and not isinstance(store, S3Store):
        store = getattr(store, "inner", None)
    own = S3Store(location.bucket or "") if store is None else None
    client = (own or store).client
    params = {"Bucket": location.bucket, "Key": location.path}
    if location.version_id is not None:
        params["VersionId"] = location.version_id
    try:
        response = client.get_object(**params)
        return response["Body"].read(), response.get("VersionId")
    finally:
        if own is not None:
            own.close()


def _read_schema(registry: Registry, location: PhysicalKey) -> tuple[bytes, PhysicalKey]:
    """`WorkflowConfig.load_schema`: the bytes and the location to record (S3: with the version read)."""
    try:
        if location.scheme == "file":
            with open(location.path, "rb") as file:
                return file.read(), location
        data, version_id = _s3_get(registry, location)
    except (OSError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise ConfigurationError(f"Couldn't load schema at {format_physical_key(location)}.") from exc
    return data, PhysicalKey("s3", location.bucket, location.path, version_id)


def _make_validator(schema_id: str, schema: Any) -> Any:
    """A jsonschema validator of the class the schema's `$schema` names (Draft 7 by default), checked."""
    validator_cls: Any = jsonschema.Draft7Validator
    if isinstance(schema, dict) and "$schema" in schema:
        meta_schema = schema["$schema"]
        if not isinstance(meta_schema, str):
            raise ConfigurationError("$schema must be a string.")
        validator_cls = SUPPORTED_META_SCHEMAS.get(meta_schema)
        if validator_cls is None:
            raise ConfigurationError(f"Unsupported meta-schema: {meta_schema}.")
    try:
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigurationError.from_schema_validation_error(f"Schema {schema_id!r} is not valid", exc) from exc
    return validator_cls(schema)  # no format checker: quilt3 uses none


@dataclass
class WorkflowConfig:
    """A registry's checked workflow configuration (`config`), read from `location`."""

    config: dict[str, Any]
    location: PhysicalKey
    registry: Registry
    # Schemas loaded, by id and by the URL they were asked at: (validator, the location to record).
    _by_id: dict[str, tuple[Any, PhysicalKey]] = field(default_factory=dict, repr=False)
    _by_url: dict[str, tuple[Any, PhysicalKey]] = field(default_factory=dict, repr=False)

    def schema_location(self, schema_id: str) -> PhysicalKey:
        schemas = self.config.get("schemas", {})
        if schema_id not in schemas:
            raise ConfigurationError(f"There is no {schema_id!r} in schemas.")
        url = schemas[schema_id]["url"]
        try:
            location = _location_from_url(url)  # quilt3 knows s3:// and absolute file:// URLs only
        except PhysicalKeyError as exc:
            raise ConfigurationError(f"Couldn't parse URL {url!r}.") from exc
        if location.scheme == "file" and self.location.scheme != "file":
            raise ConfigurationError(f"Local schema {format_physical_key(location)!r} can't be used on the remote "
                                     "registry.")
        return location

    def validator(self, schema_id: str) -> Any:
        """The validator of schema `schema_id`, loaded once per URL."""
        if schema_id in self._by_id:
            return self._by_id[schema_id][0]
        location = self.schema_location(schema_id)
        url = format_physical_key(location)
        if url not in self._by_url:
            data, stored = _read_schema(self.registry, location)
            try:
                schema = _load_schema_json(data.decode())
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                raise ConfigurationError(f"Couldn't parse {url} as JSON.") from exc
            self._by_url[url] = (_make_validator(schema_id, schema), stored)
        self._by_id[schema_id] = self._by_url[url]
        return self._by_id[schema_id][0]

    def workflow(self, workflow: Any) -> Workflow:
        """`get_workflow_validator`: `...` is the default workflow, None none."""
        if workflow is ...:
            workflow = self.config.get("default_workflow")
        workflows = self.config["workflows"]
        if workflow is None:
            if self.config.get("is_workflow_required", True):
                raise QuiltException("Workflow required, but none specified.")
            data: dict[str, Any] = {}
        elif workflow not in workflows:
            raise QuiltException(f"There is no {workflow!r} workflow in config.")
        else:
            data = workflows[workflow]

        pattern = data.get("handle_pattern")
        try:
            handle_pattern = re.compile(pattern) if pattern else None
        except re.error as exc:
            raise ConfigurationError(f"handle_pattern {pattern!r} of workflow {workflow!r} is not a valid "
                                     f"regular expression: {exc}.") from exc
        metadata_schema = data.get("metadata_schema")
        metadata_validator = self.validator(metadata_schema) if metadata_schema else None
        entries_schema = data.get("entries_schema")
        entries_validator = self.validator(entries_schema) if entries_schema else None

        header_value: dict[str, Any] = {"id": workflow, "config": format_physical_key(self.location)}
        if self._by_id:
            header_value["schemas"] = {schema_id: format_physical_key(stored)
                                       for schema_id, (_, stored) in self._by_id.items()}
        return Workflow(header_value, data.get("is_message_required", False), handle_pattern,
                        metadata_validator, entries_validator)


# --------------------------------------------------------------------------------------------------------
# The chosen workflow

@dataclass
class Workflow:
    """A chosen workflow (quilt3's `WorkflowValidator`); `header_value` goes to the header's `workflow`."""

    header_value: dict[str, Any]
    is_message_required: bool = False
    handle_pattern: re.Pattern[str] | None = None
    metadata_validator: Any = None
    entries_validator: Any = None

    @property
    def checks_entries(self) -> bool:
        """Whether `validate_entries` needs the entries (only then are they gathered: it takes memory)."""
        return self.entries_validator is not None

    def validate_message(self, message: str | None) -> None:
        if self.is_message_required and not message:
            raise WorkflowValidationError("Commit message is required by workflow, but none was provided.")

    def validate_name(self, name: str) -> None:
        if self.handle_pattern and not self.handle_pattern.search(name):
            raise WorkflowValidationError("Package name doesn't match required pattern.")

    def validate_metadata(self, meta: Any) -> None:
        """`meta`: the new header's `user_meta`, `{}` when it has none (quilt3's `Package.meta`)."""
        if self.metadata_validator is None:
            return
        try:
            self.metadata_validator.validate(meta)
        except jsonschema.ValidationError as exc:
            raise WorkflowValidationError.from_schema_validation_error("Metadata failed validation", exc) from exc

    def validate_entries(self, entries: list[dict[str, Any]]) -> None:
        """`entries`: `revision_entries` of the new revision."""
        if self.entries_validator is None:
            return
        try:
            self.entries_validator.validate(entries)
        except jsonschema.ValidationError as exc:
            raise WorkflowValidationError.from_schema_validation_error("Package entries failed validation",
                                                                       exc) from exc


def select_workflow(registry: Registry, workflow: Any, name: str, message: str | None) -> Workflow | None:
    """The workflow a commit of `name` to `registry` follows, its message and name checked (the checks that
    need nothing of the revision); None if the registry has no workflows and none was asked for.

    `workflow` as quilt3's: `...` (the default), None (none) or a workflow id.
    """
    if not (workflow is ... or workflow is None or isinstance(workflow, str)):
        raise QuiltException(f"the workflow must be a workflow ID (a string) or None, not {type(workflow).__name__}")
    config = load_config(registry)
    if config is None:
        if workflow is not ...:
            raise QuiltException(f"{workflow!r} workflow is specified, but no workflows config exist.")
        return None
    chosen = config.workflow(workflow)
    chosen.validate_message(message)
    chosen.validate_name(name)
    return chosen


def _user_meta(meta: Any) -> Any:
    """An entry's user metadata as quilt3's `PackageEntry.meta` gives it (`{}` when none)."""
    return meta.get("user_meta", {}) if isinstance(meta, dict) else {}


def revision_entries(kept: Iterable[tuple[bytes, bytes]], new: Iterable[tuple[str, int, Any]],
                     ) -> list[dict[str, Any]]:
    """The entries quilt3 validates against an `entries_schema`: `{"logical_key", "size", "meta"}` (the
    user metadata) of every file of the revision, in tree order.

    `kept`: (tree sort key, manifest line) of the parent's rows that stay, in tree order; `new`: (logical
    key, size, whole `meta` object) of the entries the changes write, in any order.
    """
    pending = sorted(((tree_sort_key(key), key, size, meta) for key, size, meta in new), key=lambda row: row[0])

    def merged() -> Iterator[dict[str, Any]]:
        index = 0
        for sort_key, line in kept:
            while index < len(pending) and pending[index][0] < sort_key:
                _, key, size, meta = pending[index]
                yield {"logical_key": key, "size": size, "meta": _user_meta(meta)}
                index += 1
            record = json.loads(line)
            yield {"logical_key": record["logical_key"], "size": record["size"], "meta": _user_meta(record["meta"])}
        for _, key, size, meta in pending[index:]:
            yield {"logical_key": key, "size": size, "meta": _user_meta(meta)}

    return list(merged())
