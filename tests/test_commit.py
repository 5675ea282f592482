"""Committing a new revision from a parent and changes (the engine under drafts), checked with the real quilt3:
what it browses, the bytes it fetches, the top hash it computes for the same files, its pointers, and the
conflicts of a concurrent push."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_registry import FILES, _new_bucket, _patch_quilt3, _source_dir

from quiltmount.errors import QuiltException
from quiltmount.packages.commit import Changes, NewFile, PackageConflict, commit_revision
from quiltmount.packages.registry import Registry, RegistryError
from quiltmount.storage.local import LocalStore
from quiltmount.storage.s3 import S3Store


@pytest.fixture(scope="module")
def quilt3_module():
    os.environ.setdefault("QUILT_DISABLE_USAGE_METRICS", "true")
    import quilt3

    return quilt3


@pytest.fixture
def q3(quilt3_module, s3_server, monkeypatch: pytest.MonkeyPatch):
    _patch_quilt3(monkeypatch, quilt3_module, s3_server.endpoint_url)
    return quilt3_module


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def _expected_top_hash(q3, files: dict[str, tuple[str, dict]], user_meta, message: str) -> str:
    """quilt3's own top hash for a package of these local files, entry meta and header."""
    pkg = q3.Package()
    for logical_key, (path, meta) in files.items():
        pkg.set(logical_key, path, meta=meta.get("user_meta"))
    if user_meta is not None:
        pkg.set_meta(user_meta)
    pkg._set_commit_message(message)
    pkg._calculate_missing_hashes()  # what build/push do before hashing the package
    return pkg.top_hash


def test_commit_is_what_quilt3_reads_and_would_hash(q3, s3_server, s3, tmp_path: Path) -> None:
    bucket = _new_bucket(s3)
    registry_url = f"s3://{bucket}"
    src = _source_dir(tmp_path / "src")
    q3.Package().set_dir("/", str(src)).set_meta({"author": "Zoë"}).push(
        "demo/pkg", registry=registry_url, message="first", force=True)
    parent = q3.Package.browse("demo/pkg", registry=registry_url).top_hash
    registry = Registry(S3Store(bucket, endpoint_url=s3_server.endpoint_url), registry_url)

    work = tmp_path / "work"
    changed = _write(work / "hello.txt", b"hello again\n")
    added = _write(work / "added.bin", os.urandom(3000))
    changes = Changes(files={"data/hello.txt": NewFile(changed), "new/dir/added.bin": NewFile(added, {"user_meta": {"x": 1}})},
                      deleted={"empty.txt"}, entry_meta={"README.md": {"user_meta": {"title": "Demo"}}})
    done = commit_revision(registry, "demo/pkg", parent, changes, message="edit", clock=lambda: 1_900_000_000)
    assert done.pointer == "1900000000"

    pkg = q3.Package.browse("demo/pkg", registry=registry_url, top_hash=done.top_hash)
    expected = {"README.md": FILES["README.md"], "data/hello.txt": b"hello again\n",
                "data-raw.csv": FILES["data-raw.csv"], "new/dir/added.bin": Path(added).read_bytes()}
    assert sorted(lk for lk, _ in pkg.walk()) == sorted(expected)
    for logical_key, data in expected.items():
        assert pkg[logical_key].get_bytes() == data, logical_key
        assert pkg[logical_key].size == len(data)
    assert pkg["README.md"].meta == {"title": "Demo"} and pkg["new/dir/added.bin"].meta == {"x": 1}
    assert pkg.meta == {"author": "Zoë"} and pkg._meta["message"] == "edit"
    # Unchanged entries keep their rows: the same physical key (and version) as in the parent.
    before = q3.Package.browse("demo/pkg", registry=registry_url, top_hash=parent)
    assert pkg["data-raw.csv"].physical_key == before["data-raw.csv"].physical_key
    assert pkg["data/hello.txt"].physical_key.bucket == bucket
    assert pkg["data/hello.txt"].physical_key.path == "demo/pkg/data/hello.txt"
    assert pkg["data/hello.txt"].physical_key.version_id  # versioned bucket: pinned

    # quilt3 computes the same top hash for a package of the same files, meta and header.
    local = {"README.md": (str(src / "README.md"), {"user_meta": {"title": "Demo"}}),
             "data/hello.txt": (changed, {}), "data-raw.csv": (str(src / "data-raw.csv"), {}),
             "new/dir/added.bin": (added, {"user_meta": {"x": 1}})}
    assert _expected_top_hash(q3, local, {"author": "Zoë"}, "edit") == done.top_hash

    versions = dict(q3.list_package_versions("demo/pkg", registry=registry_url))
    assert versions["latest"] == done.top_hash and versions["1900000000"] == done.top_hash


