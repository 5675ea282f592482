"""Write-back through a real mount: ordinary tools write, and the objects are checked with boto3."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from faultproxy import Fault
from mounthelpers import fresh_record, mount_record, refuse_links_and_fifos, run_cli
from quiltmount.errors import UserError
from quiltmount.fs.staging import StagingArea
from quiltmount import state
from quiltmount.state import pid_alive
from test_drafts_more import kill_daemon, proxy  # noqa: F401 (fixture)


def body(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(s3, bucket: str) -> set[str]:
    paginator = s3.get_paginator("list_objects_v2")
    return {item["Key"] for page in paginator.paginate(Bucket=bucket) for item in page.get("Contents", ())}


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def unmount(mnt: Path) -> None:
    result = run_cli("umount", str(mnt))
    assert result.returncode == 0, result.stderr


def sh(command: str, cwd: Path) -> None:
    subprocess.run(["bash", "-c", command], cwd=cwd, check=True)


def test_shell_tools_write_objects(s3, bucket, mount, tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(random.Random(1).randbytes(300_000))
    mnt = mount(f"s3://{bucket}")
    sh("echo hello > a.txt && echo more >> a.txt", mnt)
    sh(f"cp {source} copy.bin && cp -p {source} preserved.bin", mnt)
    sh("printf 0123456789 > dd.txt && printf XY | dd of=dd.txt bs=1 seek=3 conv=notrunc status=none", mnt)
    sh("printf abcdef > t.txt && truncate -s 3 t.txt && printf abc > g.txt && truncate -s 6 g.txt", mnt)
    sh("touch empty.txt && touch a.txt", mnt)
    sh("mkdir -p deep/er/est && echo x > deep/er/est/f.txt && mkdir emptydir", mnt)
    sh("echo draft > .doc.swp && mv .doc.swp doc.txt", mnt)  # an editor's save
    assert (mnt / "a.txt").read_bytes() == b"hello\nmore\n"  # read-your-writes, before or after upload
    assert sorted(os.listdir(mnt))[:3] == [".doc.swp", "a.txt", "copy.bin"] or "doc.txt" in os.listdir(mnt)
    unmount(mnt)  # waits for every upload
    assert body(s3, bucket, "a.txt") == b"hello\nmore\n"
    assert body(s3, bucket, "copy.bin") == source.read_bytes() == body(s3, bucket, "preserved.bin")
    assert body(s3, bucket, "dd.txt") == b"012XY56789"
    assert body(s3, bucket, "t.txt") == b"abc" and body(s3, bucket, "g.txt") == b"abc\0\0\0"
    assert body(s3, bucket, "empty.txt") == b""
    assert body(s3, bucket, "deep/er/est/f.txt") == b"x\n"
    assert body(s3, bucket, "doc.txt") == b"draft\n" and ".doc.swp" not in keys(s3, bucket)
    assert "emptydir/" in keys(s3, bucket)
    remount = mount(f"s3://{bucket}")
    assert os.listdir(remount / "emptydir") == []


def test_rsync_pandas_and_large_multipart_file(s3, bucket, mount, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    for i in range(20):
        (tree / "sub" / f"f{i}.txt").write_text(f"file {i}\n")
    big = tmp_path / "big.bin"
    big.write_bytes(random.Random(2).randbytes(21 * 1024 * 1024 + 3))
    mnt = mount(f"s3://{bucket}")
    subprocess.run(["rsync", "-a", f"{tree}/", f"{mnt}/synced/"], check=True)
    import pandas as pd

    pd.DataFrame({"x": range(1000), "y": [i * 0.5 for i in range(1000)]}).to_csv(mnt / "frame.csv", index=False)
    subprocess.run(["cp", str(big), str(mnt / "big.bin")], check=True)
    fd = os.open(mnt / "big.bin", os.O_RDONLY)
    os.close(fd)
    with open(mnt / "fsynced.txt", "wb") as file:
        file.write(b"durable")
        file.flush()
        os.fsync(file.fileno())
        assert body(s3, bucket, "fsynced.txt") == b"durable"  # fsync returned: it is in S3
    # A file fsynced while written is there right after close(2), with no gap while the daemon hands it
    # over to the bucket's listing (write, fsync, close, then rename or open: what careful writers do).
    (mnt / "new").mkdir()
    for number in range(8):
        with open(mnt / f"new/fsynced-{number}.txt", "wb") as file:
            file.write(b"durable")
            file.flush()
            os.fsync(file.fileno())
        assert os.stat(mnt / f"new/fsynced-{number}.txt").st_size == len(b"durable")
        os.rename(mnt / f"new/fsynced-{number}.txt", mnt / f"new/renamed-{number}.txt")
        assert (mnt / f"new/renamed-{number}.txt").read_bytes() == b"durable"
    assert pd.read_csv(mnt / "frame.csv")["y"].sum() == sum(i * 0.5 for i in range(1000))
    unmount(mnt)
    assert body(s3, bucket, "big.bin") == big.read_bytes()
    head = s3.head_object(Bucket=bucket, Key="big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # three 8 MiB parts
    assert all(body(s3, bucket, f"synced/sub/f{i}.txt") == f"file {i}\n".encode() for i in range(20))
    assert pd.read_csv(__import__("io").BytesIO(body(s3, bucket, "frame.csv")))["x"].tolist() == list(range(1000))


def test_rm_rmdir_mv(s3, bucket, mount):
    for key in ("d/a.txt", "d/sub/b.txt", "d/sub/deeper/c.txt", "old.txt", "over.txt", "keep/k.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    mnt = mount(f"s3://{bucket}")
    with pytest.raises(OSError) as failure:
        os.rmdir(mnt / "d")
    assert failure.value.errno == errno.ENOTEMPTY
    (mnt / "old.txt").rename(mnt / "new.txt")
    (mnt / "new.txt").rename(mnt / "over.txt")  # over an existing file
    assert (mnt / "over.txt").read_bytes() == b"old.txt"
    subprocess.run(["mv", str(mnt / "keep"), str(mnt / "moved")], check=True)  # a directory: object by object
    subprocess.run(["rm", "-r", str(mnt / "d")], check=True)
    (mnt / "fresh.txt").write_bytes(b"just written")
    (mnt / "fresh.txt").rename(mnt / "renamed-while-pending.txt")
    (mnt / "gone.txt").write_bytes(b"never uploaded?")
    (mnt / "gone.txt").unlink()
    unmount(mnt)
    remaining = keys(s3, bucket) - {"moved/"}  # mv(1) made the directory (a marker) before copying into it
    assert remaining == {"over.txt", "moved/k.txt", "renamed-while-pending.txt"}
    assert body(s3, bucket, "over.txt") == b"old.txt"
    assert body(s3, bucket, "renamed-while-pending.txt") == b"just written"


def test_umount_waits_for_pending_uploads(s3, bucket, mount):
    mnt = mount(f"s3://{bucket}")
    for i in range(60):
        (mnt / f"f{i:02d}.txt").write_bytes(f"content {i}".encode() * 100)
    unmount(mnt)
    assert keys(s3, bucket) == {f"f{i:02d}.txt" for i in range(60)}


def test_staged_files_survive_kill_9(s3, bucket, mount, s3_server):
    mnt = mount(f"s3://{bucket}")
    pid = mount_record(mnt)["pid"]
    payloads = {f"crash/{i}.bin": random.Random(i).randbytes(200_000) for i in range(8)}
    for key, data in payloads.items():
        (mnt / key).parent.mkdir(exist_ok=True)
        (mnt / key).write_bytes(data)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    # Whatever had not landed is still staged; the next mount of the same source uploads it.
    result = run_cli("mount", f"s3://{bucket}", str(mnt), "--endpoint-url", s3_server.endpoint_url)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: all(key in keys(s3, bucket) for key in payloads), timeout=60)
    assert all(body(s3, bucket, key) == data for key, data in payloads.items())
    assert fresh_record(mnt)["pending_uploads"] == 0


@contextlib.contextmanager
def s3_server_of_its_own() -> Iterator[str]:
    """Another S3 server, in a process of its own (moto's buckets are shared by the servers of one process);
    its endpoint URL."""
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "s3server.py")], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        yield server.stdout.readline().strip()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_staged_files_go_only_to_the_endpoint_they_were_written_for(s3, bucket, mount, proxy):  # noqa: F811
    """Two S3 servers may each have a bucket of the same name: what a killed daemon left staged for one is
    uploaded by the next mount of that one only.  The default cache directory of a custom endpoint's source is
    its own (it was per s3://BUCKET/PREFIX: the other server's mount uploaded the file), and one --cache-dir
    given to both is refused while it holds the first one's files."""
    with s3_server_of_its_own() as other_endpoint:
        other = boto3.client("s3", endpoint_url=other_endpoint)
        other.create_bucket(Bucket=bucket)
        mnt = mount(f"s3://{bucket}", "--endpoint-url", proxy.endpoint_url)
        cache_dir = mount_record(mnt)["cache_dir"]
        held = proxy.add(Fault.stall(method="PUT", path=f"/{bucket}/for-the-first-only.bin$"))
        (mnt / "for-the-first-only.bin").write_bytes(b"first")
        proxy.wait_for_hits(held)
        os.kill(mount_record(mnt)["pid"], signal.SIGKILL)
        time.sleep(0.3)
        proxy.clear()
        for options in ((), ("--cache-dir", cache_dir)):
            result = run_cli("mount", f"s3://{bucket}", str(mnt), "--endpoint-url", other_endpoint,
                             *options)
            if options:
                assert result.returncode == 1 and "not yet uploaded to" in result.stderr, result.stderr
                continue
            assert result.returncode == 0, result.stderr
            assert mount_record(mnt)["cache_dir"] != cache_dir
            time.sleep(2)  # (recovery uploads within seconds of mounting)
            unmount(mnt)
        assert keys(other, bucket) == set()
        result = run_cli("mount", f"s3://{bucket}", str(mnt), "--endpoint-url", proxy.endpoint_url)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: keys(s3, bucket) == {"for-the-first-only.bin"})
        assert keys(other, bucket) == set()


def test_a_staging_area_recorded_without_its_endpoint_keeps_its_bucket(tmp_path):
    """An owner record from before records named the endpoint (`s3://BUCKET`) is taken as the bucket's on
    any endpoint, as it was, and then names the endpoint of the mount that took it."""
    directory = str(tmp_path / "staging")
    legacy = StagingArea(directory, "s3://one")
    legacy.create("a.txt")
    legacy.close()
    StagingArea(directory, "aws s3://one", former_owner="s3://one").close()
    assert (tmp_path / "staging" / "owner").read_text() == "aws s3://one"
    with pytest.raises(UserError, match="not yet uploaded to aws s3://one, not to http://h:9000 s3://one"):
        StagingArea(directory, "http://h:9000 s3://one", former_owner="s3://one")


def test_a_staging_area_with_files_of_another_store_is_refused(tmp_path):
    """The journal names keys, not buckets: one --cache-dir given to a second source must not upload the first
    one's staged files into it.  Once nothing is staged, the area is the new source's."""
    directory = str(tmp_path / "staging")
    first = StagingArea(directory, "s3://one")
    staged = first.create("a/b.txt")
    first.close()
    with pytest.raises(UserError, match="not yet uploaded to s3://one, not to s3://two"):
        StagingArea(directory, "s3://two")
    again = StagingArea(directory, "s3://one")  # (the refusal let go of the area)
    again.remove(staged)
    again.close()
    StagingArea(directory, "s3://two").close()
    assert (tmp_path / "staging" / "owner").read_text() == "s3://two"


def test_local_directory_writes(tmp_path, mount):
    source = tmp_path / "src"
    source.mkdir()
    mnt = mount(str(source))
    sh("echo local > l.txt && mkdir -p x/y && cp l.txt x/y/copy.txt && mv l.txt moved.txt", mnt)
    unmount(mnt)
    assert (source / "moved.txt").read_bytes() == b"local\n" and not (source / "l.txt").exists()
    assert (source / "x/y/copy.txt").read_bytes() == b"local\n"


def test_links_and_fifos_without_posix_metadata_are_refused_as_unsupported(s3, bucket, mount):
    """Without --posix-metadata an object cannot be a symlink or a FIFO: EPERM, what symlink(2) and mknod(2)
    answer on a filesystem without them (`ln` and `rsync -a` then say "Operation not permitted", not that a
    writable mount is read-only); hard links: ENOTSUP, as s3fs."""
    s3.put_object(Bucket=bucket, Key="f.txt", Body=b"f")
    mnt = mount(f"s3://{bucket}")
    refuse_links_and_fifos(mnt, "f.txt", errno.EPERM)
    assert os.listdir(mnt) == ["f.txt"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["f.txt"]


def test_names_over_255_bytes_are_refused_as_too_long(s3, bucket, mount):
    """A name no directory entry can show is refused when it would be made (ENAMETOOLONG, as on a local disk),
    never written to S3 and then hidden from every listing; 255 bytes is fine."""
    mnt = mount(f"s3://{bucket}", "--posix-metadata")
    longest, too_long = "é" * 127 + "x", "é" * 128  # 255 and 256 bytes
    (mnt / longest).write_bytes(b"fits")
    (mnt / "keep.txt").write_bytes(b"keep")
    (mnt / "d").mkdir()
    attempts = {"create": lambda: (mnt / too_long).write_bytes(b"x"),
                "mkdir": lambda: (mnt / too_long).mkdir(),
                "rename": lambda: os.rename(mnt / "keep.txt", mnt / "d" / too_long),
                "symlink": lambda: os.symlink("keep.txt", mnt / too_long),
                "mkfifo": lambda: os.mkfifo(mnt / too_long)}
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as failure:
            attempt()
        assert failure.value.errno == errno.ENAMETOOLONG, what
    assert sorted(os.listdir(mnt)) == sorted(["d", "keep.txt", longest])
    assert (mnt / "keep.txt").read_bytes() == b"keep" and (mnt / longest).read_bytes() == b"fits"
    assert run_cli("umount", str(mnt)).returncode == 0
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"d/", "keep.txt", longest}


def test_a_streamed_file_truncated_at_once_leaves_no_upload_behind(s3, bucket, mount):
    """A file written in order has its parts sent while written; cut short at once (a part still in flight
    streams from the shorter file), its upload is aborted without waiting for a timeout, and an unmount right
    after leaves no multipart upload in S3."""
    mnt = mount(f"s3://{bucket}")
    data = os.urandom(20 << 20)  # two whole parts go while it is written
    started = time.monotonic()
    fd = os.open(mnt / "f.bin", os.O_CREAT | os.O_TRUNC | os.O_WRONLY)
    try:
        os.write(fd, data)
        os.ftruncate(fd, 5 << 20)
        os.write(fd, b"tail")
    finally:
        os.close(fd)
    assert run_cli("umount", str(mnt)).returncode == 0
    assert time.monotonic() - started < 30  # not a read timeout (60 s)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    landed = s3.get_object(Bucket=bucket, Key="f.bin")["Body"].read()
    assert landed == data[:5 << 20] + bytes(15 << 20) + b"tail"  # (written at the descriptor's offset)


def test_rmdir_of_a_directory_holding_only_keys_no_name_can_show_is_refused(s3, bucket, mount):
    """`x//y` makes `x` a directory that lists as empty: rmdir cannot empty it, so it says ENOTEMPTY rather
    than succeed and leave it there (`rm -rf` then reports it)."""
    s3.put_object(Bucket=bucket, Key="x//y", Body=b"d")
    s3.put_object(Bucket=bucket, Key="e/", Body=b"")
    mnt = mount(f"s3://{bucket}")
    assert os.listdir(mnt / "x") == []
    with pytest.raises(OSError) as failure:
        os.rmdir(mnt / "x")
    assert failure.value.errno == errno.ENOTEMPTY
    assert (mnt / "x").is_dir()
    os.rmdir(mnt / "e")  # an empty directory's marker still goes
    assert sorted(os.listdir(mnt)) == ["x"]


def test_writes_under_reserved_names_are_refused(bucket, mount):
    mnt = mount(f"s3://{bucket}")
    for path in (mnt / ".packages" / "x.txt", mnt / ".search" / "query" / "x.txt"):
        with pytest.raises(OSError) as failure:
            path.write_bytes(b"x")
        assert failure.value.errno == errno.EROFS


def test_failed_uploads_are_kept_reported_and_recovered(s3, bucket, s3_server, tmp_path):
    from faultproxy import FaultProxy
    from mounthelpers import force_unmount

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    denying = True
    deny = lambda method, path: denying and method == "PUT" and "/denied-" in path  # noqa: E731
    try:
        with FaultProxy(s3_server.endpoint_url, deny) as proxy:
            result = run_cli("mount", f"s3://{bucket}", str(mnt), "--endpoint-url", proxy.endpoint_url,
                             "--upload-attempts", "2")
            assert result.returncode == 0, result.stderr
            (mnt / "allowed.txt").write_bytes(b"fine")
            with open(mnt / "denied-sync.txt", "wb") as file:
                file.write(b"precious")
                file.flush()
                with pytest.raises(OSError) as failure:
                    os.fsync(file.fileno())
                assert failure.value.errno == errno.EIO
            (mnt / "denied-later.txt").write_bytes(b"also precious")
            wait_for(lambda: len(fresh_record(mnt)["failed_uploads"]) >= 1, timeout=30)
            record = mount_record(mnt)
            assert any(f["key"] == "denied-later.txt" and "denied" in f["error"].lower() for f in
                       record["failed_uploads"])
            assert record["upload_retries"] >= 1 and proxy.denied >= 2
            shown = run_cli("status").stdout
            assert re.search(r"  uploads:   \d+ pending, 1 done, [1-9]\d* retries, [12] failed, 0 stranded\n", shown)
            (failed,) = [item for item in record["failed_uploads"] if item["key"] == "denied-later.txt"]
            assert f"  failed:    denied-later.txt (staged at {failed['staged']}): {failed['error']}\n" in shown
            result = run_cli("umount", str(mnt))
            assert result.returncode == 1
            assert "denied-later.txt" in result.stderr and "still staged" in result.stderr
            assert "denied-later.txt" not in keys(s3, bucket)  # nothing partial or empty became visible
            assert body(s3, bucket, "allowed.txt") == b"fine"
            # The next mount of the same source (endpoint included), now allowed to write, uploads what was kept.
            denying = False
            result = run_cli("mount", f"s3://{bucket}", str(mnt), "--endpoint-url", proxy.endpoint_url)
            assert result.returncode == 0, result.stderr
            wait_for(lambda: {"denied-later.txt", "denied-sync.txt"} <= keys(s3, bucket))
            assert body(s3, bucket, "denied-later.txt") == b"also precious"
            assert body(s3, bucket, "denied-sync.txt") == b"precious"
            force_unmount(mnt)  # (before the proxy goes)
    finally:
        force_unmount(mnt)


def test_staging_disk_full_gives_enospc_and_uploads_nothing(s3, bucket, mount, tmp_path):
    cache = tmp_path / "tiny-cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(cache)], check=True)
    try:
        mnt = mount(f"s3://{bucket}", "--cache-dir", str(cache))
        result = subprocess.run(["dd", "if=/dev/zero", f"of={mnt / 'big.bin'}", "bs=1M", "count=5"],
                                capture_output=True, text=True)
        assert result.returncode != 0 and "No space left on device" in result.stderr
        (mnt / "small.txt").write_bytes(b"fits")
        unmount(mnt)
        assert "big.bin" not in keys(s3, bucket)  # never a silently truncated object
        assert body(s3, bucket, "small.txt") == b"fits"
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)


