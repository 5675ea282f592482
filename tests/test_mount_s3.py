"""A mounted moto bucket driven with real tools (ls, find, cat, cmp, dd) and Python file I/O."""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import os
import random
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from mounthelpers import fresh_record, mount_record, run_cli
from test_writes import wait_for

SPECIAL_NAMES = ["with space.txt", "ünïcødé-名前.txt", "plus+sign.txt", "percent%20.txt", "hash#tag.txt",
                 "semi;colon & amp.txt"]


def put(s3, bucket: str, key: str, body: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body)


def test_ls_find_cat_match_the_bucket(s3, bucket, mount):
    objects = {
        "top.txt": b"top level\n",
        "dir/a.csv": b"x,y\n1,2\n",
        "dir/sub/deep.bin": os.urandom(3000),
        "implicit/only/child.txt": b"child\n",
        "empty.txt": b"",
    }
    objects.update({f"names/{name}": name.encode() for name in SPECIAL_NAMES})
    for key, body in objects.items():
        put(s3, bucket, key, body)
    put(s3, bucket, "marker-only/", b"")  # an empty directory made by a console "create folder"
    mnt = mount(f"s3://{bucket}")

    assert sorted(os.listdir(mnt)) == ["dir", "empty.txt", "implicit", "marker-only", "names", "top.txt"]
    assert os.listdir(mnt / "marker-only") == []
    assert sorted(os.listdir(mnt / "names")) == sorted(SPECIAL_NAMES)

    found = subprocess.run(["find", str(mnt), "-type", "f"], capture_output=True, text=True, check=True)
    assert sorted(os.path.relpath(p, mnt) for p in found.stdout.splitlines()) == sorted(objects)

    long_listing = subprocess.run(["ls", "-l", str(mnt / "dir")], capture_output=True, text=True, check=True)
    assert " a.csv" in long_listing.stdout and long_listing.stdout.splitlines()[1].startswith("-rw-r-----")
    for key, body in objects.items():
        assert (mnt / key).stat().st_size == len(body), key
        assert subprocess.run(["cat", str(mnt / key)], capture_output=True, check=True).stdout == body, key
    assert os.path.isdir(mnt / "implicit/only")


def test_ls_l_and_find_use_the_listing_not_a_head_per_file(s3, bucket, mount):
    for i in range(300):
        put(s3, bucket, f"many/file-{i:04d}.txt", b"x" * i)
    mnt = mount(f"s3://{bucket}")
    record = fresh_record(mnt)
    before, calls_before = record["requests"]["totals"], record["fuse_calls"]
    listing = subprocess.run(["ls", "-l", "--time-style=+%s", str(mnt / "many")],
                             capture_output=True, text=True, check=True)
    assert len(listing.stdout.splitlines()) == 301
    # The attributes came with the listing (readdirplus): no lookup per file reached the daemon, and the
    # sizes and mtimes `ls -l` printed are the listing's.
    calls = fresh_record(mnt)["fuse_calls"]
    assert calls.get("getattr", 0) - calls_before.get("getattr", 0) <= 5, calls
    listed = {obj["Key"].split("/")[1]: obj for obj in s3.list_objects_v2(Bucket=bucket, Prefix="many/")["Contents"]}
    for line in listing.stdout.splitlines()[1:]:
        mode, _, _, _, size, mtime, name = line.split()
        assert mode == "-rw-r-----" and int(size) == listed[name]["Size"], line
        assert int(mtime) == int(listed[name]["LastModified"].timestamp()), line
    sizes = subprocess.run(["find", str(mnt / "many"), "-type", "f", "-printf", "%s\n"],
                           capture_output=True, text=True, check=True)
    assert sorted(map(int, sizes.stdout.split())) == list(range(300))
    after = fresh_record(mnt)["requests"]["totals"]
    # One HEAD + LIST pair resolves `many` itself; its 300 files cost nothing beyond the listing.
    assert after.get("head", 0) - before.get("head", 0) <= 1
    assert after.get("list", 0) - before.get("list", 0) <= 3


def test_listing_across_many_pages(s3, bucket, mount):
    """Three pages of S3's 1,000 keys (10,000 keys and more: scripts/bench.py)."""
    keys = [f"big/k{i:05d}" for i in range(2_500)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: put(s3, bucket, key, b"1"), keys))
    mnt = mount(f"s3://{bucket}")
    names = os.listdir(mnt / "big")
    assert len(names) == len(keys) and sorted(names) == [key.split("/")[1] for key in keys]


