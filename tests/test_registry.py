"""Registry layout v1 against what the real quilt3 writes and does: on the moto S3 server and on local disk.

Package revisions are pushed/built with quilt3 itself; quilt3's clock is replaced by a counter so revisions
get distinct timestamp pointers without sleeping.  Deletions are compared by doing the same deletion with
quilt3 on an identical copy of the registry and comparing everything under `.quilt/` (for S3 including the
number of versions and delete markers each key got).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from mounthelpers import run_cli
from quiltmount.errors import NotFound
from quiltmount.packages import manifest as mf
from quiltmount.packages.registry import (
    InvalidPointer, Registry, RegistryError, registry_from_url, validate_package_name,
)
from quiltmount.storage.counting import CountingStore
from quiltmount.storage.local import LocalStore
from quiltmount.storage.s3 import S3Store

FIRST = "1f2a21a16e455d342f5a84acf5a2cfb7188417d6f6771f1e4a4f22d6d011fa24"  # spec 6.8 S3 vectors
SECOND = "dee22cb220a9b48c5290f388e41ceb7e1a88a8d8835397d08342fbc3270a5de3"
TIMES = [1795424102, 1795424117, 1795424120, 1795424130, 1795424140, 1795424150]
FILES = {"README.md": b"# Demo\n", "data/hello.txt": b"hello world\n", "data-raw.csv": b"a,b\n1,2\n",
         "empty.txt": b""}


@pytest.fixture(scope="session")
def quilt3_module():
    """quilt3, imported after the isolated environment is in place (it reads XDG dirs at import)."""
    os.environ.setdefault("QUILT_DISABLE_USAGE_METRICS", "true")
    import quilt3

    return quilt3


def _patch_quilt3(mp: pytest.MonkeyPatch, quilt3, endpoint_url: str) -> None:
    """Point quilt3 at the test server and give it a clock that ticks once per revision pointer."""
    import boto3
    import quilt3.backends.base as base
    import quilt3.data_transfer as data_transfer

    mp.setenv("AWS_ENDPOINT_URL", endpoint_url)
    clock = iter(TIMES)
    mp.setattr(base, "time", SimpleNamespace(time=lambda: next(clock)))
    # Speed only: quilt3 builds a new boto3 session (and reloads botocore's models, ~0.2 s) for every
    # operation; one session for the whole test keeps the requests the same.
    session = boto3.Session()
    mp.setattr(data_transfer.S3ClientProvider, "get_boto_session", lambda self: session)


@pytest.fixture
def q3(quilt3_module, s3_server, monkeypatch: pytest.MonkeyPatch):
    """quilt3 talking to the test server."""
    _patch_quilt3(monkeypatch, quilt3_module, s3_server.endpoint_url)
    return quilt3_module


def _new_bucket(s3, *, versioned: bool = True) -> str:
    name = f"reg-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def _source_dir(root: Path) -> Path:
    for key, data in FILES.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _make_revisions(quilt3, src: Path, registry: str, *, push: bool) -> None:
    """demo/pkg: FIRST, SECOND, FIRST again (three timestamps); demo/pkg-c and other/x: one revision each."""
    def save(pkg, name: str, message: str) -> None:
        if push:
            pkg.push(name, registry=registry, message=message, force=True)
        else:
            pkg.build(name, registry=registry, message=message)

    first = quilt3.Package().set_dir("/", str(src)).set_meta({"author": "Zoë", "n": 1})
    save(first, "demo/pkg", "first version")
    save(quilt3.Package().set_dir("/", str(src)), "demo/pkg", "second")
    save(first, "demo/pkg", "first version")
    save(quilt3.Package().set_dir("/", str(src)), "demo/pkg-c", "c")
    save(quilt3.Package().set_dir("/", str(src / "data")), "other/x", "x")


@pytest.fixture(scope="module")
def pushed(quilt3_module, s3_server, s3, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A versioned bucket with quilt3-pushed revisions (treat as read-only; clone it to modify)."""
    bucket = _new_bucket(s3)
    src = _source_dir(tmp_path_factory.mktemp("src"))
    with pytest.MonkeyPatch.context() as mp:
        _patch_quilt3(mp, quilt3_module, s3_server.endpoint_url)
        _make_revisions(quilt3_module, src, f"s3://{bucket}", push=True)
    return bucket


def _clone(s3, source: str, *, versioned: bool = True) -> str:
    target = _new_bucket(s3, versioned=versioned)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=source, Prefix=".quilt/"):
        for obj in page.get("Contents", ()):
            s3.copy_object(Bucket=target, Key=obj["Key"], CopySource={"Bucket": source, "Key": obj["Key"]})
    return target