def test_two_writers_opening_an_object_at_once_both_keep_their_writes(s3, bucket, mount):
    """Opens for writing of one object at the same time share one staged file (the object's bytes are copied
    in once): with a staged copy each, the later open's replaced the other's and its writes were lost."""
    size = 30 << 20  # the copy-in at open takes a while: the other open comes meanwhile
    s3.put_object(Bucket=bucket, Key="shared.bin", Body=b"." * size)
    mnt = mount(f"s3://{bucket}")
    path = mnt / "shared.bin"
    assert path.stat().st_size == size
    barrier = threading.Barrier(2)

    def write(offset: int, data: bytes) -> None:
        barrier.wait()
        descriptor = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(descriptor, data, offset)
        finally:
            os.close(descriptor)

    writers = [threading.Thread(target=write, args=(0, b"AAAA")), threading.Thread(target=write, args=(100, b"BBBB"))]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    expected = b"AAAA" + b"." * 96 + b"BBBB"
    with open(path, "rb") as file:
        assert file.read(104) == expected
    unmount(mnt)
    stored = body(s3, bucket, "shared.bin")
    assert len(stored) == size and stored[:104] == expected


def test_appending_to_an_object_replaced_or_deleted_elsewhere_appends_to_what_is_there_now(s3, bucket, mount,
                                                                                          tmp_path):
    """An object another client replaced after the mount listed it: an append goes onto its new bytes (as a read
    opens the new version).  Deleted meanwhile: the kernel, which still knows the name, opens it without O_CREAT
    (ENOENT, and the name is forgotten, by the kernel within a second), so a later `>>` creates it.  A failed
    open leaves nothing staged."""
    s3.put_object(Bucket=bucket, Key="d/replaced.txt", Body=b"one\n")
    s3.put_object(Bucket=bucket, Key="d/deleted.txt", Body=b"one\n")
    cache = tmp_path / "cache"
    mnt = mount(f"s3://{bucket}", "--cache-dir", str(cache))
    assert sorted(os.listdir(mnt / "d")) == ["deleted.txt", "replaced.txt"]  # listed with their first ETags
    s3.put_object(Bucket=bucket, Key="d/replaced.txt", Body=b"two, from elsewhere\n")
    s3.delete_object(Bucket=bucket, Key="d/deleted.txt")
    with open(mnt / "d/replaced.txt", "a") as file:
        file.write("appended\n")
    started = time.monotonic()
    while True:
        try:
            with open(mnt / "d/deleted.txt", "a") as file:
                file.write("created\n")
            break
        except FileNotFoundError:
            # The kernel keeps the name for up to a second, the mount its absence as long (negative TTL).
            assert time.monotonic() - started < 5, "a deleted name could not be created again"
            time.sleep(0.2)
    assert (mnt / "d/replaced.txt").read_bytes() == b"two, from elsewhere\nappended\n"
    unmount(mnt)
    assert body(s3, bucket, "d/replaced.txt") == b"two, from elsewhere\nappended\n"
    assert body(s3, bucket, "d/deleted.txt") == b"created\n"
    assert os.listdir(cache / "staging" / "journal") == [] and os.listdir(cache / "staging" / "data") == []


