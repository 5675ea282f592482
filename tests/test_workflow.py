"""Commits to registries with workflows (`.quilt/workflows/config.yml`), checked with the real quilt3: the same
workflow chosen, the same checks with the same messages, the same `workflow` header and top hash, and nothing
written when a check fails."""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_registry import FILES, _new_bucket, _patch_quilt3, _source_dir, quilt3_module  # noqa: F401

from quiltmount.errors import QuiltException
from quiltmount.packages.commit import KEEP, Changes, NewFile, commit_revision
from quiltmount.packages.registry import LATEST, Registry
from quiltmount.packages.workflow import ConfigurationError, WorkflowValidationError
from quiltmount.storage.local import LocalStore
from quiltmount.storage.s3 import S3Store

META_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["author"],
    # No format checker, in quilt3 as here: "Zoë" is not an email, and passes.
    "properties": {"author": {"type": "string", "format": "email"}},
}
TITLE_SCHEMA = {"type": "object", "required": ["title"]}
# Exactly {"logical_key", "size", "meta"} per entry, "meta" being the entry's *user* metadata.
ENTRIES_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "additionalProperties": False,
        "required": ["logical_key", "size", "meta"],
        "properties": {
            "logical_key": {"type": "string", "not": {"pattern": r"\.exe$"}},
            "size": {"type": "integer", "maximum": 5000},
            "meta": {"type": "object", "not": {"required": ["user_meta"]}, "properties": {"bad": {"const": False}}},
        },
    },
}


@pytest.fixture
def q3(quilt3_module, s3_server, monkeypatch: pytest.MonkeyPatch):
    import quilt3.backends.base as base

    _patch_quilt3(monkeypatch, quilt3_module, s3_server.endpoint_url)
    clock = itertools.count(1_800_000_000)  # as many revisions as a test wants
    monkeypatch.setattr(base, "time", SimpleNamespace(time=lambda: next(clock)))
    return quilt3_module


def _write(path: Path, data: bytes | str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return str(path)


def _config(*, schemas: dict[str, str], extra: str = "") -> str:
    """A config with catalog-only options quilt3 ignores, and workflows alpha (the default), beta, gamma."""
    lines = [
        "version:", "  base: '1'", "  catalog: '1'",
        "default_workflow: alpha",
        "catalog:", "  package_handle: {files: '<%= username %>/'}",
        "successors:", "  s3://elsewhere: {title: Elsewhere, copy_data: false}",
        "workflows:",
        "  alpha:",
        "    name: Alpha", "    handle_pattern: ^demo/", "    is_message_required: true",
        "    metadata_schema: meta", "    entries_schema: entries",
        "  beta:", "    name: Beta", "    metadata_schema: meta-again",
        "  gamma:", "    name: Gamma", "    metadata_schema: title",
        "schemas:",
        *(f"  {schema_id}: {{url: '{url}'}}" for schema_id, url in schemas.items()),
    ]
    return "\n".join(lines) + "\n" + extra


@dataclass
class Edit:
    """A revision's changes, applied by quilt3 (`_quilt3_commit`) or by us (`changes`)."""

    files: dict[str, tuple[str, Any]] = field(default_factory=dict)  # key -> (local path, user meta or None)
    deleted: set[str] = field(default_factory=set)
    renamed: dict[str, str] = field(default_factory=dict)  # new key -> parent key (a move: old key deleted)
    user_meta: Any = KEEP

    def changes(self) -> Changes:
        files = {key: NewFile(path, {} if meta is None else {"user_meta": meta})
                 for key, (path, meta) in self.files.items()}
        return Changes(files=files, deleted=self.deleted | set(self.renamed.values()), renamed=dict(self.renamed),
                       user_meta=self.user_meta)


def _quilt3_commit(q3, registry_url: str, name: str, parent: str | None, edit: Edit, message: str | None,
                   workflow: Any = ...) -> str:
    """What quilt3 makes of the same revision: browse, change, then `push` (S3) or `build` (local)."""
    pkg = q3.Package() if parent is None else q3.Package.browse(name, registry=registry_url, top_hash=parent)
    for new, old in edit.renamed.items():
        pkg.set(new, pkg[old])
        pkg.delete(old)
    for key in edit.deleted:
        pkg.delete(key)
    for key, (path, meta) in edit.files.items():
        pkg.set(key, path, meta=meta)
    if edit.user_meta is not KEEP:
        pkg.set_meta(edit.user_meta)
    if registry_url.startswith("s3://"):
        return pkg.push(name, registry=registry_url, message=message, workflow=workflow, force=True).top_hash
    return pkg.build(name, registry=registry_url, message=message, workflow=workflow)


def _same_refusal(q3, registry: Registry, registry_url: str, name: str, parent: str | None, edit: Edit,
                  message: str | None, workflow: Any = ..., *, error: type = QuiltException) -> str:
    """Both refuse the revision with the same message (returned); we wrote nothing, quilt3 neither."""
    before = _state(registry)
    with pytest.raises(error) as ours:
        commit_revision(registry, name, parent, edit.changes(), message=message, workflow=workflow, force=True)
    assert _state(registry) == before
    with pytest.raises(q3.util.QuiltException) as theirs:
        _quilt3_commit(q3, registry_url, name, parent, edit, message, workflow)
    assert str(ours.value) == str(theirs.value)
    assert _state(registry) == before
    return str(ours.value)


def _state(registry: Registry) -> Any:
    """Every object of the registry's store (S3: every version), to show that nothing was written."""
    store = registry.store
    if isinstance(store, LocalStore):
        root = Path(store.root)
        return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()}
    listed = store.client.list_object_versions(Bucket=store.bucket)
    return sorted((item["Key"], item["VersionId"]) for item in listed.get("Versions", ()))