def _snapshot(s3, bucket: str) -> dict:
    """Current content of every `.quilt/` key, and per key the sequence of versions and delete markers."""
    current = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=".quilt/"):
        for obj in page.get("Contents", ()):
            current[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    history: dict[str, list[str]] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=".quilt/"):
        for version in page.get("Versions", ()):
            history.setdefault(version["Key"], []).append("version")
        for marker in page.get("DeleteMarkers", ()):
            history.setdefault(marker["Key"], []).append("marker")
    return {"current": current, "history": {key: sorted(kinds) for key, kinds in history.items()}}


def _registry(s3_server, bucket: str, **kwargs) -> Registry:
    return Registry(S3Store(bucket, endpoint_url=s3_server.endpoint_url), f"s3://{bucket}", **kwargs)


# ---------------------------------------------------------------------------------------------------------
# S3: listing, resolving, reading

def test_s3_listing_matches_quilt3(q3, s3_server, pushed: str) -> None:
    registry = _registry(s3_server, pushed)
    url = f"s3://{pushed}"
    assert registry.list_packages() == list(q3.list_packages(url)) == ["demo/pkg-c", "demo/pkg", "other/x"]
    versions = registry.list_package_versions("demo/pkg")
    assert versions == list(q3.list_package_versions("demo/pkg", registry=url))
    assert versions == [("1795424102", FIRST), ("1795424117", SECOND), ("1795424120", FIRST), ("latest", FIRST)]
    for name in ("demo/pkg-c", "other/x", "demo/unknown"):
        assert registry.list_package_versions(name) == list(q3.list_package_versions(name, registry=url))
    assert registry.list_package_versions("demo/unknown") == []
    assert registry.read_pointer("demo/pkg") == FIRST
    assert registry.read_pointer("demo/pkg", "1795424117") == SECOND
    with pytest.raises(NotFound, match="no revision '1'"):
        registry.read_pointer("demo/pkg", "1")


def test_s3_manifest_matches_quilt3_browse(q3, s3_server, pushed: str) -> None:
    registry = _registry(s3_server, pushed)
    manifest = registry.load_manifest(registry.resolve_hash("demo/pkg", "1f2a21a"))
    assert manifest.top_hash == FIRST
    assert manifest.header == {"version": "v0", "user_meta": {"author": "Zoë", "n": 1}, "message": "first version"}
    package = q3.Package.browse("demo/pkg", registry=f"s3://{pushed}", top_hash=FIRST)
    theirs = [(key, str(entry.physical_key), entry.size, entry.hash) for key, entry in package.walk()]
    ours = [(e.logical_key, e.physical_key, e.size, e.hash_object()) for e in mf.tree_order(manifest.entries)]
    assert ours == theirs
    for entry in manifest.entries:  # a versioned bucket: every physical key names a version
        pk = entry.parsed_physical_key()
        assert (pk.bucket, pk.key) == (pushed, f"demo/pkg/{entry.logical_key}") and pk.version_id
        assert entry.hash_value == mf.hash_bytes(entry.hash_type, FILES[entry.logical_key])
    raw = S3Store(pushed, endpoint_url=s3_server.endpoint_url).get_object(f".quilt/packages/{FIRST}")
    assert mf.write_manifest(manifest) == raw


def test_hash_prefix_resolution_matches_quilt3(q3, s3_server, s3, pushed: str) -> None:
    bucket = _clone(s3, pushed, versioned=False)
    for suffix in ("1", "2"):
        s3.put_object(Bucket=bucket, Key=f".quilt/packages/abcdef{'0' * 57}{suffix}", Body=b"{}")
    registry = _registry(s3_server, bucket)
    url = f"s3://{bucket}"
    assert registry.resolve_hash("demo/pkg", "dee22c") == SECOND
    assert registry.resolve_hash(None, FIRST) == FIRST
    assert registry.resolve_hash("other/x", "1f2a21a1") == FIRST  # v1 prefixes are registry-wide
    assert registry.shorten_hash(FIRST) == "1f2a21a"
    for prefix, message in [("abcde", "Invalid hash: 'abcde'"), ("f" * 65, f"Invalid hash: '{'f' * 65}'"),
                            ("ffffff", "Found zero matches for 'ffffff'"),
                            ("abcdef", "Found multiple matches: 'abcdef'"),
                            ("ABCDEF0", "Found zero matches for 'ABCDEF0'")]:
        with pytest.raises(q3.util.QuiltException) as theirs:
            q3.Package.resolve_hash("demo/pkg", url, prefix)
        assert theirs.value.message == message
        with pytest.raises(RegistryError) as ours:
            registry.resolve_hash("demo/pkg", prefix)
        assert str(ours.value) == message
    # A full-length "hash" must be hex (quilt3 would use it as a key unchecked).
    with pytest.raises(RegistryError, match="Invalid hash"):
        registry.resolve_hash("demo/pkg", "../../" + "a" * 58)