def test_sync_on_close_and_plain_fusermount_finish_uploads(s3, bucket, mount):
    mnt = mount(f"s3://{bucket}", "--sync-on-close")
    (mnt / "synced.txt").write_bytes(b"on close")
    assert body(s3, bucket, "synced.txt") == b"on close"  # close returned: the object is there
    other = mount(f"s3://{bucket}/other/", "--cache-dir", str(mnt.parent / "cache-other"))
    pid = mount_record(other)["pid"]
    for i in range(40):
        (other / f"{i}.txt").write_bytes(b"x" * 1000)
    subprocess.run(["fusermount3", "-u", str(other)], check=True)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=60)  # the daemon drains, then exits
    assert {f"other/{i}.txt" for i in range(40)} <= keys(s3, bucket)


def test_quick_rewrites_and_deletes_never_resurrect_or_tear(s3, bucket, mount):
    """close(2) returns before FUSE's release: a file re-opened, appended to, read and deleted right after
    each close must never get two concurrent uploads (the older landing last: stale bytes, EIO on the next
    open, or a deleted object coming back)."""
    mnt = mount(f"s3://{bucket}")
    rng = random.Random(3)
    (mnt / "q").mkdir()
    kept = {}
    for i in range(40):
        path = mnt / "q" / f"f{i}.bin"
        path.write_bytes(rng.randbytes(1 << 20))
        data = rng.randbytes(1 << 20)
        path.write_bytes(data)
        with open(path, "ab") as file:
            file.write(b"tail")
        assert path.read_bytes() == data + b"tail"
        if i % 4:
            path.unlink()
        else:
            kept[f"q/{i}"] = data + b"tail"
    unmount(mnt)
    assert keys(s3, bucket) == {"q/"} | {f"q/f{key.split('/')[1]}.bin" for key in kept}
    for key, data in kept.items():
        assert body(s3, bucket, f"q/f{key.split('/')[1]}.bin") == data


