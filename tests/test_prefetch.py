"""`quiltmount prefetch`: files, directories and revisions of live mounts fetched into the disk cache by their
daemons, so that later reads (in this mount or a new one) make no GET; package entries verified on the way;
one-line errors for paths outside mounts and mounts without a disk cache."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import threading
import time
from pathlib import Path

import pytest

from mounthelpers import fresh_record, on_terminal, run_cli
from quiltmount.cache.disk import DiskCache
from quiltmount.cache.keys import object_identity
from quiltmount.fs.blockcache import BlockCache
from quiltmount.fs.node import Node, Tree
from quiltmount.fs.prefetch import Prefetcher
from quiltmount.packages import manifest as mf
from quiltmount.prefetchctl import prefetch
from quiltmount.storage.base import ObjectInfo

BIG = 20 * 1024 * 1024 + 123  # three 8 MiB parts


def _gets(mountpoint: Path) -> int:
    return int(fresh_record(mountpoint)["requests"]["totals"].get("get", 0))


def _read_all(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _prefetch_json(*paths: Path) -> dict:
    result = run_cli("prefetch", *map(str, paths), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_bucket_directory_then_reads_make_no_request(s3, bucket, mount):
    rng = random.Random(16)
    files = {f"data/{group}/f{number:02d}.bin": rng.randbytes(rng.randrange(1, 3000))
             for group in ("a", "b/c") for number in range(12)}
    files["data/big.bin"] = rng.randbytes(BIG)
    files["other/not-prefetched.txt"] = b"elsewhere"
    for key, body in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    mnt = mount(f"s3://{bucket}", "--read-only")  # nothing is written: read-only mounts prefetch too
    wanted = {key: body for key, body in files.items() if key.startswith("data/")}

    summary = _prefetch_json(mnt / "data")
    assert summary["files"] == summary["fetched"] == len(wanted)
    assert summary["bytes"] == summary["fetched_bytes"] == sum(map(len, wanted.values()))
    assert (summary["cached"], summary["skipped"], summary["errors"], summary["failures"]) == (0, 0, 0, [])
    assert summary["requests"] == len(wanted) - 1 + 3  # one GET per small file, one per part of the big one
    assert summary["mounts"] == [str(mnt)]

    before = _gets(mnt)
    assert _read_all(mnt / "data") == {key[len("data/"):]: body for key, body in wanted.items()}
    assert _gets(mnt) == before

    again = _prefetch_json(mnt / "data/b", mnt / "data/big.bin", mnt / "other")  # a file, and a second mount path
    assert (again["files"], again["cached"], again["fetched"], again["requests"]) == (14, 13, 1, 1)


def _write_package(s3, bucket: str, name: str, files: dict[str, bytes], wrong: set[str]) -> str:
    """A revision of `files` (stored under raw/); the manifest gives the keys in `wrong` another hash."""
    entries = []
    for logical_key, data in files.items():
        s3.put_object(Bucket=bucket, Key=f"raw/{logical_key}", Body=data)
        hashed = data + b"!" if logical_key in wrong else data
        entries.append(mf.Entry(logical_key, f"s3://{bucket}/raw/{logical_key}", len(data), "sha2-256-chunked",
                                mf.hash_bytes("sha2-256-chunked", hashed)))
    manifest = mf.Manifest({"version": "v0", "message": "prefetch"}, entries)
    s3.put_object(Bucket=bucket, Key=f".quilt/packages/{manifest.top_hash}", Body=mf.write_manifest(manifest))
    for pointer in ("1795424102", "latest"):
        s3.put_object(Bucket=bucket, Key=f".quilt/named_packages/{name}/{pointer}", Body=manifest.top_hash.encode())
    return manifest.top_hash


def test_a_revision_is_verified_and_read_by_a_new_mount_without_requests(s3, bucket, mount, own_disk_cache):
    rng = random.Random(61)
    files = {f"train/{number:03d}.csv": rng.randbytes(1024) for number in range(40)}
    files["train/big.bin"] = rng.randbytes(BIG)
    files["README.md"] = b"read me"
    files["bad/small.txt"] = b"not what the manifest says"
    files["bad/big.bin"] = rng.randbytes(9 * 1024 * 1024)
    bad = {"bad/small.txt", "bad/big.bin"}
    _write_package(s3, bucket, "team/data", files, bad)
    mnt = mount(f"s3://{bucket}")
    latest = mnt / ".packages/team/data/latest"

    reports: list[dict] = []
    summary = prefetch([str(latest) + "/"], progress=reports.append)  # the API, with progress reports
    assert summary["files"] == len(files) and summary["errors"] == 2
    assert summary["fetched"] == len(files) - 2 and summary["cached"] == 0
    real = os.path.realpath(latest)
    assert sorted(failure["path"] for failure in summary["failures"]) == [f"{real}/{key}" for key in sorted(bad)]
    assert all("does not match the manifest hash" in failure["error"] for failure in summary["failures"])
    assert reports and set(reports[-1]) == {"files", "bytes", "files_done", "bytes_done", "listing"}
    again = run_cli("prefetch", str(latest / "bad"))  # what failed is fetched again, and fails again
    assert again.returncode == 1 and again.stdout.endswith(": 0 fetched, 0 already cached, 2 failed\n"), again
    assert again.stderr.count("does not match the manifest hash") == 2 and "Traceback" not in again.stderr

    disk = DiskCache(str(own_disk_cache))
    try:  # no block of a file whose bytes do not match stays cached
        for key in sorted(bad):
            name = "hash:sha2-256-chunked:" + mf.hash_bytes("sha2-256-chunked", files[key] + b"!")
            assert not any(disk.contains(name, block) for block in range(10)), key
    finally:
        disk.close()

    good = {key: data for key, data in files.items() if key not in bad}
    one = mount(f"quilt+s3://{bucket}#package=team/data", "--read-only")  # a new daemon, the same disk cache
    before = _gets(one)
    assert {key: (one / key).read_bytes() for key in good} == good
    assert _gets(one) == before

    status, screen = on_terminal("quiltmount.cli:main", "prefetch", str(one / "train"), str(one / "README.md"))
    assert status == 0, screen
    assert "prefetched 42 files (20.0 MiB) in " in screen and ": 0 fetched, 42 already cached" in screen


def test_a_large_entry_overwritten_in_s3_is_not_served_after_its_prefetch_failed(s3, bucket, mount, own_disk_cache):
    """A large entry of an unversioned bucket prefetched whole and right, then overwritten in S3 with other bytes:
    prefetched again, it fails its hash, and none of the bytes it fetched is served, though this daemon
    checked the entry's blocks before (under the same key, from the same place)."""
    right, wrong = random.Random(70).randbytes(9 * 1024 * 1024 + 5), random.Random(71).randbytes(9 * 1024 * 1024 + 5)
    _write_package(s3, bucket, "team/h", {"mid.bin": right}, set())
    mnt = mount(f"s3://{bucket}", "--read-only")
    entry = mnt / ".packages/team/h/latest/mid.bin"
    assert _prefetch_json(entry)["fetched"] == 1
    s3.put_object(Bucket=bucket, Key="raw/mid.bin", Body=wrong)
    assert run_cli("cache", "clear").returncode == 0
    again = run_cli("prefetch", str(entry))
    assert again.returncode == 1 and "does not match the manifest hash" in again.stderr, again
    disk = DiskCache(str(own_disk_cache))
    try:
        name = "hash:sha2-256-chunked:" + mf.hash_bytes("sha2-256-chunked", right)
        assert [block for block in range(10) if disk.contains(name, block)] == []
    finally:
        disk.close()


