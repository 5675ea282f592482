"""`quiltmount cache status|prune|verify|clear`: the shared disk cache from outside the mounts (issue #16).

Unit tests on a real `DiskCache` in a temporary directory, the command line as a user runs it, and one real
mount whose cached blocks the verbs report, check, shrink and empty.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from mounthelpers import run_cli
from quiltmount import cachectl, cli
from quiltmount.cache.disk import DiskCache
from quiltmount.packages.manifest import hash_bytes

MIB = 1 << 20
CHUNKED = "sha2-256-chunked"


def put_file(cache: DiskCache, key: str, data: bytes, source: str) -> None:
    """Cache `data` under `key` in blocks as mounts do (1 MiB each, the last one shorter)."""
    for index, start in enumerate(range(0, len(data), MIB)):
        assert cache.put(key, index, data[start:start + MIB], source, wait=True)
    cache.flush()


def package_key(data: bytes, hash_type: str = CHUNKED) -> str:
    return f"hash:{hash_type}:{hash_bytes(hash_type, data)}"


def block_files(root: Path) -> list[Path]:
    return sorted(path for path in (root / "blocks").rglob("*") if path.is_file())


def file_of(cache: DiskCache, key: str, block: int) -> Path:
    row = cache._row(key, block)
    assert row is not None
    return Path(cache._path(row[0]))


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A closed cache holding a package entry (2.5 MiB), a bucket object (1.5 MiB) and another bucket's
    object (1000 bytes)."""
    root = tmp_path / "cache"
    files = {package_key(entry := os.urandom(2 * MIB + MIB // 2)): entry,
             'object:["s3://a", "big.bin", null, "\\"e1\\""]': os.urandom(MIB + MIB // 2),
             'object:["s3://b", "small.txt", null, "\\"e2\\""]': b"s" * 1000}
    cache = DiskCache(str(root), 64 * MIB)
    try:
        for key, data in files.items():
            put_file(cache, key, data, "s3://b" if "small" in key else "s3://a")
    finally:
        cache.close()
    return root, files


# -- status -------------------------------------------------------------------------------------------------

def test_status_of_a_missing_cache_is_empty_and_creates_nothing(tmp_path):
    root = tmp_path / "nothing-here"
    report = cachectl.status(str(root))
    assert report == {"dir": str(root), "exists": False, "used": 0, "capacity": None, "blocks": 0, "files": 0,
                      "sources": [], "mounts": []}
    assert "empty" in cachectl.format_status(report)
    for verb in (cachectl.prune, cachectl.clear, cachectl.verify):
        assert verb(str(root)) is None
    assert not root.exists()


def test_status_reports_use_against_the_cap_per_source_and_kind(filled):
    root, files = filled
    report = cachectl.status(str(root))
    total = sum(len(data) for data in files.values())
    assert (report["exists"], report["used"], report["capacity"]) == (True, total, 64 * MIB)
    assert (report["blocks"], report["files"]) == (3 + 2 + 1, 3)
    assert report["sources"] == [
        {"source": "s3://a", "kind": "object", "blocks": 2, "bytes": MIB + MIB // 2, "files": 1},
        {"source": "s3://a", "kind": "package", "blocks": 3, "bytes": 2 * MIB + MIB // 2, "files": 1},
        {"source": "s3://b", "kind": "object", "blocks": 1, "bytes": 1000, "files": 1}]
    text = cachectl.format_status(report)
    assert f"{root}" in text and "of 64.0 MiB cap" in text and "6 blocks, 3 files" in text
    assert "s3://a  package entries  2.5 MiB  3 blocks, 1 file" in text
    assert "none live" in text


# -- verify -------------------------------------------------------------------------------------------------

def test_verify_checks_blocks_and_whole_package_files(filled):
    root, files = filled
    report = cachectl.verify(str(root))
    assert {name: report[name] for name in ("checked", "damaged", "hashed", "failed", "orphans")} == {
        "checked": 6, "damaged": 0, "hashed": 1, "failed": 0, "orphans": 0}
    assert report["bytes"] == sum(len(data) for data in files.values())
    assert "6 blocks checked" in cachectl.format_verify(report, str(root))


def test_verify_removes_a_damaged_block_and_a_package_file_that_does_not_hash_to_its_key(tmp_path):
    root = tmp_path / "cache"
    good = os.urandom(3 * MIB + 7)
    wrong = os.urandom(MIB + 10)  # stored under the hash of other bytes: every CRC is right, the hash is not
    unsure = os.urandom(2 * MIB)  # whole blocks only: more may follow, so a mismatch proves nothing
    keys = {"good": package_key(good), "wrong": package_key(os.urandom(MIB + 10)),
            "unsure": package_key(os.urandom(3 * MIB))}
    cache = DiskCache(str(root), 64 * MIB)
    try:
        put_file(cache, keys["good"], good, "s3://p")
        put_file(cache, keys["wrong"], wrong, "s3://p")
        put_file(cache, keys["unsure"], unsure, "s3://p")
        damaged = file_of(cache, keys["good"], 1)
        damaged.write_bytes(b"\0" * MIB)  # same size, other bytes
    finally:
        cache.close()
    report = cachectl.verify(str(root))
    assert {name: report[name] for name in ("checked", "damaged", "hashed", "failed", "failed_blocks")} == {
        "checked": 4 + 2 + 2, "damaged": 1, "hashed": 1, "failed": 1, "failed_blocks": 2}
    assert not damaged.exists()
    cache = DiskCache(str(root))
    try:
        assert cache.get(keys["good"], 1) is None and cache.get(keys["good"], 0) == good[:MIB]
        assert not cache.contains(keys["wrong"], 0) and not cache.contains(keys["wrong"], 1)
        assert cache.get(keys["unsure"], 1) == unsure[MIB:]
        assert cache.used == len(good) - MIB + len(unsure)
    finally:
        cache.close()
    assert len(block_files(root)) == 3 + 2
    again = cachectl.verify(str(root))
    assert (again["damaged"], again["failed"], again["hashed"]) == (0, 0, 0)  # `good` lacks a block now


@pytest.mark.parametrize("hash_type", ["SHA256", "CRC64NVME"])
def test_verify_checks_the_other_hash_types_too(tmp_path, hash_type):
    root = tmp_path / "cache"
    data = os.urandom(MIB + 3)
    cache = DiskCache(str(root), 16 * MIB)
    try:
        put_file(cache, package_key(data, hash_type), data, "s3://p")
        put_file(cache, package_key(b"other" + data[5:], hash_type), data, "s3://p")
    finally:
        cache.close()
    report = cachectl.verify(str(root))
    assert (report["hashed"], report["failed"], report["failed_blocks"]) == (2, 1, 2)


def test_content_check_needs_every_block():
    key = package_key(b"x")
    assert cachectl.content_check('object:["s3://b", "k", null, "e"]', [(0, 5)]) is None
    assert cachectl.content_check("hash:md5:abc", [(0, 5)]) is None
    assert cachectl.content_check(key, [(0, MIB), (2, 5)]) is None  # a gap
    assert cachectl.content_check(key, [(1, 5)]) is None  # no first block
    assert cachectl.content_check(key, [(0, 5), (1, 5)]) is None  # a short block before the last
    assert cachectl.content_check(key, []) is None
    checker = cachectl.content_check(key, [(0, 1)])
    checker.update(b"x")
    assert checker.result() is True


def test_the_block_size_is_the_mounts():
    from quiltmount.fs.readahead import DEFAULT_BLOCK_SIZE

    assert cachectl.BLOCK_SIZE == DEFAULT_BLOCK_SIZE


def test_verify_removes_old_orphans_only_and_nothing_that_is_not_the_caches(filled):
    root, _ = filled
    old = time.time() - 3600
    orphan = root / "blocks" / "ab" / ("ab" + "0" * 30)  # a crash between a block's rename and its row
    leftover = root / "tmp" / ("cd" * 16)  # a crash while writing one
    young = root / "blocks" / "ef" / ("ef" + "1" * 30)  # a daemon's block, renamed, not indexed yet
    misplaced = root / "blocks" / "aa" / ("bb" + "2" * 30)
    foreign = [root / "data" / "x.csv", root / "blocks" / "README", root / "blocks" / "ab" / "notes.txt",
               root / "notes.txt", misplaced]
    for path in [orphan, leftover, young, *foreign]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"bytes")
        if path is not young:
            os.utime(path, (old, old))
    indexed = block_files(root)
    for path in indexed:
        if path not in (orphan, young, misplaced) and path.parent.name != "ab":
            os.utime(path, (old, old))
    report = cachectl.verify(str(root))
    assert (report["orphans"], report["damaged"]) == (2, 0)
    assert not orphan.exists() and not leftover.exists()
    assert young.exists() and all(path.exists() for path in foreign)
    assert all(path.exists() for path in indexed if path not in (orphan, young))


def test_blocks_evicted_by_another_process_during_verify_are_not_reported_damaged(filled):
    root, files = filled
    other = DiskCache(str(root))  # another daemon: it evicts the object of s3://b while verify runs
    small = next(key for key in files if "small" in key)
    try:
        report = cachectl.verify(str(root), progress=lambda done, total: done == 1 and other.evict(small))
    finally:
        other.close()
    assert (report["checked"], report["damaged"]) == (5, 0)


def test_verify_and_prune_while_a_daemon_writes_never_lose_what_it_indexes(tmp_path):
    root = tmp_path / "cache"
    daemon = DiskCache(str(root), 64 * MIB)  # another process, caching blocks all along
    try:
        for round_number in range(3):
            for index in range(100):
                daemon.put(f"hash:{CHUNKED}:r{round_number}", index, os.urandom(10_000), "s3://p", wait=True)
            report = cachectl.verify(str(root))
            assert report["damaged"] == 0 and report["orphans"] == 0
            cachectl.prune(str(root), 500_000)
        daemon.flush()
        report = cachectl.verify(str(root))
        assert (report["damaged"], report["orphans"]) == (0, 0)
        assert report["checked"] == daemon.counts()[0] and report["bytes"] == daemon.used
        assert len(block_files(root)) == report["checked"]
    finally:
        daemon.close()


def test_verify_reports_progress(filled):
    root, _ = filled
    calls = []
    cachectl.verify(str(root), progress=lambda done, total: calls.append((done, total)))
    assert calls == [(number, 6) for number in range(1, 7)]


def test_a_block_file_removed_by_hand_is_damaged(filled):
    root, files = filled
    cache = DiskCache(str(root))
    try:
        file_of(cache, next(iter(files)), 0).unlink()
    finally:
        cache.close()
    report = cachectl.verify(str(root))
    assert (report["checked"], report["damaged"], report["hashed"]) == (6, 1, 0)


# -- prune and clear ----------------------------------------------------------------------------------------

def test_prune_keeps_the_most_recently_used_blocks(filled):
    root, files = filled
    recent = next(key for key in files if "small" in key)
    cache = DiskCache(str(root))
    try:
        assert cache.get(recent, 0) is not None
    finally:
        cache.close()  # writes the use
    report = cachectl.prune(str(root), 2000)
    assert (report["removed_blocks"], report["used"], report["to"]) == (5, 1000, 2000)
    assert report["removed_bytes"] == sum(len(data) for data in files.values()) - 1000
    assert len(block_files(root)) == 1
    assert "pruned" in cachectl.format_prune(report, str(root))
    assert "nothing to prune" in cachectl.format_prune(cachectl.prune(str(root), 2000), str(root))


def test_prune_defaults_to_the_cap_a_mount_lowered(filled):
    root, _ = filled
    DiskCache(str(root), 2 * MIB).close()  # a mount with --disk-cache-size 2M: the cap drops, blocks stay
    assert cachectl.status(str(root))["used"] > 2 * MIB
    assert "over it" in cachectl.format_status(cachectl.status(str(root)))
    report = cachectl.prune(str(root))
    assert report["to"] == 2 * MIB and report["used"] <= 2 * MIB and report["capacity"] == 2 * MIB
    assert cachectl.prune(str(root), 0)["used"] == 0


def test_clear_empties_it_and_keeps_the_cap(filled):
    root, files = filled
    leftover = root / "tmp" / ("cd" * 16)
    leftover.write_bytes(b"half a block")
    os.utime(leftover, (time.time() - 3600,) * 2)
    report = cachectl.clear(str(root))
    assert (report["removed_blocks"], report["orphans"], report["used"]) == (6, 1, 0)
    assert report["removed_bytes"] == sum(len(data) for data in files.values())
    assert block_files(root) == [] and not leftover.exists()
    status = cachectl.status(str(root))
    assert (status["used"], status["blocks"], status["capacity"]) == (0, 0, 64 * MIB)
    assert "removed 6 blocks" in cachectl.format_clear(report, str(root))


# -- the command line ---------------------------------------------------------------------------------------

def test_the_cli_on_a_missing_cache_says_so_and_exits_0(own_disk_cache, capsys):
    assert cli.main(["cache", "status"]) == 0
    assert f"disk cache {own_disk_cache}" in capsys.readouterr().out
    for verb in ("prune", "verify", "clear"):
        assert cli.main(["cache", verb]) == 0
        assert capsys.readouterr().out == f"no disk cache at {own_disk_cache}: nothing to {verb}\n"
    assert cli.main(["cache", "verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"dir": str(own_disk_cache), "exists": False}
    assert not own_disk_cache.exists()


def test_the_cli_takes_another_dir(filled, capsys):
    root, _ = filled
    assert cli.main(["cache", "status", "--json", "--disk-cache-dir", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["blocks"] == 6
    assert cli.main(["cache", "prune", "--to", "0", "--disk-cache-dir", str(root)]) == 0
    assert "removed 6 blocks" in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path):
    result = run_cli("cache", "prune", "--to", "lots")
    assert result.returncode == 2 and "invalid size 'lots'" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("cache", "frobnicate")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.sqlite").write_bytes(b"this is not a database" * 100)
    for verb in ("status", "prune", "verify", "clear"):
        result = run_cli("cache", verb, "--disk-cache-dir", str(broken))
        assert result.returncode == 1, (verb, result)
        assert result.stderr.startswith(f"quiltmount: error: cannot open the disk cache at {broken}: ")
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_the_verbs_on_a_real_mount(mount, bucket, s3, own_disk_cache):
    data = os.urandom(2 * MIB + 12345)
    s3.put_object(Bucket=bucket, Key="data/big.bin", Body=data)
    mountpoint = mount(f"s3://{bucket}", "--disk-cache-size", "64M")
    assert (mountpoint / "data" / "big.bin").read_bytes() == data

    result = run_cli("cache", "status", "--json")
    assert result.returncode == 0, result.stderr
    live = json.loads(result.stdout)["mounts"]
    assert [(m["mountpoint"], m["source"]) for m in live] == [(str(mountpoint), f"s3://{bucket}/")]
    text = run_cli("cache", "status").stdout
    assert f"mounts:    {mountpoint} (s3://{bucket}/, pid " in text

    result = run_cli("umount", str(mountpoint))
    assert result.returncode == 0, result.stderr
    result = run_cli("cache", "status", "--json")
    report = json.loads(result.stdout)
    assert (report["dir"], report["used"], report["capacity"], report["mounts"]) == (
        str(own_disk_cache), len(data), 64 * MIB, [])
    assert report["sources"] == [{"source": f"s3://{bucket}", "kind": "object", "blocks": 3, "bytes": len(data),
                                  "files": 1}]
    text = run_cli("cache", "status").stdout
    assert f"s3://{bucket}  bucket objects  2.0 MiB  3 blocks, 1 file" in text and "none live" in text

    corrupt = max(block_files(own_disk_cache), key=lambda path: path.stat().st_size)
    corrupt.write_bytes(bytes(len(corrupt.read_bytes())))
    result = run_cli("cache", "verify", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["checked"], report["damaged"], report["used"]) == (3, 1, len(data) - MIB)
    assert not corrupt.exists()
    result = run_cli("cache", "verify")
    assert result.stdout.startswith(f"verified {own_disk_cache}: 2 blocks checked (")

    result = run_cli("cache", "prune", "--to", "100K")  # the 1 MiB block goes; the 12,345-byte one first if older
    assert result.returncode == 0 and re.search(r"removed (1 block|2 blocks) ", result.stdout), result
    left = json.loads(run_cli("cache", "status", "--json").stdout)
    assert left["used"] in (0, 12345) and left["blocks"] == (left["used"] > 0)
    result = run_cli("cache", "clear")
    assert result.returncode == 0 and result.stdout.startswith(f"cleared {own_disk_cache}: removed "), result
    report = json.loads(run_cli("cache", "status", "--json").stdout)
    assert (report["used"], report["blocks"], report["sources"]) == (0, 0, [])
    assert block_files(own_disk_cache) == []