def _uploads_in_progress(s3, bucket: str, key: str) -> list[int]:
    """Parts already in S3 of each multipart upload of `key` that is still in progress."""
    uploads = [u for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) if u["Key"] == key]
    return [len(s3.list_parts(Bucket=bucket, Key=key, UploadId=u["UploadId"]).get("Parts", [])) for u in uploads]


def test_an_upload_of_a_file_open_when_the_daemon_was_killed_is_aborted_by_the_next_mount(s3, bucket, mount,
                                                                                          s3_server):
    """kill -9 while a file written in order is open and two of its parts are in S3: the next mount keeps the
    file's bytes staged (it was never closed: not uploaded) and aborts the upload the killed daemon left."""
    mnt = mount(f"s3://{bucket}")
    pid = mount_record(mnt)["pid"]  # asked before the file is opened: a fork while it is open closes a copy of
    data = random.Random(3).randbytes(20 << 20)  # its descriptor (FUSE flush), and the file counts as closed
    with open(mnt / "open.bin", "wb", buffering=0) as file:
        file.write(data)
        wait_for(lambda: _uploads_in_progress(s3, bucket, "open.bin") == [2])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid))  # (a zombie not reaped yet counts: its FUSE connection is closed)
        with contextlib.suppress(OSError):
            file.close()
    assert _uploads_in_progress(s3, bucket, "open.bin") == [2]
    result = run_cli("mount", f"s3://{bucket}", str(mnt), "--endpoint-url", s3_server.endpoint_url)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: _uploads_in_progress(s3, bucket, "open.bin") == [])
    assert "open.bin" not in keys(s3, bucket)
    log = Path(mount_record(mnt)["log_file"])
    wait_for(lambda: "aborted the multipart upload of 'open.bin'" in log.read_text())  # logged once S3 answered
    assert "kept at" in log.read_text()
    (kept,) = [item["kept_at"] for item in mount_record(mnt)["stranded"]]
    assert Path(kept).read_bytes() == data[:len(Path(kept).read_bytes())]  # what had reached the daemon
    wait_for(lambda: not list((Path(kept).parents[2] / "staging" / "journal").iterdir()))  # its entry goes


