"""Package revisions served from their on-disk index (quiltmount/packages/index.py).

The index itself (no FUSE): a revision of 20,000 entries, with a directory of 6,000 (more than one page of a
listing), answers every name, size and extended attribute as its manifest says, whatever the manifest's
order; an index truncated, modified, foreign or of another format is rebuilt; a manifest that does not hash
to its name leaves no index.  Then through real mounts of a local and an S3 registry: the same answers and
bytes, reuse by a second mount without a manifest GET, two mounts indexing one revision at the same time,
and an index damaged on disk rebuilt by the next mount.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import subprocess
import threading
from pathlib import Path

import pytest

from mounthelpers import fresh_record, mount_record, on_terminal, run_cli
from quiltmount.errors import NotFound
from quiltmount.fs.packagetree import RevisionTree
from quiltmount.packages import index as ix
from quiltmount.packages import manifest as mf
from quiltmount.paths import index_dir
from quiltmount.storage.stores import StoreSet

BIG_DIR_ENTRIES = 6_000
OTHER_ENTRIES = 14_000
CONTENTS = [f"content {i}\n".encode() * (i + 1) for i in range(40)]


def sha2(data: bytes) -> str:
    return mf.hash_bytes(mf.SHA2_256_CHUNKED, data)


def large_entries(physical_key_of) -> list[mf.Entry]:
    """20,000 entries: `big/` holds 6,000; the rest spread over nested directories, some with meta, some
    with non-ASCII names; entry i has the bytes CONTENTS[i % 40], stored at `physical_key_of(j)`."""
    entries = []
    for i in range(BIG_DIR_ENTRIES + OTHER_ENTRIES):
        j = i % len(CONTENTS)
        if i < BIG_DIR_ENTRIES:
            key = f"big/f{i:05d}.txt"
        else:
            key = f"d{i % 37}/s{i % 5}/ü-{i}.csv" if i % 3 else f"d{i % 37}/top-{i}.bin"
        meta = {"user_meta": {"i": i, "tag": "Zoë"}, "b": [1, 2]} if i % 11 == 0 else {}
        entries.append(mf.Entry(key, physical_key_of(j), len(CONTENTS[j]), mf.SHA2_256_CHUNKED,
                                sha2(CONTENTS[j]), meta))
    return entries


def large_manifest(physical_key_of) -> mf.Manifest:
    return mf.Manifest({"version": "v0", "message": "twenty thousand", "user_meta": {"owner": "Zoë"}},
                       large_entries(physical_key_of), {"big/": {"about": "many files"}, "d3/s1/": [1]})


def expected_tree(manifest: mf.Manifest) -> dict[str, dict[str, mf.Entry | None]]:
    """Directory path -> {name: entry, or None for a directory}."""
    tree: dict[str, dict[str, mf.Entry | None]] = {"": {}}
    for entry in manifest.entries:
        parts = entry.logical_key.split("/")
        for depth in range(1, len(parts)):
            tree.setdefault("/".join(parts[:depth]), {})
            tree["/".join(parts[:depth - 1])][parts[depth - 1]] = None
        tree["/".join(parts[:-1])][parts[-1]] = entry
    return tree


def xattr_json(value: bytes) -> object:
    return json.loads(value.decode("utf-8"))


# ----------------------------------------------------------------------------------------------------------
# The index (no FUSE)

def build(tmp_path: Path, data: bytes, top_hash: str, name: str = "index.sqlite") -> str:
    path = str(tmp_path / name)
    ix.build_index(path, lambda: io.BytesIO(data), top_hash=top_hash, manifest_url=f"file:///registry/{top_hash}")
    return path


def open_index(path: str, top_hash: str) -> ix.RevisionIndex:
    return ix.RevisionIndex(path, top_hash=top_hash, manifest_url=f"file:///registry/{top_hash}")


@pytest.mark.parametrize("order", ["tree", "shuffled"])
def test_index_answers_like_the_manifest(tmp_path: Path, order: str, caplog) -> None:
    manifest = large_manifest(lambda j: f"s3://data-bucket/objects/{j}.bin?versionId=v{j}")
    data = mf.write_manifest(manifest)
    if order == "shuffled":  # quilt3 writes tree order, but reads (and hashes) any order
        header, *lines = data.splitlines(keepends=True)
        random.Random(7).shuffle(lines)
        data = header + b"".join(lines)
    caplog.set_level(logging.INFO, logger="quiltmount.packages.index")
    path = build(tmp_path, data, manifest.top_hash)
    assert ("not in tree order" in caplog.text) == (order == "shuffled")
    index = open_index(path, manifest.top_hash)
    assert (index.entries, index.manifest_bytes) == (len(manifest.entries), len(data))
    tree = RevisionTree(index, StoreSet(), 1000.0, local_files=False)

    root = tree.xattrs("")
    assert root["user.quilt.top_hash"] == manifest.top_hash.encode()
    assert root["user.quilt.message"] == b"twenty thousand"
    assert xattr_json(root["user.quilt.user_meta"]) == {"owner": "Zoë"}
    for directory, children in expected_tree(manifest).items():
        listing = tree.readdir(directory)
        assert list(listing) == sorted(children), directory  # sorted by name, like every listing
        for name, entry in children.items():
            path_in = f"{directory}/{name}" if directory else name
            node = tree.lookup(path_in)
            assert listing[name].is_dir == node.is_dir == (entry is None)
            if entry is None:
                continue
            assert listing[name].size == node.size == entry.size
            assert node.expected_hash == (entry.hash_type, entry.hash_value)
            assert node.obj is not None and node.obj.version_id == entry.parsed_physical_key().version_id
            attrs = tree.xattrs(path_in)
            assert xattr_json(attrs["user.quilt.hash"]) == entry.hash_object()
            assert attrs["user.quilt.physical_key"].decode() == entry.physical_key
            assert attrs["user.quilt.meta"] == json.dumps(entry.meta, ensure_ascii=False).encode()
    assert xattr_json(tree.xattrs("big")["user.quilt.meta"]) == {"about": "many files"}
    assert tree.xattrs("d0") == {}
    with pytest.raises(NotFound):
        tree.lookup("big/no-such-file")
    with pytest.raises(NotFound):
        tree.lookup("no/such/dir/file")
    tree.close()


def test_entry_hash_part_is_the_canonical_json() -> None:
    rng = random.Random(3)
    for i in range(500):
        meta = rng.choice([{}, {"user_meta": {"é": i, "z": [1, None, 2.5]}}, {"b": {"a": "\u2028\"\\"}}])
        hash_obj = rng.choice([{"type": mf.SHA256, "value": "ab" * 32},
                               {"value": "x/y+z=", "type": mf.SHA2_256_CHUNKED},
                               {"type": mf.CRC64NVME, "value": "AAAAAAAAAAA=", "extra": {"k": 1}}])
        key = rng.choice(["a/b.txt", "ü/ñ \"q\"", "x\ty/\u2603.csv"]) + str(i)
        entry = mf.Entry(key, "s3://b/k", i, hash_obj["type"], hash_obj["value"], meta, raw_hash=hash_obj)
        canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode(
            {"hash": entry.hash_object(), "logical_key": key, "meta": meta, "size": i})
        assert mf.entry_hash_part(entry) == canonical


def test_physical_key_fast_path_matches_quilt3_normalization() -> None:
    rng = random.Random(11)
    alphabet = "abcXYZ019_.-~/%+ ?=&#;:@é"
    keys = ["s3://b/k", "s3://b/", "s3://b//k", "s3://b/k?versionId=v.1_~-", "s3://b/k?versionId=",
            "file:///a/./b", "file:///a//b", "file:///a/b/", "file:///a/..", "file:///a/.b", "file:///."]
    for _ in range(3000):
        body = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        keys.append(rng.choice(["s3://bkt/", "s3://bkt/a/", "file:///", "file:///x/"]) + body)
    for key in keys:
        try:
            slow = mf.format_physical_key(mf.parse_physical_key(key))
        except mf.PhysicalKeyError:
            slow = None
        try:
            fast = mf.normalize_physical_key(key)
        except mf.PhysicalKeyError:
            fast = None
        assert fast == slow, key


def test_damaged_foreign_or_older_indexes_are_rebuilt(tmp_path: Path, monkeypatch, caplog) -> None:
    entries = large_entries(lambda j: f"s3://b/{j}")[:3000]
    manifest = mf.Manifest({"version": "v0"}, entries)
    other = mf.Manifest({"version": "v0", "message": "other"}, entries[:10])
    data, other_data = mf.write_manifest(manifest), mf.write_manifest(other)
    opened: list[int] = []

    def open_manifest():
        opened.append(1)
        return io.BytesIO(data)

    def index_at(path: str) -> ix.RevisionIndex:
        return ix.open_or_build(path, open_manifest, top_hash=manifest.top_hash,
                                manifest_url=f"file:///registry/{manifest.top_hash}")

    path = str(tmp_path / "index.sqlite")
    index_at(path).close()
    index_at(path).close()
    assert len(opened) == 1  # built once, then reused
    good = Path(path).read_bytes()

    def damaged(damage) -> str:
        opened.clear()
        caplog.clear()
        damage()
        index = index_at(path)
        assert index.entries == 3000 and len(opened) == 1, "not rebuilt"
        index.close()
        open_index(path, manifest.top_hash).close()  # the rebuilt index passes every check
        return caplog.text

    caplog.set_level(logging.WARNING, logger="quiltmount.packages.index")
    assert "header says" in damaged(lambda: os.truncate(path, len(good) // 2))

    def scribble() -> None:  # the same size, garbage in the middle
        with open(path, "r+b") as file:
            file.seek(len(good) // 2)
            file.write(os.urandom(8192))
    assert "modified after it was built" in damaged(scribble)
    assert "not an SQLite file" in damaged(lambda: Path(path).write_bytes(b"not sqlite" * 100))
    other_path = build(tmp_path, other_data, other.top_hash, "other.sqlite")
    assert "built from" in damaged(lambda: os.replace(other_path, path))  # another revision's index
    monkeypatch.setattr(ix, "FORMAT_VERSION", ix.FORMAT_VERSION + 1)  # this code reads a newer format only
    assert "format" in damaged(lambda: None)
    assert sorted(os.listdir(tmp_path)) == ["index.sqlite"]  # no temporary file left


def test_a_manifest_that_is_not_its_name_leaves_no_index(tmp_path: Path) -> None:
    manifest = mf.Manifest({"version": "v0", "message": "signed"}, large_entries(lambda j: f"s3://b/{j}")[:500])
    altered = mf.write_manifest(manifest).replace(b"signed", b"altered")
    with pytest.raises(mf.ManifestError, match=f"content hashes to .*, not to its name {manifest.top_hash}"):
        build(tmp_path, altered, manifest.top_hash)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("lines, message", [
    (["a.txt", "b.txt", "a.txt"], "duplicate logical key"),
    (["a.txt", "b.txt", "b.txt"], "duplicate logical key 'b.txt'"),
    (["a", "a/b.txt"], "logical key 'a' is both a file and a directory"),
    (["a/b.txt", "a"], "logical key 'a' is both a file and a directory"),
    (["x/y/z", "x/y"], "logical key 'x/y' is both a file and a directory"),
])
def test_duplicates_and_clashes_fail_like_parse_manifest(tmp_path: Path, lines: list[str], message: str) -> None:
    entries = [mf.Entry(key, "s3://b/k", 1, mf.SHA256, "00", {}) for key in lines]
    body = b'{"version": "v0"}\n' + b"".join(
        json.dumps({"logical_key": e.logical_key, "physical_keys": [e.physical_key], "size": 1,
                    "hash": {"type": mf.SHA256, "value": "00"}, "meta": {}}).encode() + b"\n" for e in entries)
    with pytest.raises(mf.ManifestError, match=message):
        mf.parse_manifest(body)
    top_hash = mf.compute_top_hash({"version": "v0"}, entries)
    with pytest.raises(mf.ManifestError, match=message):
        build(tmp_path, body, top_hash)
    assert os.listdir(tmp_path) == []


def test_concurrent_builders_of_one_index(tmp_path: Path) -> None:
    manifest = mf.Manifest({"version": "v0"}, large_entries(lambda j: f"s3://b/{j}")[:8000])
    data = mf.write_manifest(manifest)
    path = str(tmp_path / "index.sqlite")
    results: list[object] = []

    def build_one() -> None:
        try:
            index = ix.open_or_build(path, lambda: io.BytesIO(data), top_hash=manifest.top_hash,
                                     manifest_url="file:///r")
            results.append(index.entries)
            index.close()
        except Exception as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    threads = [threading.Thread(target=build_one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [8000] * 3
    assert os.listdir(tmp_path) == ["index.sqlite"]


# ----------------------------------------------------------------------------------------------------------
# Through mounts

def put_registry_s3(s3, bucket: str) -> tuple[str, mf.Manifest]:
    for j, data in enumerate(CONTENTS):
        s3.put_object(Bucket=bucket, Key=f"objects/{j}.bin", Body=data)
    manifest = large_manifest(lambda j: f"s3://{bucket}/objects/{j}.bin")
    s3.put_object(Bucket=bucket, Key=f".quilt/packages/{manifest.top_hash}", Body=mf.write_manifest(manifest))
    s3.put_object(Bucket=bucket, Key=".quilt/named_packages/scale/big/latest", Body=manifest.top_hash.encode())
    return f"s3://{bucket}", manifest


def put_registry_local(root: Path) -> tuple[str, mf.Manifest]:
    for j, data in enumerate(CONTENTS):
        (root / "objects").mkdir(parents=True, exist_ok=True)
        (root / f"objects/{j}.bin").write_bytes(data)
    manifest = large_manifest(lambda j: (root / f"objects/{j}.bin").as_uri())
    (root / ".quilt/packages").mkdir(parents=True)
    (root / f".quilt/packages/{manifest.top_hash}").write_bytes(mf.write_manifest(manifest))
    (root / ".quilt/named_packages/scale/big").mkdir(parents=True)
    (root / ".quilt/named_packages/scale/big/latest").write_text(manifest.top_hash)
    return str(root), manifest


def index_file(registry_url: str, top_hash: str) -> Path:
    return Path(index_dir()) / ix.index_name(registry_url, top_hash)


def get_requests(mountpoint: Path) -> int:
    return fresh_record(mountpoint)["requests"]["totals"].get("get", 0)


@pytest.mark.parametrize("registry", ["s3", "local"])
def test_large_revision_through_a_mount(registry: str, s3, bucket: str, tmp_path: Path, mount) -> None:
    if registry == "s3":
        source, manifest = put_registry_s3(s3, bucket)
        registry_url = source
    else:
        source, manifest = put_registry_local(tmp_path / "registry")
        registry_url = f"file://{source}"
    index_file(registry_url, manifest.top_hash).unlink(missing_ok=True)
    mnt = mount(source)
    revision = mnt / ".packages/scale/big/latest"
    expected = expected_tree(manifest)
    assert sorted(os.listdir(revision)) == sorted(expected[""])

    # Every name, type and size, as the kernel gets them (readdirplus), and every file's extended attributes.
    for directory, children in expected.items():
        with os.scandir(revision / directory) as listing:
            found = {entry.name: (entry.is_dir(follow_symlinks=False), entry.stat(follow_symlinks=False).st_size)
                     for entry in listing}
        assert found == {name: (entry is None, 0 if entry is None else entry.size)
                         for name, entry in children.items()}, directory
    for entry in manifest.entries:
        path = revision / entry.logical_key
        assert xattr_json(os.getxattr(path, "user.quilt.hash")) == entry.hash_object()
        assert os.getxattr(path, "user.quilt.physical_key").decode() == entry.physical_key
        assert xattr_json(os.getxattr(path, "user.quilt.meta")) == entry.meta
    assert xattr_json(os.getxattr(revision / "big", "user.quilt.meta")) == {"about": "many files"}
    assert os.getxattr(revision, "user.quilt.top_hash").decode() == manifest.top_hash
    # Bytes (verified against the manifest's hashes as they are read) of a sample, every content at least once.
    for entry in manifest.entries[BIG_DIR_ENTRIES - 20:BIG_DIR_ENTRIES + 60]:
        assert (revision / entry.logical_key).read_bytes() == CONTENTS[int(Path(entry.physical_key).stem)]
    count = subprocess.run(f"find -L '{revision}' -type f | wc -l", shell=True, capture_output=True, text=True,
                           check=True).stdout
    assert int(count) == len(manifest.entries)

    record = mount_record(mnt)
    assert [(i["top_hash"], i["entries"]) for i in record["indexes"]] == [(manifest.top_hash, len(manifest.entries))]
    assert Path(record["indexes"][0]["path"]) == index_file(registry_url, manifest.top_hash)
    assert f"indexed revision {manifest.top_hash}: {len(manifest.entries)} entries" in \
        Path(record["log_file"]).read_text()
    status = run_cli("status")
    assert f"index:     {manifest.top_hash[:12]} {len(manifest.entries)} entries" in status.stdout

    # A second mount reuses the index: the revision answers without a GET of the manifest.
    built = index_file(registry_url, manifest.top_hash).stat()
    again = mount(source, "--read-only")  # (a second writable mount of a source needs its own --cache-dir)
    assert sorted(os.listdir(again / f".packages/scale/big/@{manifest.top_hash}/big"))[:2] == \
        ["f00000.txt", "f00001.txt"]
    deep = manifest.entries[-1]
    assert (again / f".packages/scale/big/@{manifest.top_hash}" / deep.logical_key).stat().st_size == deep.size
    if registry == "s3":
        assert get_requests(again) == 0
    assert index_file(registry_url, manifest.top_hash).stat().st_ino == built.st_ino


def test_two_mounts_index_one_revision_at_once(s3, bucket: str, mount) -> None:
    source, manifest = put_registry_s3(s3, bucket)
    index_file(source, manifest.top_hash).unlink(missing_ok=True)
    mounts = [mount(source), mount(source, "--read-only")]
    listings: list[object] = [None, None]

    def list_big(i: int) -> None:
        try:
            listings[i] = len(os.listdir(mounts[i] / ".packages/scale/big/latest/big"))
        except OSError as exc:
            listings[i] = exc

    threads = [threading.Thread(target=list_big, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert listings == [BIG_DIR_ENTRIES, BIG_DIR_ENTRIES]
    names = os.listdir(index_dir())
    assert index_file(source, manifest.top_hash).name in names
    assert not [name for name in names if name.endswith(".tmp")]
    for mnt in mounts:  # both mounts answer from an index
        assert (mnt / ".packages/scale/big/latest/big/f05999.txt").stat().st_size == len(CONTENTS[5999 % 40])


def test_index_damaged_on_disk_is_rebuilt_by_the_next_mount(s3, bucket: str, mount) -> None:
    source, manifest = put_registry_s3(s3, bucket)
    result = run_cli("packages", "index", "scale/big", "--registry", source, "--json",
                     env={**os.environ, "AWS_ENDPOINT_URL": s3.meta.endpoint_url})
    assert result.returncode == 0, result.stderr
    built = json.loads(result.stdout)
    assert (built["top_hash"], built["entries"]) == (manifest.top_hash, len(manifest.entries))
    path = index_file(source, manifest.top_hash)
    assert built["path"] == str(path)

    first = mount(source)  # built ahead by the command: no GET of the manifest
    assert len(os.listdir(first / f".packages/scale/big/@{manifest.top_hash}/big")) == BIG_DIR_ENTRIES
    assert get_requests(first) == 0

    os.truncate(path, path.stat().st_size // 3)
    second = mount(source, "--read-only")
    assert len(os.listdir(second / ".packages/scale/big/latest/big")) == BIG_DIR_ENTRIES
    log = Path(mount_record(second)["log_file"]).read_text()
    assert f"index {path} is" in log and "rebuilding it" in log
    ix.RevisionIndex(str(path), top_hash=manifest.top_hash,
                     manifest_url=f"{source}/.quilt/packages/{manifest.top_hash}").close()  # rebuilt whole


def test_index_command_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    registry, manifest = put_registry_local(tmp_path / "registry")
    status, screen = on_terminal("quiltmount.cli:main", "packages", "index", f"scale/big@{manifest.top_hash[:8]}",
                                 "--registry", registry, answer=None)
    assert status == 0, screen
    assert "indexing:" in screen and "entries" in screen  # tqdm's bar, on stderr
    assert f"scale/big@{manifest.top_hash}: {len(manifest.entries)} entries, index " in screen
    assert index_file(Path(registry).as_uri(), manifest.top_hash).exists()
    bad = run_cli("packages", "index", "scale/nope", "--registry", registry)
    assert (bad.returncode, bad.stderr.count("\n")) == (1, 1) and "Traceback" not in bad.stderr


def test_walking_a_large_revision_keeps_the_kernel_cache_bounded(tmp_path: Path, mount) -> None:
    """Every entry the kernel learns costs the daemon a libfuse node until the kernel forgets it; past
    --kernel-cache-entries under one top-level name the mount tells the kernel to drop them.  Walks still see
    everything, and a process working inside the revision keeps its place."""
    source, manifest = put_registry_local(tmp_path / "registry")
    mnt = mount(source, "--kernel-cache-entries", "2000")
    revision = mnt / ".packages/scale/big/latest"
    inside = subprocess.Popen(["sh", "-c", "cd big && sleep 4 && ls | wc -l && pwd"], cwd=revision,
                              stdout=subprocess.PIPE, text=True)
    for _ in range(2):
        found = subprocess.run(["find", "-L", str(revision), "-type", "f"], capture_output=True, text=True,
                               check=True).stdout.splitlines()
        assert len(found) == len(manifest.entries)
    out, _ = inside.communicate(timeout=60)
    assert out.split() == [str(BIG_DIR_ENTRIES), os.path.join(os.path.realpath(revision), "big")]
    # 40,000 entries went to the kernel, every 2,000 a trim (counted when the kernel still had the name).
    assert fresh_record(mnt)["kernel_cache_trims"] >= 10
