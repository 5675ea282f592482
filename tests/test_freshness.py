"""Objects another S3 client creates, replaces or deletes, seen through a mount with real tools (`test`, `cat`,
`ls`, `stat`) run as subprocesses, against the real (moto) S3 server: issue #17's "Freshness"."""

from __future__ import annotations

import errno
import math
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from mounthelpers import fresh_record
from quiltmount.errors import NotFound
from quiltmount.fs.tree import BucketTree
from quiltmount.storage.counting import CountingStore
from quiltmount.storage.local import LocalStore

#: The default negative TTL, and a margin for the kernel and a busy test machine.
NEGATIVE_TTL = 1.0
SETTLE = 0.3


def run(*command: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], capture_output=True, timeout=60)


def exists(path: Path) -> bool:
    """`test -e PATH`, as a shell script asks it (a lookup by a new process)."""
    return run("test", "-e", path).returncode == 0


def cat(path: Path) -> bytes:
    result = run("cat", path)
    assert result.returncode == 0, result.stderr
    return result.stdout


def size_of(path: Path) -> int:
    return int(run("stat", "-c", "%s", path).stdout)


def requests(mnt: Path) -> dict[str, int]:
    return fresh_record(mnt)["requests"]["totals"]


def test_names_a_listing_lacks_are_asked_of_the_store_unless_found_missing_just_before(tmp_path):
    """The rule, on a clock of the test's own: a listed name is answered from the listing (for --metadata-ttl);
    a name the listing lacks is asked of the store (HEAD + LIST), whose answer joins the listing, unless the
    store said "not found" for that very name less than the negative TTL ago."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_bytes(b"a")
    now = [0.0]
    store = CountingStore(LocalStore(str(root)))
    tree = BucketTree(store, metadata_ttl=10, clock=lambda: now[0])

    def heads() -> int:
        return store.snapshot()["totals"].get("head", 0)

    assert list(tree.readdir("")) == ["a.txt"]
    (root / "new.txt").write_bytes(b"new")
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "f.txt").write_bytes(b"f")
    assert tree.lookup("new.txt").size == 3 and heads() == 1  # at once, however young the listing
    assert tree.lookup("new.txt").size == 3 and heads() == 1  # it joined the listing
    with pytest.raises(NotFound):
        tree.lookup("missing")
    (root / "missing").write_bytes(b"now here")
    now[0] = 0.9
    with pytest.raises(NotFound):
        tree.lookup("missing")  # the negative cache: that very name was found missing 0.9 s ago
    assert heads() == 2
    now[0] = 1.0
    assert tree.lookup("missing").size == 8 and heads() == 3
    assert tree.lookup("a.txt").size == 1 and heads() == 3  # listed names: the listing, for --metadata-ttl
    assert tree.lookup("d").is_dir
    assert store.snapshot()["totals"]["list"] == 1 + 4  # one listing, then a one-key LIST per lookup asked
    now[0] = 9.0
    assert sorted(tree.readdir("")) == ["a.txt", "d", "missing", "new.txt"]  # listed afresh: the listing is 9 s old
    assert store.snapshot()["totals"]["list"] == 1 + 4 + 1
    (root / "other.txt").write_bytes(b"o")
    now[0] = 9.5
    assert "other.txt" not in tree.readdir("")  # fetched 0.5 s ago: one `ls -l` or `find` lists once
    assert store.snapshot()["totals"]["list"] == 1 + 4 + 1
    now[0] = 10.0
    assert "other.txt" in tree.readdir("")  # fetched 1 s ago: listed afresh
    assert store.snapshot()["totals"]["list"] == 1 + 4 + 2


def test_a_directory_made_here_is_listed_afresh(tmp_path):
    """The empty listing a mkdir makes up answers for the names created here since, but it was never fetched:
    keys another client put under the new prefix show in the next readdir, and lookups of them ask S3."""
    root = tmp_path / "root"
    root.mkdir()
    now = [0.0]
    store = CountingStore(LocalStore(str(root)))
    tree = BucketTree(store, metadata_ttl=10, clock=lambda: now[0])
    tree.remember_new_dir("dir")
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "sub" / "file").write_bytes(b"x")
    (root / "dir" / "file").write_bytes(b"test\n")
    assert tree.lookup("dir/file").size == 5
    assert list(tree.readdir("dir")) == ["file", "sub"]
    assert list(tree.readdir("dir")) == ["file", "sub"]  # fetched just now: no second LIST
    assert store.snapshot()["totals"]["list"] == 1 + 1


def test_an_indefinite_metadata_ttl_never_lists_a_directory_again(tmp_path):
    """`--metadata-ttl indefinite` (a bucket that does not change): readdir answers from the listing for good;
    a name it lacks is still asked of the store, and joins it."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_bytes(b"a")
    now = [0.0]
    store = CountingStore(LocalStore(str(root)))
    tree = BucketTree(store, metadata_ttl=math.inf, clock=lambda: now[0])
    assert list(tree.readdir("")) == ["a.txt"]
    (root / "b.txt").write_bytes(b"b")
    now[0] = 1e6
    assert list(tree.readdir("")) == ["a.txt"]
    assert tree.lookup("b.txt").size == 1
    assert list(tree.readdir("")) == ["a.txt", "b.txt"]
    assert store.snapshot()["totals"]["list"] == 1 + 1