def test_a_new_mount_drops_the_exit_report_its_recovery_supersedes(bucket, mount, tmp_path):
    """A daemon that exits on a signal leaves `umount` a report of what it did not upload.  The next mount of
    the same staging area recovers those files (uploads them, sets aside those left open), so the report is
    dropped then: otherwise a later `umount` after a crash of the new daemon would list them again.  A report
    about another staging area stays."""
    cache = tmp_path / "cache"
    left = {"failed_uploads": [{"key": "k", "staged": "/s/k", "error": "denied"}], "still_open": []}
    state.write_report(str(tmp_path / "mnt1"), {**left, "stranded_dir": str(cache / "stranded")})
    state.write_report(str(tmp_path / "mnt2"), {**left, "stranded_dir": str(tmp_path / "elsewhere")})
    assert mount(f"s3://{bucket}", "--cache-dir", str(cache)) == tmp_path / "mnt1"
    assert not os.path.exists(state.report_path(str(tmp_path / "mnt1")))
    assert mount(f"s3://{bucket}", "--cache-dir", str(tmp_path / "cache2")) == tmp_path / "mnt2"
    assert os.path.exists(state.report_path(str(tmp_path / "mnt2")))


def test_a_file_open_when_the_daemon_was_killed_is_set_aside_once_and_never_reported_as_pending(
        s3, bucket, mount, s3_server, tmp_path):
    """kill -9 while a file is open for writing: the next mount does not upload it (its bytes may be
    incomplete) but moves them out of the staging area to `CACHE/stranded/<time>/<key>`, says so once (mount's
    output, log, `status`), and drops its journal entry: no `umount` reports it as a pending upload, and the
    key can be written again through the mount like any other."""
    cache = tmp_path / "cache"
    mnt = mount(f"s3://{bucket}", "--cache-dir", str(cache))
    pid = mount_record(mnt)["pid"]  # asked before the file is opened (a fork would flush it: "closed")
    (mnt / "d").mkdir()
    with open(mnt / "d" / "half.txt", "wb", buffering=0) as file:
        file.write(b"half of it")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid))
        with contextlib.suppress(OSError):
            file.close()
    again = ("mount", f"s3://{bucket}", str(mnt), "--endpoint-url", s3_server.endpoint_url, "--cache-dir", str(cache))
    result = run_cli(*again)
    assert result.returncode == 0, result.stderr
    (kept,) = (cache / "stranded").glob("*/d/half.txt")
    assert kept.read_bytes() == b"half of it" and oct(kept.stat().st_mode & 0o777) == oct(0o600)
    assert str(cache / "stranded") in result.stderr and "1 file" in result.stderr
    assert mount_record(mnt)["stranded"] == [{"key": "d/half.txt", "kept_at": str(kept)}]
    shown = run_cli("status").stdout
    assert ", 1 stranded" in shown and f"  stranded:  d/half.txt: not uploaded, kept at {kept}\n" in shown
    assert os.listdir(cache / "staging" / "journal") == [] and os.listdir(cache / "staging" / "data") == []
    assert "d/half.txt" not in keys(s3, bucket)

    (mnt / "d" / "half.txt").write_bytes(b"written again, whole")
    result = run_cli("umount", str(mnt))
    assert (result.returncode, result.stderr) == (0, "")
    assert body(s3, bucket, "d/half.txt") == b"written again, whole"
    result = run_cli(*again)
    assert result.returncode == 0 and result.stderr == ""
    assert mount_record(mnt)["stranded"] == []
    result = run_cli("umount", str(mnt))
    assert (result.returncode, result.stderr) == (0, "")
    assert kept.read_bytes() == b"half of it"  # the user's to look at and remove