def _header_line(registry: Registry, top_hash: str) -> bytes:
    return registry.store.get_object(registry.manifest_key(top_hash)).split(b"\n", 1)[0]


def _compare(q3, registry: Registry, registry_url: str, name: str, parent: str | None, edit: Edit,
             message: str | None, workflow: Any = ..., clock: int = 1_900_000_000) -> dict[str, Any]:
    """Commit `edit` (ours), then quilt3 the same: same top hash and header line; our header."""
    done = commit_revision(registry, name, parent, edit.changes(), message=message, workflow=workflow,
                           clock=lambda: clock, force=True)  # quilt3's revision may be latest already
    ours = _header_line(registry, done.top_hash)
    theirs = _quilt3_commit(q3, registry_url, name, parent, edit, message, workflow)
    assert theirs == done.top_hash
    assert _header_line(registry, theirs) == ours  # quilt3 wrote the manifest again: same header, same order
    return json.loads(ours)


# --------------------------------------------------------------------------------------------------------
# Local registries

def _local_registry(tmp_path: Path) -> tuple[Registry, str, Path, Path]:
    """A registry reached through a symlink (quilt3 records resolved `file://` URLs), with workflows."""
    real = tmp_path / "real-registry"
    schemas = real / ".quilt/workflows"
    schemas.mkdir(parents=True)
    link = tmp_path / "registry"
    link.symlink_to(real)
    for name, schema in (("meta", META_SCHEMA), ("entries", ENTRIES_SCHEMA), ("title", TITLE_SCHEMA)):
        _write(schemas / f"{name}.json", json.dumps(schema))
    linked = (link / ".quilt/workflows").as_uri()
    _write(schemas / "config.yml", _config(schemas={
        "meta": f"{linked}/meta.json", "meta-again": f"{linked}/meta.json", "entries": f"{linked}/entries.json",
        "title": f"{linked}/title.json"}))
    return Registry(LocalStore(str(link)), link.as_uri()), link.as_uri(), real, link