def test_an_object_created_elsewhere_appears_within_the_negative_ttl(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="d/old.txt", Body=b"old")
    mnt = mount(f"s3://{bucket}")
    assert os.listdir(mnt / "d") == ["old.txt"]
    assert not exists(mnt / "d/new.txt")  # asked of S3: "not found", trusted for the negative TTL
    s3.put_object(Bucket=bucket, Key="d/new.txt", Body=b"created elsewhere\n")
    time.sleep(NEGATIVE_TTL + SETTLE)
    assert exists(mnt / "d/new.txt")
    assert cat(mnt / "d/new.txt") == b"created elsewhere\n"
    assert sorted(os.listdir(mnt / "d")) == ["new.txt", "old.txt"]  # the lookup's answer joined the listing


def test_an_object_created_elsewhere_is_seen_at_once(s3, bucket, mount):
    """s3fs-fuse's test_read_external_object: a name never looked up is asked of S3, however young the
    listing; and s3fs's test_not_existed_dir_obj: a directory made here, keys put under new prefixes in it
    elsewhere, then `ls` at once shows them."""
    s3.put_object(Bucket=bucket, Key="d/old.txt", Body=b"old")
    mnt = mount(f"s3://{bucket}")
    assert os.listdir(mnt / "d") == ["old.txt"]
    s3.put_object(Bucket=bucket, Key="d/new.txt", Body=b"test\n")
    assert cat(mnt / "d/new.txt") == b"test\n"
    (mnt / "made").mkdir()
    s3.put_object(Bucket=bucket, Key="made/not_existed_dir_single/file", Body=b"a")
    s3.put_object(Bucket=bucket, Key="made/not_existed_dir_parent/not_existed_dir_child/file", Body=b"b")
    s3.put_object(Bucket=bucket, Key="made/file", Body=b"c")
    assert run("ls", "-1", mnt / "made").stdout == b"file\nnot_existed_dir_parent\nnot_existed_dir_single\n"
    assert run("ls", "-1", mnt / "made/not_existed_dir_parent").stdout == b"not_existed_dir_child\n"
    assert cat(mnt / "made/not_existed_dir_parent/not_existed_dir_child/file") == b"b"
    before = requests(mnt)
    time.sleep(NEGATIVE_TTL + SETTLE)
    s3.delete_object(Bucket=bucket, Key="d/old.txt")
    assert run("ls", "-1", mnt / "d").stdout == b"new.txt\n"  # listed afresh: deletions show too
    after = requests(mnt)
    assert after.get("list", 0) - before.get("list", 0) == 1, (before, after)