def test_an_upload_of_a_closed_file_cut_by_kill_9_is_aborted_and_sent_again(s3, bucket, mount,
                                                                            proxy):  # noqa: F811
    """A closed 20 MiB file (not written in order: sent whole after close) whose multipart upload is under way
    when the daemon is killed: the next mount aborts that upload and sends the file again, whole."""
    mnt = mount(f"s3://{bucket}", "--endpoint-url", proxy.endpoint_url)
    held = proxy.add(Fault.stall(method="PUT", path=f"/{bucket}/late.bin$"))
    data = random.Random(4).randbytes(20 << 20)
    with open(mnt / "late.bin", "wb", buffering=0) as file:
        file.seek(8 << 20)
        file.write(data[8 << 20:])
        file.seek(0)
        file.write(data[:8 << 20])
    proxy.wait_for_hits(held)  # the upload is created and its parts are held
    assert _uploads_in_progress(s3, bucket, "late.bin") == [0]
    kill_daemon(mnt)
    proxy.remove(held)
    result = run_cli("mount", f"s3://{bucket}", str(mnt), "--endpoint-url", proxy.endpoint_url)  # (the same endpoint)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: "late.bin" in keys(s3, bucket))
    assert body(s3, bucket, "late.bin") == data
    wait_for(lambda: _uploads_in_progress(s3, bucket, "late.bin") == [])