# ---------------------------------------------------------------------------------------------------------
# S3: deletion, compared with quilt3 doing the same on a copy

@pytest.mark.parametrize("name, top_hash, expected", [
    ("demo/pkg", "1f2a21a", [("1795424117", SECOND), ("latest", SECOND)]),  # spec 5.5's verified example
    ("demo/pkg", SECOND, [("1795424102", FIRST), ("1795424120", FIRST), ("latest", FIRST)]),
    ("demo/pkg", None, []),
    ("other/x", "latest-of-other", []),
])
@pytest.mark.parametrize("versioned", [True, False], ids=["versioned", "unversioned"])
def test_s3_delete_matches_quilt3(q3, s3_server, s3, pushed: str, name: str, top_hash: str | None,
                                  expected: list, versioned: bool) -> None:
    ours_bucket, theirs_bucket = _clone(s3, pushed, versioned=versioned), _clone(s3, pushed, versioned=versioned)
    registry = _registry(s3_server, ours_bucket)
    if top_hash == "latest-of-other":
        top_hash = registry.read_pointer(name)
    registry.delete_package(name, top_hash=top_hash)
    q3.delete_package(name, registry=f"s3://{theirs_bucket}", top_hash=top_hash)
    assert _snapshot(s3, ours_bucket) == _snapshot(s3, theirs_bucket)
    assert registry.list_package_versions(name) == expected
    assert (name in registry.list_packages()) == bool(expected)
    manifests = {k for k in _snapshot(s3, ours_bucket)["current"] if k.startswith(".quilt/packages/")}
    assert len(manifests) == 4  # manifests are never deleted


def test_s3_delete_errors_match_quilt3(q3, s3_server, s3, pushed: str) -> None:
    ours_bucket, theirs_bucket = _clone(s3, pushed), _clone(s3, pushed)
    registry = _registry(s3_server, ours_bucket)
    before = _snapshot(s3, ours_bucket)
    # An unknown package without a hash: a silent no-op on S3.
    assert registry.delete_package("demo/unknown") == []
    q3.delete_package("demo/unknown", registry=f"s3://{theirs_bucket}")
    # A hash that exists in the registry but not in this package.
    other_hash = registry.read_pointer("demo/pkg-c")
    with pytest.raises(q3.util.QuiltException) as theirs:
        q3.delete_package("demo/pkg", registry=f"s3://{theirs_bucket}", top_hash=other_hash)
    with pytest.raises(RegistryError) as ours:
        registry.delete_package("demo/pkg", top_hash=other_hash)
    assert str(ours.value) == theirs.value.message == "No such package version exists in the given directory."
    with pytest.raises(RegistryError, match="Invalid package name: demo/pkg/x."):
        registry.delete_package("demo/pkg/x")
    assert _snapshot(s3, ours_bucket) == _snapshot(s3, theirs_bucket) == before


# ---------------------------------------------------------------------------------------------------------
# S3: pointers and manifests

def test_pointer_content_validation(q3, s3_server, s3, pushed: str) -> None:
    bucket = _clone(s3, pushed)
    registry = _registry(s3_server, bucket)
    key = ".quilt/named_packages/demo/pkg/{}"
    s3.put_object(Bucket=bucket, Key=key.format("1795424117"), Body=b"not a hash")
    s3.put_object(Bucket=bucket, Key=key.format("latest"), Body=FIRST.encode() + b"\n")  # tolerated
    s3.put_object(Bucket=bucket, Key=key.format("v1.0"), Body=b"tag")  # not a pointer name: skipped
    with pytest.raises(InvalidPointer, match="pointer '1795424117' of package demo/pkg .* b'not a hash'"):
        registry.list_package_versions("demo/pkg")
    with pytest.raises(InvalidPointer):
        registry.read_pointer("demo/pkg", "1795424117")
    assert registry.read_pointer("demo/pkg", "latest") == FIRST
    s3.put_object(Bucket=bucket, Key=key.format("1795424117"), Body=FIRST.upper().encode())
    with pytest.raises(InvalidPointer):
        registry.read_pointer("demo/pkg", "1795424117")
    s3.put_object(Bucket=bucket, Key=key.format("1795424117"), Body=b"\xff" * 64)
    with pytest.raises(InvalidPointer):
        registry.read_pointer("demo/pkg", "1795424117")
    # Only that package is affected.
    assert registry.list_packages() == ["demo/pkg-c", "demo/pkg", "other/x"]
    assert len(registry.list_package_versions("other/x")) == 2
    # Deleting by hash still works around the bad pointer, as quilt3's does (it never matches).
    assert registry.delete_package("demo/pkg", FIRST) == ["1795424102", "1795424120", "latest"]
    # The new `latest` copies the greatest remaining name as a string, even a non-timestamp one (as quilt3).
    assert s3.get_object(Bucket=bucket, Key=key.format("latest"))["Body"].read() == b"tag"