def test_a_file_larger_than_the_disk_caps_fails_alone_with_the_reason(s3, bucket, mount, own_disk_cache):
    """A cache whose cap is below one block (a new cache's default on a nearly full disk: a tenth of the free
    space) cannot take a file's 1 MiB blocks: that file fails, saying so, and the others are prefetched."""
    DiskCache(str(own_disk_cache), 512 * 1024).close()  # the cap the mount keeps
    s3.put_object(Bucket=bucket, Key="big.bin", Body=b"b" * (3 << 20))
    s3.put_object(Bucket=bucket, Key="small.txt", Body=b"small")
    mnt = mount(f"s3://{bucket}", "--read-only")
    result = run_cli("prefetch", str(mnt / "big.bin"), str(mnt / "small.txt"), "--json")
    assert result.returncode == 1, result
    summary = json.loads(result.stdout)
    assert (summary["files"], summary["fetched"], summary["errors"]) == (2, 1, 1) and not summary.get("error")
    assert "larger than the disk cache's cap (512 KiB; quiltmount mount --disk-cache-size SIZE sets it)" in (
        summary["failures"][0]["error"])
    assert "disk is full" not in result.stderr and "Traceback" not in result.stderr


def test_one_line_errors_and_malformed_requests(s3, bucket, mount, tmp_path):
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"a")
    off = mount(f"s3://{bucket}", "--disk-cache-size", "0", "--read-only")
    on = mount(f"s3://{bucket}")
    cases = [
        ((str(tmp_path),), f"quiltmount: error: {tmp_path}: not in a quiltmount mount"),
        ((str(on / "missing"),), f"quiltmount: error: {on}/missing: no such file or directory"),
        ((str(off / "a.txt"),), f"quiltmount: error: cannot prefetch {off}/a.txt: the disk cache is off for this "
                                "mount (--disk-cache-size 0)"),
        ((str(on / "a.txt"), str(tmp_path)), f"quiltmount: error: {tmp_path}: not in a quiltmount mount"),
    ]
    for args, message in cases:
        result = run_cli("prefetch", *args)
        assert (result.returncode, result.stdout) == (1, ""), (args, result)
        assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, (args, result.stderr)
    assert run_cli("prefetch").returncode == 2  # usage

    for name in ("user.quilt.prefetch.add.XYZ", "user.quilt.prefetch.nothing.0123456789abcdef"):
        with pytest.raises(OSError) as raised:
            os.getxattr(on / "a.txt", name)
        assert raised.value.errno == errno.EINVAL, name
    assert os.listxattr(on / "a.txt") == []  # the control attributes are never listed
    unknown = json.loads(os.getxattr(on, "user.quilt.prefetch.progress.0123456789abcdef"))
    assert "no prefetch 0123456789abcdef" in unknown["error"]


