"""Committing a new revision from a parent and changes (the engine under drafts), checked with the real quilt3:
what it browses, the bytes it fetches, the top hash it computes for the same files, its pointers, and the
conflicts of a concurrent push."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import logging
import os
import random
import sqlite3
from pathlib import Path

import pytest
from test_registry import FILES, _new_bucket, _patch_quilt3, _source_dir

from quiltmount.errors import QuiltException
from quiltmount.packages import index as ix
from quiltmount.packages.commit import (
    Changes, CommitProgress, NewFile, PackageConflict, _chunked_hash_of_checksum, commit_revision,
)
from quiltmount.packages.manifest import (
    CHECKSUM_CHUNK_SIZE, Entry, ManifestError, compute_top_hash, encode_record, entry_record, hash_bytes,
    header_record,
)
from quiltmount.packages.registry import LATEST, Registry, RegistryError
from quiltmount.storage.counting import CountingStore
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
    assert done.pointer == "1900000000" and done.entries == 4 and done.reused == 0

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
                        (Changes(renamed={"x.txt": "nope.txt"}), "'nope.txt' is not in the parent"),
                        (Changes(files={"../up": NewFile(changed)}), "invalid logical key"),
                        (Changes(renamed={"a//b": "README.md"}), "invalid logical key"),
                        (Changes(files={"README.md": NewFile(changed)}, deleted={"README.md"}), "both"),
                        (Changes(renamed={"x.txt": "README.md"}, deleted={"x.txt"}), "both deleted and written"),
                        (Changes(renamed={"x.txt": "README.md"}, files={"x.txt": NewFile(changed)}),
                         "both a new file and a renamed entry"),
                        (Changes(entry_meta={"README.md": None}), "must be an object"),
                        (Changes(files={"data": NewFile(changed)}), "'data' would be both a file and a directory"),
                        (Changes(renamed={"README.md/x": "empty.txt"}), "'README.md' would be both a file")):
        with pytest.raises(RegistryError, match=needle):
            commit_revision(registry, "demo/pkg", done.top_hash, bad, message="m")
    assert not (root / "demo/pkg/data").exists()  # refused before any upload
    with pytest.raises(QuiltException, match="'alpha' workflow is specified, but no workflows config exist"):
        commit_revision(registry, "demo/pkg", done.top_hash, Changes(), message="m", workflow="alpha")
    (root / ".quilt/workflows").mkdir(parents=True)
    (root / ".quilt/workflows/config.yml").write_text("version: '1'\nworkflows: {}\n")
    with pytest.raises(QuiltException, match="Workflows config failed validation: {} should be non-empty"):
        commit_revision(registry, "demo/pkg", done.top_hash, Changes(), message="m")
    assert q3.Package.browse("demo/pkg", registry=registry_url).top_hash == done.top_hash  # untouched


def test_progress_reports(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    root.mkdir()
    registry = Registry(LocalStore(str(root)), root.as_uri())
    sizes = {"a.bin": 3000, "b/c.bin": 10, "d.bin": 0}
    files = {key: NewFile(_write(tmp_path / "src" / key, os.urandom(size))) for key, size in sizes.items()}
    reports: list[CommitProgress] = []
    commit_revision(registry, "demo/progress", None, Changes(files=files), message="m", progress=reports.append)
    assert [report.phase for report in reports] == ["upload"] * 4 + ["publish"]
    assert all(report.files_total == 3 and report.bytes_total == sum(sizes.values()) for report in reports)
    assert [report.files_done for report in reports] == [0, 1, 2, 3, 3]
    assert reports[-1].bytes_done == sum(sizes.values())
    assert sorted(b.bytes_done - a.bytes_done for a, b in zip(reports[:4], reports[1:4])) == sorted(sizes.values())


@pytest.mark.parametrize("where", ["local", "s3"])
def test_new_files_hash_as_quilt3_in_one_read(where: str, tmp_path: Path, s3_server, s3) -> None:
    """Sent to S3, a file's hash comes from the SHA-256 checksums of its upload (of the parts, when it has
    several); to a local registry it is hashed after the copy.  Both must be quilt3's `sha2-256-chunked`."""
    if where == "s3":
        bucket = _new_bucket(s3)
        registry = Registry(S3Store(bucket, endpoint_url=s3_server.endpoint_url), f"s3://{bucket}")
    else:
        root = tmp_path / "registry"
        root.mkdir()
        registry = Registry(LocalStore(str(root)), root.as_uri())
    rng = random.Random(3)
    files = {"big.bin": rng.randbytes(2 * CHECKSUM_CHUNK_SIZE + 7), "chunk.bin": rng.randbytes(CHECKSUM_CHUNK_SIZE),
             "small.bin": rng.randbytes(100), "empty.bin": b""}
    changes = Changes(files={key: NewFile(_write(tmp_path / key, data)) for key, data in files.items()})
    done = commit_revision(registry, "demo/big", None, changes, message="m")
    entries = {entry.logical_key: entry for entry in registry.load_manifest(done.top_hash).entries}
    assert {key: (entry.hash_value, entry.size) for key, entry in entries.items()} == {
        key: (hash_bytes("sha2-256-chunked", data), len(data)) for key, data in files.items()}
    for key, data in files.items():
        assert registry.store.get_object(f"demo/big/{key}") == data