def test_both_uploads_a_killed_daemon_left_of_one_file_are_aborted_by_the_next_mount(s3, bucket, mount,
                                                                                      proxy):  # noqa: F811
    """A file written in order has two parts in S3 when it is rewritten at its start: its stream is dropped,
    and the abort of that upload is held; closed, it is sent whole, and that upload's parts are held.  kill -9
    then leaves two uploads of the file in S3: the next mount aborts both (the journal names each) and sends the
    file again."""
    mnt = mount(f"s3://{bucket}", "--endpoint-url", proxy.endpoint_url)
    key = "twice.bin"
    abort_held = proxy.add(Fault.stall(method="DELETE", path=f"/{bucket}/{key}$"))
    data = random.Random(5).randbytes(24 << 20)
    with open(mnt / key, "wb", buffering=0) as file:
        file.write(data[:16 << 20])
        wait_for(lambda: _uploads_in_progress(s3, bucket, key) == [2])
        parts_held = proxy.add(Fault.stall(method="PUT", path=f"/{bucket}/{key}$"))
        file.seek(0)
        file.write(data[:8 << 20])  # out of order: the stream is dropped
        file.seek(16 << 20)
        file.write(data[16 << 20:])
    proxy.wait_for_hits(abort_held)
    proxy.wait_for_hits(parts_held)  # the whole file's upload is created and its parts are held
    assert sorted(_uploads_in_progress(s3, bucket, key)) == [0, 2]
    kill_daemon(mnt)
    proxy.clear()
    result = run_cli("mount", f"s3://{bucket}", str(mnt), "--endpoint-url", proxy.endpoint_url)  # (the same endpoint)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: key in keys(s3, bucket))
    assert body(s3, bucket, key) == data
    wait_for(lambda: _uploads_in_progress(s3, bucket, key) == [])