# -- the engine alone (no FUSE): large package files hashed in order under a small budget, cancel ------------

class _SlowStore:
    """A remote store whose GETs take a random while (parts of one file complete out of order)."""

    name, remote, cache_name = "s3://stub", True, "stub s3://stub"

    def __init__(self, objects: dict[str, bytes], gate: threading.Event | None = None) -> None:
        self.objects, self.gate, self.requests = objects, gate, 0
        self._rng = random.Random(3)

    def pinned(self, obj: ObjectInfo) -> ObjectInfo:
        return dataclasses.replace(obj, etag='"stub"')

    def get_range(self, obj, start: int, end: int) -> bytes:
        self.requests += 1
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self._rng.random() / 50)
        return self.objects[obj.key][start:end]


class _FlatTree(Tree):
    def __init__(self, nodes: dict[str, Node]) -> None:
        self.nodes = nodes

    def lookup(self, path: str) -> Node:
        return Node(is_dir=True) if path == "" else self.nodes[path]

    def readdir(self, path: str) -> dict[str, Node]:
        return dict(self.nodes)


def _package_node(store: _SlowStore, key: str, data: bytes, hashed: bytes) -> Node:
    value = mf.hash_bytes("sha2-256-chunked", hashed)
    obj = ObjectInfo(key, len(data), 0.0, content_hash=f"sha2-256-chunked:{value}")
    return Node(is_dir=False, size=len(data), obj=obj, store=store, expected_hash=("sha2-256-chunked", value))


def _ask(prefetcher: Prefetcher, tree: Tree, verb: str, job: str = "0123456789abcdef") -> dict:
    return json.loads(prefetcher.answer(tree, "", f"user.quilt.prefetch.{verb}.{job}"))


def test_large_entries_are_hashed_in_order_within_the_budget(tmp_path):
    rng = random.Random(5)
    good, bad = rng.randbytes(37 * 1024 * 1024 + 1), rng.randbytes(17 * 1024 * 1024)
    store = _SlowStore({"good": good, "bad": bad})
    tree = _FlatTree({"good.bin": _package_node(store, "good", good, good),
                      "bad.bin": _package_node(store, "bad", bad, bad[::-1])})
    disk = DiskCache(str(tmp_path / "cache"), 1 << 30)
    cache = BlockCache(64 << 20, disk)
    prefetcher = Prefetcher(cache, block_size=1 << 20, part_size=8 << 20, budget=16 << 20)  # two parts at once
    try:
        assert _ask(prefetcher, tree, "add") == {}
        summary = _ask(prefetcher, tree, "wait")
        assert (summary["files"], summary["fetched"], summary["errors"], summary["requests"]) == (2, 1, 1, 5 + 3)
        assert summary["failures"][0]["path"] == "bad.bin"
        assert prefetcher._budget.used == 0  # every part gave its share back, parked ones included
        for name, data, served in (("good", good, True), ("bad", bad, False)):
            key = object_identity(store, tree.nodes[f"{name}.bin"].obj).disk_key
            blocks = [disk.get(key, index) for index in range((len(data) + (1 << 20) - 1) >> 20)]
            assert (b"".join(blocks) == data) if served else blocks == [None] * len(blocks), name  # type: ignore[arg-type]
        assert _ask(prefetcher, tree, "wait") == summary  # asked again (a larger buffer): the same answer
    finally:
        prefetcher.close()
        disk.close()


def test_cancel_stops_the_work(tmp_path):
    gate = threading.Event()
    store = _SlowStore({f"k{number}": b"x" * 100 for number in range(500)}, gate)
    tree = _FlatTree({f"f{number}": Node(is_dir=False, size=100, store=store,
                                         obj=ObjectInfo(f"k{number}", 100, 0.0, etag=f'"{number}"'))
                      for number in range(500)})
    disk = DiskCache(str(tmp_path / "cache"), 1 << 30)
    prefetcher = Prefetcher(BlockCache(1 << 20, disk), block_size=1 << 20, part_size=8 << 20, budget=8 << 20)
    try:
        _ask(prefetcher, tree, "add")
        time.sleep(0.2)
        assert _ask(prefetcher, tree, "cancel") == {}
        gate.set()
        summary = _ask(prefetcher, tree, "wait")
        assert summary["cancelled"] and summary["fetched"] < 100 and store.requests < 100
    finally:
        prefetcher.close()
        disk.close()
