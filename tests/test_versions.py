"""Old versions of objects: `DIR/.versions/NAME/` and `mount --as-of`, on a versioned moto bucket."""

from __future__ import annotations

import errno
import itertools
import os
import re
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest

from mounthelpers import run_cli
from quiltmount.errors import StorageError
from quiltmount.fs.versions import version_file_name, versions_path
from quiltmount.storage.asof import AsOfStore
from quiltmount.storage.base import ObjectVersion, VersionPage
from quiltmount.storage.local import LocalStore
from quiltmount.storage.s3 import S3Store

KEY = "d/k.txt"
BODIES = [b"one", b"two 22", b"three 333"]
_names = itertools.count(1)


def _next_second() -> None:
    """Sleep into the next whole second: moto keeps LastModified to the second."""
    time.sleep(1.02 - time.time() % 1)


@pytest.fixture(scope="module")
def history(s3) -> dict:
    """A versioned bucket where `d/k.txt` was written three times, then deleted, each in its own second; its
    neighbours `d/other.txt`, `d/sub/x.txt` and `top.txt` were written once, with the first version."""
    bucket = f"versioned-{next(_names)}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for key in ("d/other.txt", "d/sub/x.txt", "top.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    for body in BODIES:
        s3.put_object(Bucket=bucket, Key=KEY, Body=body)
        _next_second()
    s3.delete_object(Bucket=bucket, Key=KEY)
    listing = s3.list_object_versions(Bucket=bucket, Prefix=KEY)
    versions = [item for item in listing["Versions"] if item["Key"] == KEY][::-1]  # oldest first
    assert [item["Size"] for item in versions] == [len(body) for body in BODIES]
    marker = listing["DeleteMarkers"][0]
    times = [item["LastModified"].timestamp() for item in (*versions, marker)]
    assert times == sorted(set(times)), "each write in its own second"
    return {"bucket": bucket, "versions": versions, "times": times}


def _erofs(call, *args) -> None:
    with pytest.raises(OSError) as caught:
        call(*args)
    assert caught.value.errno == errno.EROFS, caught.value


def test_versions_of_a_file(s3, history, mount):
    mnt = mount(f"s3://{history['bucket']}")
    versions = history["versions"]
    directory = mnt / "d" / ".versions" / "k.txt"

    # Hidden: no listing shows `.versions`, and a walk never enters it.
    assert sorted(os.listdir(mnt / "d")) == ["other.txt", "sub"]
    assert ".versions" not in os.listdir(mnt)
    found = subprocess.run(["find", str(mnt), "-type", "f"], capture_output=True, text=True, check=True).stdout
    assert ".versions" not in found
    # `DIR/.versions/` lists the files DIR holds now; the deleted one is still found.
    assert os.listdir(mnt / "d" / ".versions") == ["other.txt"]

    names = [f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(item['LastModified'].timestamp()))}-"
             f"{item['VersionId']}" for item in versions]
    assert sorted(os.listdir(directory)) == names
    newest_first = subprocess.run(["ls", "-t", str(directory)], capture_output=True, text=True, check=True)
    assert newest_first.stdout.split() == names[::-1]
    for name, item, body in zip(names, versions, BODIES):
        path = directory / name
        assert re.fullmatch(r"\d{8}T\d{6}Z-.+", name)
        assert path.stat().st_size == len(body) and path.stat().st_mtime == item["LastModified"].timestamp()
        assert path.read_bytes() == body
        assert os.getxattr(path, "user.quilt.version_id") == item["VersionId"].encode()
        assert os.getxattr(path, "user.quilt.etag") == item["ETag"].strip('"').encode()

    version = directory / names[0]
    _erofs(open, version, "wb")
    _erofs(open, directory / "new.txt", "wb")
    _erofs(os.unlink, version)
    _erofs(os.mkdir, directory / "sub")
    _erofs(os.rename, version, mnt / "d" / "restored.txt")
    _erofs(os.rename, mnt / "top.txt", directory / "top.txt")
    _erofs(os.link, mnt / "top.txt", directory / "linked.txt")  # (was EXDEV, as between the bucket and a view)
    _erofs(os.link, version, mnt / "d" / "linked.txt")
    with pytest.raises(FileNotFoundError):
        os.listdir(mnt / "d" / ".versions" / "never-written.txt")
    with pytest.raises(FileNotFoundError):
        os.listdir(mnt / "d" / ".versions" / "sub")  # a directory has no versions
    with pytest.raises(FileNotFoundError):
        os.stat(directory / "20000101T000000Z-nope")

    # `.versions` at the root, for a root-level file.
    (top,) = os.listdir(mnt / ".versions" / "top.txt")
    assert (mnt / ".versions" / "top.txt" / top).read_bytes() == b"top.txt"


def _iso(moment: float, hours: int = 0) -> str:
    """The moment in ISO 8601, in a time zone `hours` east of UTC."""
    return datetime.fromtimestamp(moment, timezone(timedelta(hours=hours))).isoformat()