def _never(*args, **kwargs):
    raise AssertionError("the parent must stream by, not be loaded whole")


def _key(i: int) -> str:
    return f"dir_{i % 7}/sub_{i % 3}/file_{i:05d}.bin"


def _big_parent(q3, bucket: str, registry_url: str, count: int) -> str:
    """A parent of `count` entries and a few more (whose objects need not exist: nothing reads them), with
    directory metadata and keys whose order is a trap, built (and so written) by quilt3; its top hash."""
    from quilt3.packages import PackageEntry
    from quilt3.util import PhysicalKey as Quilt3Key

    def entry(key: str, i: int, meta: dict | None = None) -> PackageEntry:
        digest = base64.b64encode(hashlib.sha256(key.encode()).digest()).decode()
        return PackageEntry(Quilt3Key(bucket, f"src/{key}", f"v{i}"), i * 10,
                            {"type": "sha2-256-chunked", "value": digest}, meta)

    pkg = q3.Package()
    for i in range(count):
        pkg.set(_key(i), entry(_key(i), i, {"user_meta": {"i": i}} if i % 5 == 0 else None))
    for i, key in enumerate(["data/hello.txt", "data-raw.csv", "données/été.csv", "gone/a.txt", "gone/b.txt",
                             "a b/c#d?.txt"]):
        pkg.set(key, entry(key, i))
    pkg["dir_1"].set_meta({"kind": "one"})
    pkg["dir_2/sub_1"].set_meta({"nested": "Zoë"})
    pkg["gone"].set_meta({"bye": 1})
    return pkg.set_meta({"author": "Zoë"}).build("demo/big", registry=registry_url, message="many")


def _lines(data: bytes) -> dict[str, bytes]:
    """A manifest's lines after the header, by logical key."""
    return {json.loads(line)["logical_key"]: line for line in data.splitlines()[1:]}