def test_journal_entries_keep_the_older_form_while_a_file_has_one_upload(tmp_path):
    """An entry names one upload as older versions did (`upload`: [key, id] or null), which they can read;
    only two uploads under way at once need `uploads`.  Either form is read."""
    staging = StagingArea(str(tmp_path / "staging"))
    try:
        staged = staging.create("k.bin")
        entry = tmp_path / "staging" / "journal" / f"{staged.id}.json"
        fields = {"id", "key", "state", "error", "attempts", "meta", "upload"}  # an older version's StagedFile
        assert set(json.loads(entry.read_text())) == fields
        staging.note_upload(staged, "k.bin", "id-1")
        assert json.loads(entry.read_text())["upload"] == ["k.bin", "id-1"]
        (recovered,) = staging.recover()
        assert recovered.uploads == [["k.bin", "id-1"]]
        staging.note_upload(recovered, "k.bin", "id-2")
        written = json.loads(entry.read_text())
        assert written["uploads"] == [["k.bin", "id-1"], ["k.bin", "id-2"]] and written["upload"] is None
        (recovered,) = staging.recover()
        assert recovered.uploads == [["k.bin", "id-1"], ["k.bin", "id-2"]]
        staging.forget_upload(recovered, "id-1")
        back = json.loads(entry.read_text())
        assert set(back) == fields and back["upload"] == ["k.bin", "id-2"]
    finally:
        staging.close()


def test_set_aside_keeps_every_file_inside_its_directory_and_replaces_nothing(tmp_path):
    """A set-aside file is named by its key under the directory; one whose name is taken (the same key twice,
    a key that is a directory of another, or under another) or whose key is no plain relative path is named by
    its staged id: nothing is replaced and nothing lands outside the directory."""
    staging = StagingArea(str(tmp_path / "staging"))
    aside = tmp_path / "stranded" / "T"
    try:
        kept = {}
        for number, key in enumerate(["a/b.txt", "a/b.txt", "a", "a/b.txt/c", "../up.txt", "x/./y", ""]):
            staged = staging.create(key)
            Path(staging.data_path(staged)).write_bytes(f"bytes {number}".encode())
            kept[staged.id] = Path(staging.set_aside(staged, str(aside)))
        paths = list(kept.values())
        assert paths[0] == aside / "a" / "b.txt"
        assert [path.relative_to(aside).parts for path in paths[1:]] == [(id,) for id in list(kept)[1:]]
        assert [path.read_bytes() for path in paths] == [f"bytes {number}".encode() for number in range(7)]
        assert staging.recover() == [] and os.listdir(tmp_path / "staging" / "data") == []
    finally:
        staging.close()


def test_a_set_aside_file_keeps_its_entry_until_its_abandoned_uploads_are_aborted(tmp_path):
    """A file set aside while its entry names a multipart upload the killed daemon left: the entry stays
    (`set-aside`, without data) until that upload is aborted, by this mount or, if S3 refused, the next one."""
    staging = StagingArea(str(tmp_path / "staging"))
    try:
        staged = staging.create("k.bin")
        staging.note_upload(staged, "k.bin", "id-1")
        kept = staging.set_aside(staged, str(tmp_path / "stranded"))
        assert Path(kept).read_bytes() == b""
    finally:
        staging.close()
    staging = StagingArea(str(tmp_path / "staging"))  # the next mount: the abort failed
    try:
        (recovered,) = staging.recover()
        assert (recovered.state, recovered.uploads) == ("set-aside", [["k.bin", "id-1"]])
        staging.forget_upload(recovered, "id-1")  # aborted at last
        assert staging.recover() == [] and os.listdir(tmp_path / "staging" / "journal") == []
    finally:
        staging.close()


def test_sequential_writes_send_parts_before_close(s3, bucket, mount):
    """A file written in order from its start has its complete 8 MiB parts in S3 while it is still open;
    any other pattern (a seek back, a delete) drops them and leaves no upload behind."""
    mnt = mount(f"s3://{bucket}")
    data = random.Random(9).randbytes(40 << 20)
    with open(mnt / "seq.bin", "wb", buffering=0) as file:
        file.write(data[:32 << 20])
        wait_for(lambda: _uploads_in_progress(s3, bucket, "seq.bin") == [4])
        file.write(data[32 << 20:])
    wait_for(lambda: "seq.bin" in keys(s3, bucket))
    assert body(s3, bucket, "seq.bin") == data
    assert s3.head_object(Bucket=bucket, Key="seq.bin")["ETag"].endswith('-5"')
    assert fresh_record(mnt)["requests"]["totals"].get("put") == 1  # `status` counts a streamed upload too

    with open(mnt / "rewritten.bin", "wb", buffering=0) as file:
        file.write(data[:24 << 20])
        wait_for(lambda: _uploads_in_progress(s3, bucket, "rewritten.bin") == [3])
        file.seek(0)
        file.write(b"X" * 10)
    wait_for(lambda: "rewritten.bin" in keys(s3, bucket))
    assert body(s3, bucket, "rewritten.bin") == b"X" * 10 + data[10:24 << 20]
    wait_for(lambda: _uploads_in_progress(s3, bucket, "rewritten.bin") == [])

    with open(mnt / "gone.bin", "wb", buffering=0) as file:
        file.write(data[:16 << 20])
        wait_for(lambda: _uploads_in_progress(s3, bucket, "gone.bin") == [2])
        os.unlink(mnt / "gone.bin")
    wait_for(lambda: _uploads_in_progress(s3, bucket, "gone.bin") == [])
    unmount(mnt)
    assert "gone.bin" not in keys(s3, bucket)