def test_pointers_of_any_name_are_listed_and_read_as_quilt3(q3, s3_server, s3, pushed: str,
                                                            tmp_path: Path) -> None:
    """A pointer is any file in the package's directory: quilt3 lists `mytag` as it lists timestamps, so
    quiltmount lists, reads and deletes it too; it writes only timestamps and `latest`, as quilt3 does."""
    bucket = _clone(s3, pushed)
    registry = _registry(s3_server, bucket)
    for tag, top_hash in (("mytag", FIRST), ("v1.0", SECOND), ("Zoë's", SECOND)):
        s3.put_object(Bucket=bucket, Key=f".quilt/named_packages/demo/pkg/{tag}", Body=top_hash.encode())
    versions = registry.list_package_versions("demo/pkg")
    assert versions == list(q3.list_package_versions("demo/pkg", registry=f"s3://{bucket}"))
    assert ("mytag", FIRST) in versions and ("Zoë's", SECOND) in versions
    assert registry.read_pointer("demo/pkg", "v1.0") == SECOND
    registry.delete_pointer("demo/pkg", "v1.0")
    assert ("v1.0", SECOND) not in registry.list_package_versions("demo/pkg")
    with pytest.raises(RegistryError, match="Invalid pointer name"):
        registry.set_pointer("demo/pkg", "mytag", FIRST)
    for bad in ("..", "a/b", "", "x\0"):
        with pytest.raises(RegistryError, match="Invalid pointer name"):
            registry.read_pointer("demo/pkg", bad)
    local = tmp_path / "local"
    _make_revisions(q3, _source_dir(tmp_path / "src"), local.as_uri(), push=False)
    (local / ".quilt/named_packages/demo/pkg/mytag").write_text(FIRST)
    ours = registry_from_url(local.as_uri()).list_package_versions("demo/pkg")
    assert ours == sorted(q3.list_package_versions("demo/pkg", registry=local.as_uri()))
    assert ("mytag", FIRST) in ours


def test_set_and_delete_pointer(q3, s3_server, s3, pushed: str) -> None:
    bucket = _clone(s3, pushed)
    registry = _registry(s3_server, bucket)
    registry.set_pointer("demo/pkg", "latest", SECOND)
    raw = s3.get_object(Bucket=bucket, Key=".quilt/named_packages/demo/pkg/latest")["Body"].read()
    assert raw == SECOND.encode()  # 64 bytes, no newline: quilt3's browse reads it verbatim
    assert q3.Package.browse("demo/pkg", registry=f"s3://{bucket}").top_hash == SECOND
    registry.set_pointer("new/pkg", "1800000000", FIRST)
    assert "new/pkg" in list(q3.list_packages(f"s3://{bucket}"))
    registry.delete_pointer("new/pkg", "1800000000")
    assert "new/pkg" not in registry.list_packages()
    for pointer in ("../x", "v1", "١٢٣", "latest\n", ""):
        with pytest.raises(RegistryError, match="Invalid pointer name"):
            registry.set_pointer("demo/pkg", pointer, FIRST)
    for bad_hash in (FIRST[:-1], FIRST.upper(), FIRST + "\n", "g" * 64):
        with pytest.raises(RegistryError, match="Invalid hash"):
            registry.set_pointer("demo/pkg", "latest", bad_hash)