def test_a_large_parent_streams_by_and_quilt3_agrees(q3, s3_server, s3, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = _new_bucket(s3)
    registry_url = f"s3://{bucket}"
    parent = _big_parent(q3, bucket, registry_url, 3000)
    registry = Registry(S3Store(bucket, endpoint_url=s3_server.endpoint_url), registry_url)
    monkeypatch.setattr(Registry, "load_manifest", _never)

    work = tmp_path / "work"
    replaced = _write(work / "replaced.bin", b"r" * 2000)
    added = {"data/zz.txt": _write(work / "zz.txt", b"between data/hello.txt and data-raw.csv\n"),
             "dir_0/aaa.bin": _write(work / "aaa.bin", os.urandom(1500)),
             "new/deep/x.bin": _write(work / "x.bin", b"x")}
    deleted = {"gone/a.txt", "gone/b.txt", _key(20), *(_key(i) for i in range(100, 120))}
    changes = Changes(files={_key(5): NewFile(replaced),  # its meta stays
                             _key(7): NewFile(replaced, {"user_meta": {"new": True}}),
                             **{key: NewFile(path) for key, path in added.items()}},
                      deleted=deleted,
                      renamed={"moved/été.bin": _key(20), "copy.bin": _key(21)},  # a move, a copy
                      entry_meta={_key(30): {"user_meta": {"edited": 1}}, "copy.bin": {"user_meta": {"copy": 1}}},
                      user_meta={"author": "Zoë", "v": 2}, deleted_dirs={"gone"})
    done = commit_revision(registry, "demo/big", parent, changes, message="edit many", temp_dir=str(tmp_path))
    assert done.entries == 3006 - len(deleted) + len(added) + 2
    assert not list((tmp_path).glob("quiltmount-commit-*"))  # the work files are gone

    # quilt3 reads it, agrees on its top hash, and writes exactly these bytes for it.
    ours = s3.get_object(Bucket=bucket, Key=f".quilt/packages/{done.top_hash}")["Body"].read()
    pkg = q3.Package.browse("demo/big", registry=registry_url, top_hash=done.top_hash)
    assert pkg.top_hash == done.top_hash and len(list(pkg.walk())) == done.entries
    dumped = io.BytesIO()
    pkg.dump(dumped)
    assert dumped.getvalue() == ours
    assert pkg[_key(5)].meta == {"i": 5} and pkg[_key(7)].meta == {"new": True}
    assert pkg["copy.bin"].meta == {"copy": 1} and pkg[_key(21)].meta == {}

    # quilt3 computes the same top hash for the same changes made to the parent it browses.
    from quilt3.packages import PackageEntry

    same = q3.Package.browse("demo/big", registry=registry_url, top_hash=parent)
    same.set(_key(5), replaced, meta={"i": 5})
    same.set(_key(7), replaced, meta={"new": True})
    for key, path in added.items():
        same.set(key, path)
    source = same[_key(21)]
    same.set("moved/été.bin", same[_key(20)])
    same.set("copy.bin", PackageEntry(source.physical_key, source.size, source.hash, {"user_meta": {"copy": 1}}))
    for key in deleted:
        same.delete(key)
    same.delete("gone")
    same[_key(30)].set_meta({"edited": 1})
    same.set_meta({"author": "Zoë", "v": 2})
    same._set_commit_message("edit many")
    same._calculate_missing_hashes()
    assert same.top_hash == done.top_hash

    # The rows that stay are the parent's bytes; renamed rows keep their physical keys; directory metadata
    # stays but for the directory deleted as such.
    before, after = _lines(s3.get_object(Bucket=bucket, Key=f".quilt/packages/{parent}")["Body"].read()), _lines(ours)
    unchanged = before.keys() & after.keys() - changes.files.keys() - changes.entry_meta.keys()
    assert len(unchanged) > 2900 and all(before[key] == after[key] for key in unchanged)
    for new, old in changes.renamed.items():
        assert json.loads(after[new])["physical_keys"] == json.loads(before[old])["physical_keys"]
    assert {"dir_1/", "dir_2/sub_1/"} <= after.keys() and "gone/" not in after


def test_renamed_entries_are_quilt3s_set_and_delete(q3, tmp_path: Path) -> None:
    root = tmp_path / "registry"
    root.mkdir()
    registry_url = root.as_uri()
    src = _source_dir(tmp_path / "src")
    base = q3.Package().set_dir("/", str(src)).set("data/hello.txt", str(src / "data/hello.txt"), meta={"lang": "en"})
    parent = base.build("demo/pkg", registry=registry_url, message="first")
    registry = Registry(LocalStore(str(root)), registry_url)
    changes = Changes(renamed={"docs/README.md": "README.md",  # a move: the old key is deleted too
                               "data-raw.csv": "empty.txt", "empty.txt": "data-raw.csv",  # a swap
                               "hello-copy.txt": "data/hello.txt"},  # a copy, with a meta of its own
                      deleted={"README.md"}, entry_meta={"hello-copy.txt": {"user_meta": {"copy": True}}})
    done = commit_revision(registry, "demo/pkg", parent, changes, message="renames")

    before = q3.Package.browse("demo/pkg", registry=registry_url, top_hash=parent)
    pkg = q3.Package.browse("demo/pkg", registry=registry_url, top_hash=done.top_hash)
    assert pkg.top_hash == done.top_hash
    assert sorted(lk for lk, _ in pkg.walk()) == ["data-raw.csv", "data/hello.txt", "docs/README.md", "empty.txt",
                                                  "hello-copy.txt"]
    for new, old in changes.renamed.items():
        assert (pkg[new].physical_key, pkg[new].size, pkg[new].hash) == \
            (before[old].physical_key, before[old].size, before[old].hash), new
    assert pkg["hello-copy.txt"].meta == {"copy": True} and pkg["data/hello.txt"].meta == {"lang": "en"}

    from quilt3.packages import PackageEntry

    same = q3.Package.browse("demo/pkg", registry=registry_url, top_hash=parent)
    readme, raw, empty, hello = (same[key] for key in ("README.md", "data-raw.csv", "empty.txt", "data/hello.txt"))
    same.set("docs/README.md", readme)
    same.delete("README.md")
    same.set("data-raw.csv", empty)
    same.set("empty.txt", raw)
    same.set("hello-copy.txt", PackageEntry(hello.physical_key, hello.size, hello.hash, {"user_meta": {"copy": True}}))
    same._set_commit_message("renames")
    assert same.top_hash == done.top_hash


def test_a_failed_commit_finishes_without_sending_files_again(q3, s3_server, s3, tmp_path: Path) -> None:
    bucket = _new_bucket(s3)
    registry_url = f"s3://{bucket}"
    q3.Package().set_dir("/", str(_source_dir(tmp_path / "src"))).push("demo/pkg", registry=registry_url,
                                                                        message="first", force=True)
    parent = q3.Package.browse("demo/pkg", registry=registry_url).top_hash
    store = CountingStore(S3Store(bucket, endpoint_url=s3_server.endpoint_url))
    registry = Registry(store, registry_url)
    work = tmp_path / "work"
    big = {f"big/{n}.bin": _write(work / f"{n}.bin", random.Random(n).randbytes(1024 + n * 5000)) for n in range(3)}
    changes = Changes(files={**{key: NewFile(path) for key, path in big.items()},
                             "small.txt": NewFile(_write(work / "small.txt", b"under 1 KiB: always sent\n"))})

    def commit(parent: str, clock: int) -> tuple[object, dict]:
        before = store.snapshot()["totals"]
        done = commit_revision(registry, "demo/pkg", parent, changes, message="edit", clock=lambda: clock)
        after = store.snapshot()["totals"]
        return done, {op: after[op] - before.get(op, 0) for op in after}

    def versions(key: str) -> list[str]:
        listed = s3.list_object_versions(Bucket=bucket, Prefix=f"demo/pkg/{key}").get("Versions", [])
        return [version["VersionId"] for version in listed if version["Key"] == f"demo/pkg/{key}"]

    first, requests = commit(parent, 1_900_000_000)
    assert first.reused == 0 and requests["put"] == 4 + 3  # the files, the manifest, two pointers
    # A failure after the uploads: neither the manifest nor the pointers landed.
    s3.delete_object(Bucket=bucket, Key=f".quilt/packages/{first.top_hash}")
    s3.delete_object(Bucket=bucket, Key=".quilt/named_packages/demo/pkg/1900000000")
    s3.put_object(Bucket=bucket, Key=".quilt/named_packages/demo/pkg/latest", Body=parent.encode())

    again, requests = commit(parent, 1_900_000_100)
    assert again.top_hash == first.top_hash and again.reused == 3
    assert requests["put"] == 1 + 3  # small.txt, the manifest, two pointers
    assert all(len(versions(key)) == 1 for key in big) and len(versions("small.txt")) == 2
    pkg = q3.Package.browse("demo/pkg", registry=registry_url, top_hash=again.top_hash)
    for key, path in big.items():  # pinned to the version that was already there
        assert pkg[key].physical_key.version_id == versions(key)[0]
        assert pkg[key].get_bytes() == Path(path).read_bytes()

    # A destination holding other bytes is no reason to skip: that file is sent.
    Path(big["big/0.bin"]).write_bytes(b"changed" * 300)
    third, requests = commit(again.top_hash, 1_900_000_200)
    assert third.reused == 2 and requests["put"] == 2 + 3
    assert len(versions("big/0.bin")) == 2
    pkg = q3.Package.browse("demo/pkg", registry=registry_url, top_hash=third.top_hash)
    assert pkg["big/0.bin"].get_bytes() == b"changed" * 300 and pkg.top_hash == third.top_hash


def test_what_an_s3_checksum_says_of_the_bytes() -> None:
    data = random.Random(1).randbytes(3000)
    single = base64.b64encode(hashlib.sha256(data).digest()).decode()  # what one PUT of it carries
    assert _chunked_hash_of_checksum(single, len(data)) == hash_bytes("sha2-256-chunked", data)
    size = 2 * CHECKSUM_CHUNK_SIZE + 5  # three parts of quilt3's chunk size
    composite = "Y68lgvvPstmbueZHNVw/WNEIEX0Qxy01vyRB//bzz/g="
    assert _chunked_hash_of_checksum(f"{composite}-3", size) == composite
    assert _chunked_hash_of_checksum(f"{composite}-2", size) is None  # other parts: not quilt3's chunks
    assert _chunked_hash_of_checksum(composite, size) is None  # one PUT of a file that quilt3 sends in parts
    assert _chunked_hash_of_checksum(f"{single}-1", len(data)) is None
    assert _chunked_hash_of_checksum("not base64!", len(data)) is None
    assert _chunked_hash_of_checksum("", len(data)) is None
    empty = base64.b64encode(hashlib.sha256(b"").digest()).decode()
    assert _chunked_hash_of_checksum(empty, 0) == hash_bytes("sha2-256-chunked", b"")


def test_a_parent_that_does_not_hash_to_its_name_fails_with_nothing_written(q3, s3_server, s3,
                                                                           tmp_path: Path) -> None:
    bucket = _new_bucket(s3)
    registry_url = f"s3://{bucket}"
    q3.Package().set_dir("/", str(_source_dir(tmp_path / "src"))).push("demo/pkg", registry=registry_url,
                                                                        message="first", force=True)
    parent = q3.Package.browse("demo/pkg", registry=registry_url).top_hash
    key = f".quilt/packages/{parent}"
    data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    tampered = data.replace(b'"size": 8,', b'"size": 9,')  # data-raw.csv's row
    assert tampered != data
    s3.put_object(Bucket=bucket, Key=key, Body=tampered)
    objects = sorted(item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"])
    store = CountingStore(S3Store(bucket, endpoint_url=s3_server.endpoint_url))
    registry = Registry(store, registry_url)
    changes = Changes(files={"new.bin": NewFile(_write(tmp_path / "new.bin", os.urandom(2000)))},
                      deleted={"empty.txt"})
    with pytest.raises(ManifestError, match=f"{key}: content hashes to [0-9a-f]{{64}}, not to its name {parent}"):
        commit_revision(registry, "demo/pkg", parent, changes, message="edit")
    assert "put" not in store.snapshot()["totals"]
    assert sorted(item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]) == objects


def test_a_parent_not_in_quilt3s_order_is_read_whole(q3, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "registry"
    root.mkdir()
    registry_url = root.as_uri()
    keys = ["data-raw.csv", "data/hello.txt", "b.txt", "a/y.txt", "a/x.txt"]  # string order, reversed: not tree order
    entries = [Entry(key, f"file:///nowhere/{i}", i, "sha2-256-chunked", hash_bytes("sha2-256-chunked", key.encode()))
               for i, key in enumerate(keys)]
    header = {"version": "v0", "message": "by hand"}
    parent = compute_top_hash(header, entries)
    (root / ".quilt/packages").mkdir(parents=True)
    (root / f".quilt/packages/{parent}").write_bytes(
        encode_record(header_record(header)) + b"".join(encode_record(entry_record(entry)) for entry in entries)
        + encode_record({"logical_key": "a/", "meta": {"dir": 1}}))  # directory metadata last
    registry = Registry(LocalStore(str(root)), registry_url)
    registry.set_pointer("demo/hand", LATEST, parent)
    changes = Changes(deleted={"b.txt"}, renamed={"a/z.txt": "data-raw.csv"})
    with caplog.at_level(logging.INFO, logger="quiltmount.packages.commit"):
        done = commit_revision(registry, "demo/hand", parent, changes, message="fixed")
    assert "not in tree order" in caplog.text

    ours = (root / f".quilt/packages/{done.top_hash}").read_bytes()
    assert list(_lines(ours)) == ["a/", "a/x.txt", "a/y.txt", "a/z.txt", "data/hello.txt", "data-raw.csv"]
    pkg = q3.Package.browse("demo/hand", registry=registry_url, top_hash=done.top_hash)
    dumped = io.BytesIO()
    pkg.dump(dumped)
    assert pkg.top_hash == done.top_hash and dumped.getvalue() == ours
    same = q3.Package.browse("demo/hand", registry=registry_url, top_hash=parent)
    same.set("a/z.txt", same["data-raw.csv"])
    same.delete("b.txt")
    same._set_commit_message("fixed")
    assert same.top_hash == done.top_hash


def test_a_streamed_file_is_completed_by_the_commit_or_dropped_when_already_in_place(
        s3_server, s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new file whose parts were sent while it was written (`NewFile.streamed`, as a draft's): the commit
    takes the upload, sends the last part and completes it, and the entry's hash is the parts' checksums;
    when the destination holds these bytes already (a HEAD answering the checksum real S3 keeps for a
    multipart upload, `<base64>-<parts>`, which the test server does not), the upload is aborted and the
    object kept; other bytes of the same size are completed as a new version."""
    bucket = _new_bucket(s3)
    store = S3Store(bucket, endpoint_url=s3_server.endpoint_url)
    registry = Registry(store, f"s3://{bucket}")
    key, size = "demo/pkg/big.bin", 2 * CHECKSUM_CHUNK_SIZE + 12345
    same = random.Random(1).randbytes(size)
    path = _write(tmp_path / "big.bin", same)
    taken: list[tuple[str, int]] = []

    def streamed() -> NewFile:
        upload = store.part_upload(key, path)
        for number in (1, 2):  # what a draft's writer has sent when the file is closed
            upload.add_part(number)

        def take(destination: str, part_size: int):
            taken.append((destination, part_size))
            return upload

        return NewFile(path, streamed=take)

    def committed(parent: str | None) -> tuple[str, Entry]:
        done = commit_revision(registry, "demo/pkg", parent, Changes(files={"big.bin": streamed()}),
                               message="streamed")
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        (entry,) = registry.load_manifest(done.top_hash).entries
        return done.top_hash, entry

    def versions() -> int:
        return len([v for v in s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])
                    if v["Key"] == key])

    first_hash, first = committed(None)
    assert taken == [(key, CHECKSUM_CHUNK_SIZE)] and versions() == 1
    assert first.hash_value == hash_bytes("sha2-256-chunked", same)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == same

    as_real_s3 = f"{first.hash_value}-3"
    real_head = store.head
    monkeypatch.setattr(store, "head", lambda k, *, checksum=False: dataclasses.replace(
        real_head(k, checksum=checksum), checksum_sha256=as_real_s3))
    again_hash, again = committed(first_hash)
    assert versions() == 1 and again.physical_key == first.physical_key and again.hash_value == first.hash_value

    other = random.Random(2).randbytes(size)
    Path(path).write_bytes(other)
    _, third = committed(again_hash)
    assert versions() == 2 and third.physical_key != first.physical_key
    assert third.hash_value == hash_bytes("sha2-256-chunked", other)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == other


def _index_content(path: str) -> dict:
    """Everything an index holds but node ids and its build time: each node by path, directory metadata, info."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = {node: rest for node, *rest in db.execute("SELECT id, parent, name, size, hash_type, hash_value, hash, "
                                                         "physical_key, meta FROM nodes")}

        def path_of(node: int) -> str:
            parent, name = rows[node][0], rows[node][1]
            return name if parent == ix.ROOT_ID else f"{path_of(parent)}/{name}"

        nodes = {path_of(node): tuple(rest[2:]) for node, rest in rows.items()}
        info = dict(db.execute("SELECT key, value FROM info"))
        del info["stamp"]
        return {"nodes": nodes, "dir_meta": dict(db.execute("SELECT path, meta FROM dir_meta")), "info": info}
    finally:
        db.close()


def test_a_committed_revisions_index_made_from_its_parents_is_the_one_its_manifest_builds(q3, tmp_path: Path) -> None:
    """`derive_index` after commits of every kind of change (new files in new directories, changed, deleted and
    renamed files, directories emptied or deleted with their metadata, meta of kept entries, user_meta): the same
    files, directories, hashes, physical keys, metadata and info as the index built from the new manifest."""
    root = tmp_path / "registry"
    root.mkdir()
    registry_url = root.as_uri()
    src = _source_dir(tmp_path / "src")
    (src / "deep/er/most").mkdir(parents=True)
    (src / "deep/er/most/only.txt").write_bytes(b"alone\n")
    (src / "deep/sibling.txt").write_bytes(b"sib\n")
    (src / "gone/x.txt").parent.mkdir()
    (src / "gone/x.txt").write_bytes(b"x\n")
    base = q3.Package().set_dir("/", str(src)).set_meta({"v": 1})
    base.set("data/hello.txt", str(src / "data/hello.txt"), meta={"lang": "en"})
    base.set_dir("gone", str(src / "gone"), meta={"about": "gone"})
    base.set_dir("deep/er", str(src / "deep/er"), meta={"about": "er"})
    parent = base.build("demo/pkg", registry=registry_url, message="first")
    registry = Registry(LocalStore(str(root)), registry_url)
    new = _write(tmp_path / "w" / "new.bin", os.urandom(3000))
    changed = _write(tmp_path / "w" / "changed.csv", b"c,d\n")
    changes = Changes(files={"fresh/a b/new é.bin": NewFile(new), "data-raw.csv": NewFile(changed, {"m": 1})},
                      deleted={"deep/er/most/only.txt", "README.md", "gone/x.txt"},
                      renamed={"docs/README.md": "README.md", "empty2.txt": "empty.txt"},
                      entry_meta={"deep/sibling.txt": {"user_meta": {"k": "é"}}},
                      deleted_dirs={"gone"}, user_meta={"v": 2})
    done = commit_revision(registry, "demo/pkg", parent, changes, message="second")
    assert done.change is not None and done.change.parent == parent

    indexes = tmp_path / "indexes"
    indexes.mkdir()
    parent_index, built, derived = (str(indexes / name) for name in ("parent", "built", "derived"))
    ix.build_index(parent_index, lambda: registry.open_manifest(parent), top_hash=parent,
                   manifest_url=registry.manifest_url(parent))
    ix.build_index(built, lambda: registry.open_manifest(done.top_hash), top_hash=done.top_hash,
                   manifest_url=registry.manifest_url(done.top_hash))
    entries = ix.derive_index(derived, parent_index, done.change, top_hash=done.top_hash,
                              manifest_url=registry.manifest_url(done.top_hash))
    assert entries == done.entries
    want, got = _index_content(built), _index_content(derived)
    assert "deep/er/most" not in got["nodes"] and "gone" not in got["nodes"] and "fresh/a b" in got["nodes"]
    assert got["dir_meta"] == {"deep/er": json.dumps({"about": "er"})}
    assert got == want
    made = ix.RevisionIndex(derived, top_hash=done.top_hash, manifest_url=registry.manifest_url(done.top_hash))
    assert made.manifest_etag == registry.store.head(registry.manifest_key(done.top_hash)).etag  # not rebuilt
    made.close()

    # A commit on the derived revision derives again; a count that cannot match is refused, nothing written.
    again = commit_revision(registry, "demo/pkg", done.top_hash, Changes(deleted={"docs/README.md"}), message="3")
    third = str(indexes / "third")
    ix.derive_index(third, derived, again.change, top_hash=again.top_hash,
                    manifest_url=registry.manifest_url(again.top_hash))
    ix.build_index(built + "3", lambda: registry.open_manifest(again.top_hash), top_hash=again.top_hash,
                   manifest_url=registry.manifest_url(again.top_hash))
    assert _index_content(third) == _index_content(built + "3")
    wrong = dataclasses.replace(again.change, entries=again.change.entries + 1)
    with pytest.raises(ManifestError, match="counts"):
        ix.derive_index(str(indexes / "wrong"), derived, wrong, top_hash=again.top_hash,
                        manifest_url=registry.manifest_url(again.top_hash))
    assert sorted(os.listdir(indexes)) == ["built", "built3", "derived", "parent", "third"]