def test_large_object_read_end_to_end(s3, bucket, mount, tmp_path):
    size = 72 * 1024 * 1024 + 12345
    data = random.Random(1).randbytes(size)
    put(s3, bucket, "large.bin", data)
    local = tmp_path / "large.bin"
    local.write_bytes(data)
    mnt = mount(f"s3://{bucket}", "--memory-cache-size", "64M")

    digest = hashlib.sha256()
    with open(mnt / "large.bin", "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    subprocess.run(["cmp", str(mnt / "large.bin"), str(local)], check=True)

    skipped = subprocess.run(["dd", f"if={mnt / 'large.bin'}", "bs=1M", "skip=50", "count=3", "status=none"],
                             capture_output=True, check=True).stdout
    assert skipped == data[50 << 20:53 << 20]

    rng = random.Random(2)
    fd = os.open(mnt / "large.bin", os.O_RDONLY)
    try:
        for _ in range(100):
            offset = rng.randrange(0, size)
            length = rng.randrange(1, 2 << 20)
            assert os.pread(fd, length, offset) == data[offset:offset + length]
        assert os.pread(fd, 100, size - 10) == data[-10:]
        assert os.pread(fd, 100, size + 5) == b""
    finally:
        os.close(fd)


def test_concurrent_readers(s3, bucket, mount):
    blobs = {f"c/{i}.bin": random.Random(i).randbytes(3 * 1024 * 1024 + i) for i in range(6)}
    for key, body in blobs.items():
        put(s3, bucket, key, body)
    mnt = mount(f"s3://{bucket}", "--memory-cache-size", "32M")

    def read_all(key: str) -> bool:
        with open(mnt / key, "rb") as file:
            return file.read() == blobs[key]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(read_all, list(blobs) * 3))
    assert all(results)


def test_prefix_source_and_reserved_names(s3, bucket, mount):
    put(s3, bucket, "data/2024/x.txt", b"x")
    put(s3, bucket, "data/.packages/hidden.txt", b"mine")
    put(s3, bucket, "data/.search", b"mine too")
    put(s3, bucket, "elsewhere.txt", b"no")
    mnt = mount(f"s3://{bucket}/data")
    assert sorted(os.listdir(mnt)) == ["2024"]
    assert (mnt / "2024/x.txt").read_bytes() == b"x"
    found = subprocess.run(["find", str(mnt)], capture_output=True, text=True, check=True).stdout.split()
    assert not any(".packages" in path or ".search" in path for path in found)


def test_directory_wins_over_object_and_bad_keys_are_skipped(s3, bucket, mount):
    put(s3, bucket, "both", b"shadowed object")
    put(s3, bucket, "both/inside.txt", b"inside")
    put(s3, bucket, "bad//double.txt", b"x")
    put(s3, bucket, "bad/./dot.txt", b"x")
    put(s3, bucket, "bad/../up.txt", b"x")
    put(s3, bucket, "bad/" + "L" * 300, b"x")
    put(s3, bucket, "bad/ok.txt", b"ok")
    mnt = mount(f"s3://{bucket}")
    assert (mnt / "both").is_dir()
    assert os.listdir(mnt / "both") == ["inside.txt"]
    assert sorted(os.listdir(mnt / "bad")) == ["ok.txt"]
    found = subprocess.run(["find", str(mnt)], capture_output=True, text=True, check=True)
    assert found.returncode == 0
    log = Path(mount_record(mnt)["log_file"]).read_text()
    assert "directory wins" in log and "longer than 255 bytes" in log


def test_deleted_and_changed_objects(s3, bucket, mount):
    put(s3, bucket, "gone.txt", b"soon gone")
    put(s3, bucket, "changes.bin", b"A" * (40 << 20))
    mnt = mount(f"s3://{bucket}", "--metadata-ttl", "0.5")
    assert (mnt / "gone.txt").read_bytes() == b"soon gone"
    with open(mnt / "changes.bin", "rb") as file:
        assert file.read(1 << 20) == b"A" * (1 << 20)
        put(s3, bucket, "changes.bin", b"B" * (3 << 20))
        # Blocks already fetched are the opened version's; a block beyond them cannot be: EIO, never a mix.
        with pytest.raises(OSError) as failure:
            file.seek(36 << 20)
            file.read(1 << 20)
        assert failure.value.errno == errno.EIO
    s3.delete_object(Bucket=bucket, Key="gone.txt")
    time.sleep(1.5)
    assert not (mnt / "gone.txt").exists()
    with pytest.raises(FileNotFoundError):
        (mnt / "gone.txt").read_bytes()
    assert (mnt / "changes.bin").read_bytes() == b"B" * (3 << 20)