def test_conflicts_force_dedupe_and_a_new_package(q3, s3_server, s3, tmp_path: Path) -> None:
    bucket = _new_bucket(s3)
    registry_url = f"s3://{bucket}"
    src = _source_dir(tmp_path / "src")
    q3.Package().set_dir("/", str(src)).push("demo/pkg", registry=registry_url, message="first", force=True)
    parent = q3.Package.browse("demo/pkg", registry=registry_url).top_hash
    registry = Registry(S3Store(bucket, endpoint_url=s3_server.endpoint_url), registry_url)
    # Someone pushes with quilt3 between reading the parent and committing.
    q3.Package().set_dir("/", str(src / "data")).push("demo/pkg", registry=registry_url, message="other",
                                                      force=True)
    other = q3.Package.browse("demo/pkg", registry=registry_url).top_hash
    changes = Changes(deleted={"empty.txt"})
    with pytest.raises(PackageConflict, match=f"Package with hash '{other}' already exists at the destination; "
                                              f"expected '{parent}'. Use force=True"):
        commit_revision(registry, "demo/pkg", parent, changes, message="edit")
    assert registry.read_pointer("demo/pkg") == other  # nothing written
    forced = commit_revision(registry, "demo/pkg", parent, changes, message="edit", force=True)
    assert registry.read_pointer("demo/pkg") == forced.top_hash

    # dedupe: the same revision again is not written again.
    again = commit_revision(registry, "demo/pkg", parent, changes, message="edit", force=True, dedupe=True)
    assert again.top_hash == forced.top_hash and again.pointer is None

    # A new package, from nothing.
    file = _write(tmp_path / "one.txt", b"one\n")
    new = commit_revision(registry, "team/new", None, Changes(files={"one.txt": NewFile(file)},
                                                               user_meta={"k": "v"}), message=None)
    pkg = q3.Package.browse("team/new", registry=registry_url)
    assert pkg.top_hash == new.top_hash and pkg["one.txt"].get_bytes() == b"one\n" and pkg.meta == {"k": "v"}
    assert _expected_top_hash(q3, {"one.txt": (file, {})}, {"k": "v"}, None) == new.top_hash
    with pytest.raises(PackageConflict, match="expected None"):  # it exists now
        commit_revision(registry, "team/new", None, Changes(), message=None)


def test_local_registry_and_bad_input(q3, tmp_path: Path, s3_server, s3) -> None:
    root = tmp_path / "registry"
    root.mkdir()
    registry_url = root.as_uri()
    src = _source_dir(tmp_path / "src")
    q3.Package().set_dir("/", str(src)).build("demo/pkg", registry=registry_url, message="first")
    parent = q3.Package.browse("demo/pkg", registry=registry_url).top_hash
    registry = Registry(LocalStore(str(root)), registry_url)
    changed = _write(tmp_path / "w" / "x.csv", b"x\n")
    done = commit_revision(registry, "demo/pkg", parent, Changes(files={"data-raw.csv": NewFile(changed)}),
                           message="local edit")
    pkg = q3.Package.browse("demo/pkg", registry=registry_url)
    assert pkg.top_hash == done.top_hash and pkg["data-raw.csv"].get_bytes() == b"x\n"
    assert pkg["README.md"].get_bytes() == FILES["README.md"]
    assert (root / "demo/pkg/data-raw.csv").read_bytes() == b"x\n"  # the bytes live in the registry

    for bad, needle in ((Changes(deleted={"nope.txt"}), "not in the parent"),
                        (Changes(entry_meta={"nope.txt": {}}), "not in the parent"),
                        (Changes(files={"../up": NewFile(changed)}), "invalid logical key"),
                        (Changes(files={"README.md": NewFile(changed)}, deleted={"README.md"}), "both")):
        with pytest.raises(RegistryError, match=needle):
            commit_revision(registry, "demo/pkg", done.top_hash, bad, message="m")
    with pytest.raises(QuiltException, match="workflows are not configured"):
        commit_revision(registry, "demo/pkg", done.top_hash, Changes(), message="m", workflow="alpha")
    (root / ".quilt/workflows").mkdir(parents=True)
    (root / ".quilt/workflows/config.yml").write_text("version: '1'\nworkflows: {}\n")
    with pytest.raises(RegistryError, match="workflow configuration"):
        commit_revision(registry, "demo/pkg", done.top_hash, Changes(), message="m")
    assert q3.Package.browse("demo/pkg", registry=registry_url).top_hash == done.top_hash  # untouched