def test_an_object_replaced_elsewhere_is_read_anew_by_the_next_open(s3, bucket, mount, tmp_path):
    large_before = random.Random(1).randbytes(2 * 1024 * 1024 + 5)  # several blocks: the first is fetched at open
    bodies = {"grows.txt": (b"old\n", b"new new\n"), "shrinks.txt": (b"a longer old body\n", b"short\n"),
              "large.bin": (large_before, random.Random(2).randbytes(3 * 1024 * 1024 + 7)),
              "large-shrinks.bin": (large_before, b"tiny now\n")}
    for name, (before, _) in bodies.items():
        s3.put_object(Bucket=bucket, Key=f"r/{name}", Body=before)
    mnt = mount(f"s3://{bucket}")
    listing = run("ls", "-l", mnt / "r")  # the kernel and the daemon know every old size
    assert listing.returncode == 0 and str(len(large_before)).encode() in listing.stdout
    for name, (before, _) in bodies.items():
        assert size_of(mnt / "r" / name) == len(before)
    for name, (_, after) in bodies.items():
        s3.put_object(Bucket=bucket, Key=f"r/{name}", Body=after)
    for name, (_, after) in bodies.items():
        assert cat(mnt / "r" / name) == after, name  # right away: no EIO, not cut at the old size
        assert size_of(mnt / "r" / name) == len(after), name
    local = tmp_path / "large.bin"
    local.write_bytes(bodies["large.bin"][1])
    assert run("cmp", mnt / "r/large.bin", local).returncode == 0
    listed = run("ls", "-l", mnt / "r").stdout.decode()
    assert f" {len(bodies['grows.txt'][1])} " in listed and f" {len(bodies['large.bin'][1])} " in listed


def test_an_object_replaced_by_one_of_its_size_in_the_same_second_is_read_anew_after_the_ttl(s3, bucket, mount):
    """Same size, same LastModified (whole seconds): the kernel, which keeps a file's pages across opens while
    its size and mtime stay the same, must still be told once the listing shows another ETag."""
    mnt = mount(f"s3://{bucket}", "--metadata-ttl", "1")
    for attempt in range(5):  # until both writes fall in one second
        key = f"same-{attempt}.txt"
        s3.put_object(Bucket=bucket, Key=key, Body=b"AAAA")
        assert cat(mnt / key) == b"AAAA"  # its pages are in the kernel now
        s3.put_object(Bucket=bucket, Key=key, Body=b"BBBB")
        listed = {item["Key"]: item["LastModified"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]}
        if listed[key].timestamp() == os.stat(mnt / key).st_mtime:
            break
    else:
        pytest.skip("no two writes in one second")
    time.sleep(2.2)  # the listing, and the name, expire
    assert cat(mnt / key) == b"BBBB"
    assert cat(mnt / key) == b"BBBB"


def test_a_file_written_here_then_replaced_elsewhere(s3, bucket, mount):
    """s3fs-fuse's test_external_modification: written through the mount, then by another client."""
    mnt = mount(f"s3://{bucket}")
    (mnt / "w.txt").write_bytes(b"old\n")
    deadline = time.monotonic() + 10
    while "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="w.txt"):
        assert time.monotonic() < deadline, "the upload did not land"
        time.sleep(0.1)
    s3.put_object(Bucket=bucket, Key="w.txt", Body=b"new new\n")
    assert cat(mnt / "w.txt") == b"new new\n"