def test_local_registry_commits_as_quilt3_builds(q3, tmp_path: Path) -> None:
    registry, url, real, _ = _local_registry(tmp_path)
    src = _source_dir(tmp_path / "src")
    parent = q3.Package().set_dir("/", str(src)).set_meta({"author": "Zoë"}).build(
        "demo/pkg", registry=url, message="first")  # quilt3's default workflow: alpha
    work = tmp_path / "work"
    edit = Edit(files={"data/hello.txt": (_write(work / "hello.txt", "hello again\n"), {"bad": False}),
                       "new/added.bin": (_write(work / "added.bin", os.urandom(3000)), None)},
                deleted={"empty.txt"}, renamed={"moved/raw.csv": "data-raw.csv"})
    header = _compare(q3, registry, url, "demo/pkg", parent, edit, "edit")
    resolved = (real / ".quilt/workflows").as_uri()
    assert header["workflow"] == {"id": "alpha", "config": f"{resolved}/config.yml",
                                  "schemas": {"meta": f"{resolved}/meta.json", "entries": f"{resolved}/entries.json"}}
    assert list(header) == ["version", "user_meta", "workflow", "message"]

    # A new package; beta's schema has two ids in the config but is loaded once; then explicitly no workflow
    # where none is required... is refused here (is_workflow_required defaults to true): see the refusals.
    header = _compare(q3, registry, url, "team/new", None, Edit(files={"one.txt": (str(src / "README.md"), None)},
                                                               user_meta={"author": "x"}), None, "beta")
    assert header["workflow"] == {"id": "beta", "config": f"{resolved}/config.yml",
                                  "schemas": {"meta-again": f"{resolved}/meta.json"}}
    assert list(header) == ["version", "user_meta", "workflow", "message"]

    # Not required: None is recorded as such; without a default workflow `...` means None too.
    config = real / ".quilt/workflows/config.yml"
    config.write_text(config.read_text().replace("default_workflow: alpha\n", "is_workflow_required: false\n"))
    latest = registry.read_pointer("demo/pkg", LATEST)
    for workflow in (None, ...):
        header = _compare(q3, registry, url, "demo/pkg", latest, Edit(user_meta={"k": 1}), None, workflow)
        assert header["workflow"] == {"id": None, "config": f"{resolved}/config.yml"}

    # Without a config any more: the parent's `workflow` is dropped, as quilt3 does.
    config.unlink()
    header = _compare(q3, registry, url, "demo/pkg", latest, Edit(), "plain")
    assert "workflow" not in header
    assert json.loads(_header_line(registry, latest))["workflow"]["id"] == "alpha"


def test_local_registry_refusals_are_quilt3s(q3, tmp_path: Path) -> None:
    registry, url, _, _ = _local_registry(tmp_path)
    src = _source_dir(tmp_path / "src")
    parent = q3.Package().set_dir("/", str(src)).set_meta({"author": "Zoë"}).build(
        "demo/pkg", registry=url, message="first")
    work = tmp_path / "work"
    small = _write(work / "small.txt", "small\n")
    big = _write(work / "big.bin", os.urandom(6000))
    cases = [
        (Edit(), None, ..., "Commit message is required by workflow, but none was provided."),
        (Edit(user_meta={"author": 5}), "m", ..., "Metadata failed validation: 5 is not of type 'string'."),
        (Edit(user_meta=None), "m", ..., "Metadata failed validation: None is not of type 'object'."),
        (Edit(files={"big.bin": (big, None)}), "m", ...,
         "Package entries failed validation: 6000 is greater than the maximum of 5000."),
        (Edit(files={"small.txt": (small, {"bad": True})}), "m", ...,
         "Package entries failed validation: False was expected."),
        (Edit(renamed={"run.exe": "README.md"}), "m", ...,
         "Package entries failed validation: 'run.exe' should not be valid under {'pattern': '\\\\.exe$'}."),
        (Edit(), "m", "gamma", "Metadata failed validation: 'title' is a required property."),  # the kept meta
        (Edit(), "m", None, "Workflow required, but none specified."),
        (Edit(), "m", "zzz", "There is no 'zzz' workflow in config."),
    ]
    for edit, message, workflow, expected in cases:
        error = QuiltException if expected.startswith(("Workflow required", "There is no")) else WorkflowValidationError
        assert _same_refusal(q3, registry, url, "demo/pkg", parent, edit, message, workflow, error=error) == expected
    assert not (Path(registry.store.root) / "demo/pkg").exists()  # no file was uploaded either
    # The name: checked against handle_pattern with `search`.
    with pytest.raises(WorkflowValidationError, match="^Package name doesn't match required pattern.$"):
        commit_revision(registry, "other/demo", None, Changes(user_meta={"author": "x"}), message="m")
    with pytest.raises(QuiltException, match="must be a workflow ID"):
        commit_revision(registry, "demo/pkg", parent, Changes(), message="m", workflow=1)