def test_as_of_each_moment(history, mount):
    bucket, times = history["bucket"], history["times"]
    # Each moment spelt another way: Unix seconds, ISO 8601 with Z, with an offset, basic.
    spellings = [str(int(times[0])), _iso(times[1]).replace("+00:00", "Z"), _iso(times[2], hours=5),
                 time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(times[3]))]
    for index, moment in enumerate(spellings):
        mnt = mount(f"s3://{bucket}", "--as-of", moment)
        if index < len(BODIES):  # the version written at that moment: a moment includes its own second
            assert sorted(os.listdir(mnt / "d")) == ["k.txt", "other.txt", "sub"]
            assert (mnt / KEY).read_bytes() == BODIES[index]
            assert (mnt / KEY).stat().st_mtime == times[index]
            assert len(os.listdir(mnt / "d" / ".versions" / "k.txt")) == index + 1  # none after the moment
        else:  # deleted then
            assert sorted(os.listdir(mnt / "d")) == ["other.txt", "sub"]
            assert not (mnt / KEY).exists()
            assert len(os.listdir(mnt / "d" / ".versions" / "k.txt")) == len(BODIES)
        assert (mnt / "top.txt").read_bytes() == b"top.txt"
        _erofs(open, mnt / "d" / "other.txt", "ab")
        _erofs(open, mnt / "d" / "new.txt", "wb")
        _erofs(os.unlink, mnt / "top.txt")


def test_unversioned_bucket_shows_the_current_object(s3, bucket, mount):
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"current")
    mnt = mount(f"s3://{bucket}", "--read-only")
    (name,) = os.listdir(mnt / ".versions" / "a.txt")
    assert name.endswith("-null")
    assert (mnt / ".versions" / "a.txt" / name).read_bytes() == b"current"
    assert os.getxattr(mnt / ".versions" / "a.txt" / name, "user.quilt.version_id") == b"null"
    with pytest.raises(FileNotFoundError):
        os.listdir(mnt / ".versions" / "b.txt")


def test_as_of_refused(bucket, tmp_path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    bad = run_cli("mount", f"s3://{bucket}", str(mountpoint), "--as-of", "2026-12-07T03:15:00")
    assert bad.returncode == 2 and "give its time zone" in bad.stderr.splitlines()[-1], bad.stderr
    local = tmp_path / "local"
    local.mkdir()
    refused = run_cli("mount", str(local), str(mountpoint), "--as-of", "0")
    assert refused.returncode == 1 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "--as-of needs an S3 bucket" in refused.stderr


def test_names_and_paths():
    version = ObjectVersion("k", "3/L4k+q%x", 1796613302.0, False)
    assert version_file_name(version) == "20261207T031502Z-3%2FL4k+q%25x"
    assert versions_path("a/.versions/b.csv/X") == ("a", ["b.csv", "X"])
    assert versions_path(".versions") == ("", [])
    assert versions_path("a/x.versions/b") is None


def test_store_versions(history, s3_server):
    store = S3Store(history["bucket"], endpoint_url=s3_server.endpoint_url)
    try:
        found = store.object_versions(KEY)
        assert [(v.deleted, v.is_latest) for v in found] == [(True, True)] + [(False, False)] * 3
        assert [v.version_id for v in found[1:]] == [item["VersionId"] for item in history["versions"][::-1]]
        assert store.object_versions("d/k") == []  # a prefix of keys is no key
        past = AsOfStore(store, history["times"][1])
        assert past.head(KEY).version_id == history["versions"][1]["VersionId"]
        assert past.prefix_exists("d/sub/") and not past.prefix_exists("e/")
    finally:
        store.close()


class _Pages:
    """A store's version listing cut into given pages (S3 pages at 1,000 entries)."""

    name = cache_name = "s3://pages"
    remote = True

    def __init__(self, *pages: list[ObjectVersion]) -> None:
        self.pages = pages

    def list_versions(self, prefix: str):
        return iter([VersionPage(list(page)) for page in self.pages])


def test_as_of_a_key_whose_versions_span_two_pages():
    def version(key: str, mtime: float, **kw) -> ObjectVersion:
        return ObjectVersion(key, f"{key}@{mtime}", mtime, False, size=int(mtime), **kw)

    pages = _Pages([version("a", 3), version("a", 2)],
                   [version("a", 1), version("b", 2, deleted=True), version("b", 1)])
    shown = [info for page in AsOfStore(pages, 2.5).list_dir("") for info in page.objects]
    assert [(info.key, info.size) for info in shown] == [("a", 2)]  # not a's older version; b deleted by then
    shown = [info for page in AsOfStore(pages, 1.5).list_dir("") for info in page.objects]
    assert [(info.key, info.size) for info in shown] == [("a", 1), ("b", 1)]


def test_a_store_as_of_a_moment_refuses_every_write_with_erofs(tmp_path):
    """Whatever options a caller passes (metadata, an upload's `on_start`), a write to the past is EROFS."""
    past = AsOfStore(LocalStore(str(tmp_path)), 0.0)
    (tmp_path / "f").write_bytes(b"f")
    for write in (lambda: past.put_file("k", str(tmp_path / "f"), metadata={"a": "b"}, on_start=print),
                  lambda: past.put_object("k", b"x", metadata={"a": "b"}),
                  lambda: past.copy_object("f", "k", metadata={}),
                  lambda: past.delete_object("f")):
        with pytest.raises(StorageError) as refused:
            write()
        assert refused.value.errno == errno.EROFS