def test_writes_are_refused_read_only(s3, bucket, mount):
    put(s3, bucket, "f.txt", b"f")
    mnt = mount(f"s3://{bucket}", "--read-only")
    for action in (lambda: (mnt / "new.txt").write_bytes(b"x"), lambda: (mnt / "f.txt").unlink(),
                   lambda: (mnt / "d").mkdir()):
        with pytest.raises(OSError) as failure:
            action()
        assert failure.value.errno == errno.EROFS


def test_ownership_and_modes_options(s3, bucket, mount):
    put(s3, bucket, "d/f.txt", b"f")
    mnt = mount(f"s3://{bucket}", "--uid", "1234", "--gid", "4321", "--file-mode", "0640", "--dir-mode", "0750")
    st = (mnt / "d/f.txt").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 4321, 0o640)
    assert (mnt / "d").stat().st_mode & 0o7777 == 0o750


def test_default_modes_are_s3fs_modes_for_objects_and_readable_by_all_when_shared(s3, bucket, mount):
    """Objects and directories without modes of their own show s3fs's 0640/0750 (implied directories too); the
    views keep 0644/0755, and so does everything on a mount shared with --allow-other."""
    put(s3, bucket, "d/f.txt", b"f")
    mnt = mount(f"s3://{bucket}")
    modes = {name: stat.S_IMODE(os.stat(mnt / name).st_mode) for name in ("", "d", "d/f.txt", ".packages")}
    assert modes == {"": 0o750, "d": 0o750, "d/f.txt": 0o640, ".packages": 0o755}
    (mnt / "new").mkdir()
    (mnt / "new/g.txt").write_bytes(b"g")
    listed = {entry.name: stat.S_IMODE(entry.stat().st_mode) for entry in os.scandir(mnt)}
    assert listed == {"d": 0o750, "new": 0o750}
    assert stat.S_IMODE(os.stat(mnt / "new/g.txt").st_mode) == 0o640
    assert run_cli("umount", str(mnt)).returncode == 0
    shared = mount(f"s3://{bucket}", "--allow-other")
    assert {name: stat.S_IMODE(os.stat(shared / name).st_mode) for name in ("d", "d/f.txt", ".packages")} == {
        "d": 0o755, "d/f.txt": 0o644, ".packages": 0o755}


def test_status_and_umount(s3, bucket, mount):
    put(s3, bucket, "f.txt", b"f" * 5000)
    mnt = mount(f"s3://{bucket}", "--memory-cache-size", "64M", "--disk-cache-size", "16M")
    (mnt / "f.txt").read_bytes()
    record = fresh_record(mnt)
    assert record["source"] == f"s3://{bucket}/"
    assert os.path.exists(record["log_file"])
    assert record["cache"]["memory_used"] >= 5000 and record["cache"]["disk_used"] >= 5000
    assert record["cache"]["disk_limit"] == 16 << 20
    assert record["requests"]["totals"]["get"] >= 1 and record["requests"]["in_flight"] == 0
    human = run_cli("status")
    assert str(mnt) in human.stdout and str(record["pid"]) in human.stdout
    os.kill(record["pid"], signal.SIGUSR1)  # the stacks of its threads into the log; it serves on
    wait_for(lambda: "Current thread" in Path(record["log_file"]).read_text(), 10)
    log_text = Path(record["log_file"]).read_text()
    assert "File " in log_text and (mnt / "f.txt").read_bytes() == b"f" * 5000
    assert "Ignoring invalid max threads value" not in log_text  # libfuse 3.14's noise at every mount, avoided
    result = run_cli("umount", str(mnt))
    assert result.returncode == 0, result.stderr
    assert os.listdir(mnt) == []
    again = run_cli("umount", str(mnt))
    assert again.returncode == 1 and "not mounted" in again.stderr