@pytest.mark.parametrize(("config", "schema", "expected"), [
    ("workflows: [", None, "Couldn't parse workflows config as YAML."),
    ("version: '1'\nworkflows: {}\n", None, "Workflows config failed validation: {} should be non-empty."),
    ("version: '1.2'\nworkflows: {w: {name: W}}\n", None, "Version '1.2.0' is not supported"),
    ("version: '1'\nworkflows: {w: {name: W, metadata_schema: nope}}\n", None, "There is no 'nope' in schemas."),
    ("url: https://example.com/s.json", None, "Couldn't parse URL 'https://example.com/s.json'."),
    ("url: schemas/s.json", None, "Couldn't parse URL 'schemas/s.json'."),
    ("url: {missing}", None, "Couldn't load schema at {missing}."),
    ("url: {schema}", '{"properties": {"a": {"$ref": "#/x"}}}', "Currently we don't support $ref in schema."),
    ("url: {schema}", '{"$schema": "https://json-schema.org/draft/2020-12/schema"}',
     "Unsupported meta-schema: https://json-schema.org/draft/2020-12/schema."),
    ("url: {schema}", '{"type": 5}', "Schema 's' is not valid: 5 is not valid under any of the given schemas."),
    ("url: {schema}", "{nope", "Couldn't parse {schema} as JSON."),
])
def test_configuration_errors_are_quilt3s(q3, tmp_path: Path, config: str, schema: str | None,
                                         expected: str) -> None:
    root = tmp_path / "registry"
    schema_path = _write(root / "s.json", schema or "{}")
    names = {"schema": Path(schema_path).as_uri(), "missing": (root / "missing.json").as_uri()}
    if config.startswith("url: "):
        config = ("version: '1'\nworkflows: {w: {name: W, metadata_schema: s}}\n"
                  f"schemas: {{s: {{{config}}}}}\n")
    for name, value in names.items():
        config, expected = config.replace(f"{{{name}}}", value), expected.replace(f"{{{name}}}", value)
    _write(root / ".quilt/workflows/config.yml", config)
    registry = Registry(LocalStore(str(root)), root.as_uri())
    message = _same_refusal(q3, registry, root.as_uri(), "demo/pkg", None, Edit(user_meta={}), "m", "w",
                            error=QuiltException)
    assert message == expected


def test_without_a_config(q3, tmp_path: Path) -> None:
    """quilt3's rule: a workflow id, or None, needs a config (same message); `...` is fine without one."""
    root = tmp_path / "registry"
    root.mkdir()
    registry = Registry(LocalStore(str(root)), root.as_uri())
    for workflow in ("alpha", None):
        with pytest.raises(QuiltException) as ours:
            commit_revision(registry, "demo/pkg", None, Changes(), message="m", workflow=workflow)
        with pytest.raises(Exception) as theirs:
            q3.Package().build("demo/pkg", registry=root.as_uri(), message="m", workflow=workflow)
        assert str(ours.value) == str(theirs.value) == f"{workflow!r} workflow is specified, but no workflows " \
                                                        "config exist."
    assert not (root / ".quilt").exists()
    done = commit_revision(registry, "demo/pkg", None, Changes(user_meta={"k": True}), message="m", force=True)
    assert "workflow" not in json.loads(_header_line(registry, done.top_hash))
    # quilt3 hashes the same revision the same way (without a workflow).
    assert _quilt3_commit(q3, root.as_uri(), "demo/pkg", None, Edit(user_meta={"k": True}), "m") == done.top_hash


# --------------------------------------------------------------------------------------------------------
# S3 registries