def test_missing_and_mismatched_manifests(s3_server, s3, pushed: str) -> None:
    bucket = _clone(s3, pushed)
    registry = _registry(s3_server, bucket)
    with pytest.raises(NotFound, match=f"manifest {'0' * 64} not found in s3://{bucket}"):
        registry.load_manifest("0" * 64)
    # A manifest stored under a name that is not its top hash.
    body = s3.get_object(Bucket=bucket, Key=f".quilt/packages/{FIRST}")["Body"].read()
    s3.put_object(Bucket=bucket, Key=f".quilt/packages/{'1' * 64}", Body=body)
    with pytest.raises(mf.ManifestError, match=f"content hashes to {FIRST}, not to its name {'1' * 64}"):
        registry.load_manifest("1" * 64)
    s3.put_object(Bucket=bucket, Key=f".quilt/packages/{'2' * 64}", Body=b"garbage\n")
    with pytest.raises(mf.ManifestError, match="line 1 is not valid JSON"):
        registry.load_manifest("2" * 64)
    with pytest.raises(RegistryError, match="Invalid hash"):
        registry.load_manifest("1f2a21a")


# ---------------------------------------------------------------------------------------------------------
# Local registries (Package.build to file://)

@pytest.fixture
def local_registry(q3, tmp_path: Path) -> Path:
    root = tmp_path / "registry"
    _make_revisions(q3, _source_dir(tmp_path / "src"), root.as_uri(), push=False)
    return root


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every file (with content) and directory (None) under root."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_local_listing_matches_quilt3(q3, local_registry: Path) -> None:
    registry = registry_from_url(str(local_registry))
    assert registry.url == local_registry.as_uri() and registry.is_local
    url = local_registry.as_uri()
    assert registry.list_packages() == sorted(q3.list_packages(url)) == ["demo/pkg", "demo/pkg-c", "other/x"]
    for name in ("demo/pkg", "demo/pkg-c", "other/x", "demo/unknown"):
        assert registry.list_package_versions(name) == sorted(q3.list_package_versions(name, registry=url))
    # Local builds keep file:// physical keys; the manifest is the same package as on S3.
    manifest = registry.load_manifest(registry.read_pointer("demo/pkg"))
    assert manifest.top_hash == FIRST
    assert all(e.parsed_physical_key().scheme == "file" for e in manifest.entries)


@pytest.mark.parametrize("name, top_hash", [
    ("demo/pkg", "1f2a21a"), ("demo/pkg", SECOND), ("demo/pkg", None), ("demo/pkg-c", None),
    ("other/x", "only-revision"), ("demo/pkg-c", "only-revision"),
])
def test_local_delete_matches_quilt3(q3, local_registry: Path, tmp_path: Path, name: str,
                                     top_hash: str | None) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    shutil.copytree(local_registry, ours)
    shutil.copytree(local_registry, theirs)
    registry = registry_from_url(ours.as_uri())
    if top_hash == "only-revision":
        top_hash = registry.read_pointer(name)
    registry.delete_package(name, top_hash=top_hash)
    q3.delete_package(name, registry=theirs.as_uri(), top_hash=top_hash)
    assert _tree(ours) == _tree(theirs)
    if name == "other/x" and top_hash:
        assert not (ours / ".quilt/named_packages/other").exists()  # emptied namespace directory removed


def test_local_delete_unknown_package(q3, local_registry: Path) -> None:
    registry = Registry(CountingStore(LocalStore(str(local_registry))), local_registry.as_uri())
    with pytest.raises(FileNotFoundError):
        q3.delete_package("demo/unknown", registry=local_registry.as_uri())
    with pytest.raises(NotFound, match="package demo/unknown not found"):
        registry.delete_package("demo/unknown")
    with pytest.raises(RegistryError, match="No such package version"):
        registry.delete_package("other/x", SECOND)
    # Through a wrapper store the emptied directories are still removed.
    registry.delete_package("other/x")
    assert not (local_registry / ".quilt/named_packages/other").exists()
    assert registry.list_packages() == ["demo/pkg", "demo/pkg-c"]


def test_package_functions_raise_quilt_exception_where_quilt3_does(q3, local_registry: Path) -> None:
    import quiltmount

    url = local_registry.as_uri()
    for call in (lambda module: list(module.list_package_versions("bad-name", url)),
                 lambda module: module.delete_package("bad-name", url),
                 lambda module: module.delete_package("demo/pkg", url, top_hash="abc"),
                 lambda module: module.delete_package("other/x", url, top_hash=SECOND)):
        with pytest.raises(q3.util.QuiltException) as theirs:
            call(q3)
        with pytest.raises(quiltmount.QuiltException) as ours:
            call(quiltmount)
        assert str(ours.value) == ours.value.message == str(theirs.value)