def test_in_a_versioned_bucket_a_replaced_object_is_read_anew_however_its_name_was_found(s3, bucket, mount):
    """A name found by HEAD (read before its directory was listed), a name listed and a file written here are
    all pinned by ETag, as listings give them: not by the version id S3 gives a HEAD or an upload, which
    would keep reading the old version of a replaced object until the metadata TTL."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=bucket, Key="d/headed.txt", Body=b"old\n")
    s3.put_object(Bucket=bucket, Key="e/listed.txt", Body=b"old\n")
    mnt = mount(f"s3://{bucket}")
    # Not read before they are replaced: bytes read stay cached for --metadata-ttl, as in mountpoint-s3.
    assert size_of(mnt / "d/headed.txt") == 4  # looked up by HEAD: `d` never listed
    assert os.listdir(mnt / "e") == ["listed.txt"] and size_of(mnt / "e/listed.txt") == 4
    (mnt / "written.txt").write_bytes(b"old\n")
    deadline = time.monotonic() + 10
    while "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="written.txt"):
        assert time.monotonic() < deadline, "the upload did not land"
        time.sleep(0.1)
    for key in ("d/headed.txt", "e/listed.txt", "written.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"new new\n")
    for key in ("d/headed.txt", "e/listed.txt", "written.txt"):
        assert cat(mnt / key) == b"new new\n", key


def test_an_open_file_keeps_its_version_and_the_next_open_reads_the_new_one(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="big.bin", Body=b"A" * (12 << 20))
    mnt = mount(f"s3://{bucket}")
    with open(mnt / "big.bin", "rb") as file:
        assert file.read(1 << 20) == b"A" * (1 << 20)
        s3.put_object(Bucket=bucket, Key="big.bin", Body=b"B" * (3 << 20))
        file.seek(10 << 20)
        with pytest.raises(OSError) as failure:  # bytes the open version no longer has: never a mix
            file.read(1 << 20)
        assert failure.value.errno == errno.EIO
    assert cat(mnt / "big.bin") == b"B" * (3 << 20)  # at once, not once the listing expires


def test_an_open_file_never_gets_the_pages_another_open_reads_of_a_newer_version(s3, bucket, mount):
    """The kernel keeps one page cache per file, whichever descriptor filled it: an open of the new version
    while one of the old version is still open must not put the new bytes where the old descriptor reads
    (that open bypasses the kernel's cache instead).  The old descriptor gets its own version or EIO."""
    size = 6 << 20
    old, new = random.Random(1).randbytes(size), random.Random(2).randbytes(size)
    s3.put_object(Bucket=bucket, Key="x.bin", Body=old)
    mnt = mount(f"s3://{bucket}", "--metadata-ttl", "1")
    first = os.open(mnt / "x.bin", os.O_RDONLY)
    try:
        assert os.pread(first, 1 << 20, 0) == old[:1 << 20]
        s3.put_object(Bucket=bucket, Key="x.bin", Body=new)
        time.sleep(2.2)  # the name expires: the next open finds the new version
        second = os.open(mnt / "x.bin", os.O_RDONLY)
        try:
            assert os.pread(second, size, 0) == new
            for offset in range(1 << 20, size, 1 << 20):
                try:
                    later = os.pread(first, 1 << 20, offset)
                except OSError as exc:
                    assert exc.errno == errno.EIO
                    continue
                assert later == old[offset:offset + (1 << 20)], f"bytes of the new version at {offset}"
            assert os.pread(second, 1 << 20, 2 << 20) == new[2 << 20:3 << 20]
        finally:
            os.close(second)
    finally:
        os.close(first)
    assert cat(mnt / "x.bin") == new and cat(mnt / "x.bin") == new


def test_an_object_deleted_elsewhere_is_gone_at_the_next_open(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="gone.txt", Body=b"soon gone")
    mnt = mount(f"s3://{bucket}")
    assert os.listdir(mnt) == ["gone.txt"]
    s3.delete_object(Bucket=bucket, Key="gone.txt")
    result = run("cat", mnt / "gone.txt")
    assert result.returncode != 0 and b"No such file" in result.stderr
    assert os.listdir(mnt) == []


def test_directories_implied_by_a_new_key_appear(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="a/x.txt", Body=b"x")
    mnt = mount(f"s3://{bucket}")
    assert os.listdir(mnt) == ["a"] and os.listdir(mnt / "a") == ["x.txt"]
    s3.put_object(Bucket=bucket, Key="a/b/c/file.txt", Body=b"deep\n")
    s3.put_object(Bucket=bucket, Key="new/top/file.txt", Body=b"top\n")
    # A lookup of the new name (stat, ls, cd, open) asks S3 at once, and the directory joins that listing;
    # a listing of the parent is made afresh anyway.
    assert run("ls", mnt / "a/b").stdout == b"c\n"
    assert sorted(os.listdir(mnt / "a")) == ["b", "x.txt"]
    assert cat(mnt / "new/top/file.txt") == b"top\n"
    assert sorted(os.listdir(mnt)) == ["a", "new"]


def test_negative_metadata_ttl_is_honoured_and_costs_no_head_within_it(s3, bucket, mount):
    mnt = mount(f"s3://{bucket}", "--negative-metadata-ttl", "2")
    os.listdir(mnt)
    before = requests(mnt)
    assert not exists(mnt / "later.txt")  # S3 asked: "not found"
    asked = time.monotonic()
    s3.put_object(Bucket=bucket, Key="later.txt", Body=b"later")
    for _ in range(5):
        assert not exists(mnt / "later.txt")  # that answer, trusted for 2 s
    time.sleep(max(0.0, asked + 1.5 - time.monotonic()))
    assert not exists(mnt / "later.txt")  # (the default, 1 s, would show it)
    time.sleep(max(0.0, asked + 2 + SETTLE - time.monotonic()))
    assert exists(mnt / "later.txt")
    after = requests(mnt)
    assert after.get("head", 0) - before.get("head", 0) == 2, (before, after)  # the first and the last lookup


def test_without_a_negative_ttl_every_lookup_of_a_missing_name_asks_s3(s3, bucket, mount):
    mnt = mount(f"s3://{bucket}", "--negative-metadata-ttl", "0")
    os.listdir(mnt)
    before = requests(mnt)
    for _ in range(3):
        assert not exists(mnt / "missing.txt")
    after = requests(mnt)
    assert after.get("head", 0) - before.get("head", 0) == 3, (before, after)


def test_ls_l_find_du_of_an_old_listing_make_no_head(s3, bucket, mount):
    for i in range(50):
        s3.put_object(Bucket=bucket, Key=f"many/f{i:02d}", Body=b"x" * i)
    mnt = mount(f"s3://{bucket}")
    os.listdir(mnt / "many")
    before = requests(mnt)  # the listing is older than the negative TTL from here on
    assert len(run("ls", "-l", mnt / "many").stdout.splitlines()) == 51
    assert len(run("find", mnt / "many", "-printf", "%s\n").stdout.split()) == 51
    assert run("du", "-s", mnt / "many").returncode == 0
    after = requests(mnt)
    assert after.get("head", 0) == before.get("head", 0), (before, after)


def test_paths_the_opener_forgets_have_their_kernel_pages_dropped(monkeypatch):
    """The opener remembers a bounded number of paths' objects: a path it forgets could be replaced unseen, so
    the kernel is told to drop its pages."""
    from quiltmount.fs import handles

    class Kernel:
        def __init__(self) -> None:
            self.dropped: list[str] = []

        def invalidate(self, path: str) -> None:
            raise AssertionError("not from an open")

        def invalidate_soon(self, path: str) -> None:
            self.dropped.append(path)

    monkeypatch.setattr(handles, "OPENED_OBJECTS_KEPT", 2)
    kernel = Kernel()
    opened = handles._OpenedObjects(kernel)
    for path in ("/a", "/b", "/a", "/c"):
        opened[path] = "etag"
    assert kernel.dropped == ["/b"] and sorted(opened) == ["/a", "/c"]