def test_s3_registry_commits_as_quilt3_pushes(q3, s3_server, s3, tmp_path: Path) -> None:
    bucket, other = _new_bucket(s3), _new_bucket(s3)
    url = f"s3://{bucket}"
    registry = Registry(S3Store(bucket, endpoint_url=s3_server.endpoint_url), url)
    put = lambda where, key, body: s3.put_object(Bucket=where, Key=key, Body=body)["VersionId"]  # noqa: E731
    meta_v1 = put(bucket, "schemas/meta.json", json.dumps(META_SCHEMA))
    put(bucket, "schemas/meta.json", json.dumps(TITLE_SCHEMA))  # the newest version: not the one named
    entries_version = put(other, "entries.json", json.dumps(ENTRIES_SCHEMA))
    title_version = put(bucket, "schemas/title.json", json.dumps(TITLE_SCHEMA))
    config_version = put(bucket, ".quilt/workflows/config.yml", _config(schemas={
        "meta": f"s3://{bucket}/schemas/meta.json?versionId={meta_v1}", "meta-again": f"{url}/schemas/title.json",
        "entries": f"s3://{other}/entries.json", "title": f"{url}/schemas/title.json"}))
    src = _source_dir(tmp_path / "src")
    parent = q3.Package().set_dir("/", str(src)).set_meta({"author": "Zoë"}).push(
        "demo/pkg", registry=url, message="first", force=True).top_hash

    work = tmp_path / "work"
    edit = Edit(files={"data/hello.txt": (_write(work / "hello.txt", "hello again\n"), {"bad": False}),
                       "new/added.bin": (_write(work / "added.bin", os.urandom(3000)), None)},
                deleted={"empty.txt"}, renamed={"moved/raw.csv": "data-raw.csv"}, user_meta={"author": "a b"})
    header = _compare(q3, registry, url, "demo/pkg", parent, edit, "edit")
    assert header["workflow"] == {
        "id": "alpha", "config": f"{url}/.quilt/workflows/config.yml?versionId={config_version}",
        "schemas": {"meta": f"{url}/schemas/meta.json?versionId={meta_v1}",
                    "entries": f"s3://{other}/entries.json?versionId={entries_version}"}}
    latest = registry.read_pointer("demo/pkg", LATEST)
    header = _compare(q3, registry, url, "demo/pkg", latest, Edit(user_meta={"title": "T"}), None, "gamma")
    assert header["workflow"]["schemas"] == {"title": f"{url}/schemas/title.json?versionId={title_version}"}

    # Refusals: nothing lands in the bucket (no object, no version).
    latest = registry.read_pointer("demo/pkg", LATEST)
    big = Edit(files={"big.bin": (_write(work / "big.bin", os.urandom(6000)), None)})
    assert _same_refusal(q3, registry, url, "demo/pkg", parent, big, "m", error=WorkflowValidationError) == (
        "Package entries failed validation: 6000 is greater than the maximum of 5000.")
    assert _same_refusal(q3, registry, url, "demo/pkg", latest, Edit(user_meta={}), "m", "beta",
                         error=WorkflowValidationError) == (
        "Metadata failed validation: 'title' is a required property.")
    local_schema = (tmp_path / "local.json").as_uri()
    _write(tmp_path / "local.json", "{}")
    put(bucket, ".quilt/workflows/config.yml", _config(schemas={"meta": local_schema}))
    assert _same_refusal(q3, registry, url, "demo/pkg", latest, Edit(), "m", "beta",
                         error=ConfigurationError) == "There is no 'meta-again' in schemas."
    assert _same_refusal(q3, registry, url, "demo/pkg", latest, Edit(), "m", error=ConfigurationError) == (
        f"Local schema {local_schema!r} can't be used on the remote registry.")
    put(bucket, ".quilt/workflows/config.yml", _config(schemas={"meta": f"{url}/schemas/missing.json"}))
    assert _same_refusal(q3, registry, url, "demo/pkg", latest, Edit(), "m", error=ConfigurationError) == (
        f"Couldn't load schema at {url}/schemas/missing.json.")


def test_local_registry_with_schemas_in_s3(q3, s3_server, s3, tmp_path: Path) -> None:
    """A local registry's schemas may live in S3 (read with the default credentials and endpoint)."""
    bucket = _new_bucket(s3)
    version = s3.put_object(Bucket=bucket, Key="meta.json", Body=json.dumps(META_SCHEMA))["VersionId"]
    root = tmp_path / "registry"
    _write(root / ".quilt/workflows/config.yml",
           "version: '1'\nworkflows: {w: {name: W, metadata_schema: m}}\n"
           f"default_workflow: w\nschemas: {{m: {{url: 's3://{bucket}/meta.json'}}}}\n")
    registry = Registry(LocalStore(str(root)), root.as_uri())
    header = _compare(q3, registry, root.as_uri(), "demo/pkg", None,
                      Edit(files={"a.txt": (_write(tmp_path / "a.txt", FILES["README.md"]), None)},
                           user_meta={"author": "me"}), None)
    assert header["workflow"]["schemas"] == {"m": f"s3://{bucket}/meta.json?versionId={version}"}