def test_list_packages_lists_as_consumed_and_prints_nothing_for_none(q3, local_registry: Path,
                                                                    tmp_path: Path) -> None:
    import quiltmount

    url = local_registry.as_uri()
    ours, theirs = quiltmount.list_packages(url), q3.list_packages(url)
    assert isinstance(ours, types.GeneratorType) and isinstance(theirs, types.GeneratorType)
    assert list(ours) == sorted(theirs)
    (tmp_path / "empty").mkdir()
    ours_cli = run_cli("packages", "list", str(tmp_path / "empty"))
    theirs_cli = subprocess.run([os.path.join(os.path.dirname(sys.executable), "quilt3"), "list-packages",
                                 str(tmp_path / "empty")], capture_output=True, text=True)
    assert (ours_cli.returncode, ours_cli.stdout) == (theirs_cli.returncode, theirs_cli.stdout) == (0, ""), \
        ours_cli.stderr


def test_local_pointer_roundtrip(q3, local_registry: Path) -> None:
    registry = registry_from_url(local_registry.as_uri())
    registry.set_pointer("new/pkg", "latest", SECOND)
    assert (local_registry / ".quilt/named_packages/new/pkg/latest").read_bytes() == SECOND.encode()
    assert q3.Package.browse("new/pkg", registry=local_registry.as_uri()).top_hash == SECOND
    registry.delete_pointer("new/pkg", "latest")
    assert not (local_registry / ".quilt/named_packages/new").exists()


# ---------------------------------------------------------------------------------------------------------
# Names and URLs

@pytest.mark.parametrize("name", ["a", "a/b/c", "a/b\n", "../x", "a/b c", "/a", "a/", "a/.", ""])
def test_invalid_package_names(q3, name: str) -> None:
    with pytest.raises(RegistryError) as ours:
        validate_package_name(name)
    assert str(ours.value) == f"Invalid package name: {name}."
    if name != "a/b\n":  # quilt3's re.match(...$) lets a trailing newline through
        with pytest.raises(q3.util.QuiltException):
            q3.util.validate_package_name(name)


def test_unicode_package_names_are_valid() -> None:
    validate_package_name("équipe/données-2")


def test_registry_from_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []

    def factory(scheme: str, location: str):
        calls.append((scheme, location))
        return LocalStore(str(tmp_path))

    assert registry_from_url("s3://bkt", store_factory=factory).url == "s3://bkt"
    prefixed = registry_from_url("s3://bkt/some/prefix/", store_factory=factory)
    assert (prefixed.url, prefixed.prefix, prefixed.pointer_key("a/b", "latest")) == \
        ("s3://bkt/some/prefix", "some/prefix/", "some/prefix/.quilt/named_packages/a/b/latest")
    assert prefixed.manifest_url(FIRST) == f"s3://bkt/some/prefix/.quilt/packages/{FIRST}"
    monkeypatch.setenv("HOME", str(tmp_path))
    home = registry_from_url("~/reg dir", store_factory=factory)
    assert home.url == (tmp_path.resolve() / "reg dir").as_uri() and home.is_local
    assert registry_from_url((tmp_path / "x").as_uri(), store_factory=factory).url == (tmp_path / "x").as_uri()
    assert calls == [("s3", "bkt"), ("s3", "bkt"), ("file", str(tmp_path.resolve() / "reg dir")),
                     ("file", str(tmp_path / "x"))]
    for bad in ("s3://bkt?versionId=1", "http://x/y", "s3://"):
        with pytest.raises(RegistryError, match="Invalid registry URL"):
            registry_from_url(bad, store_factory=factory)


def test_listing_skips_stray_objects(q3, s3_server, s3) -> None:
    """quilt3 lists '' and 'a/b/c' for these (and 'a/b' twice); they are not package names."""
    bucket = _new_bucket(s3, versioned=False)
    for key in ["stray", "a/b/1800000000", "a/b/c/d", "a/b/latest", "a/b-c/latest", "ns/x y/latest"]:
        s3.put_object(Bucket=bucket, Key=f".quilt/named_packages/{key}", Body=FIRST.encode())
    assert list(q3.list_packages(f"s3://{bucket}")) == ["a/b-c", "a/b", "a/b/c", "a/b", "ns/x y", ""]
    registry = _registry(s3_server, bucket)
    assert registry.list_packages() == ["a/b-c", "a/b"]
    assert registry.list_package_versions("a/b") == [("1800000000", FIRST), ("latest", FIRST)]
