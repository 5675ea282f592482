"""s3fs-fuse's conventions a bucket mount follows in both modes (issue #17): Content-Type from the name
(uploads, renames, directory markers) and the user metadata a change of attributes leaves."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from quiltmount.posixmeta import AttrChange, PosixAttrs, changed, from_headers, merged_headers
from quiltmount.storage.base import content_type
from test_writes import keys, wait_for


def test_content_type_is_guessed_from_the_name_as_s3fs_does():
    assert content_type("d/test.txt") == "text/plain" and content_type("test.JPG") == "image/jpeg"
    assert content_type("test.bin") == "application/octet-stream" and content_type("noext") == "application/octet-stream"
    assert content_type("big-file.txt-copy") == "application/octet-stream"  # one dot: its extension only
    assert content_type("a.txt.unknownext") == "text/plain"  # the extension before an unknown one
    assert content_type("d.txt/x") == "application/octet-stream"  # the name only, not its directories
    assert content_type("dir/") == "application/x-directory"


def test_a_change_writes_only_what_changed_and_keeps_other_clients_metadata():
    headers = {"mode": str(stat.S_IFDIR | 0o755), "foreign": "keepme"}
    default = PosixAttrs(stat.S_IFDIR | 0o750, 0, 0, 5, 6, 7)
    before = from_headers(headers, default)
    chmod = AttrChange(mode=0o750)
    after = changed(before, chmod, 10**9)
    assert merged_headers(headers, before, after, chmod.written()) == \
        {"mode": str(stat.S_IFDIR | 0o750), "foreign": "keepme", "ctime": "1"}  # no mtime added
    same = AttrChange(uid=0)  # written even though unchanged
    assert merged_headers(headers, before, changed(before, same, 2 * 10**9), same.written())["uid"] == "0"
    tagged = changed(before, AttrChange(set_xattr=("user.k", b"v")), 3)
    assert "xattr" in merged_headers(headers, before, tagged)
    untagged = changed(tagged, AttrChange(remove_xattr="user.k"), 4)
    assert "xattr" not in merged_headers({**headers, "xattr": "x"}, tagged, untagged)


def test_uploads_and_renames_carry_the_content_type_of_their_name(s3, bucket, s3_server, tmp_path):
    from quiltmount.storage.s3 import S3Store

    store = S3Store(bucket, endpoint_url=s3_server.endpoint_url)
    store.max_single_copy, store.copy_part_size = 6 << 20, 5 << 20
    try:
        small, big = tmp_path / "small", tmp_path / "big"
        small.write_bytes(b"hello\n")
        big.write_bytes(b"x" * ((8 << 20) + 1))  # a multipart upload, and a multipart copy
        store.put_file("f.txt", str(small), metadata={"foreign": "keepme"})
        store.put_file("big.jpg", str(big))
        store.put_object("d/", b"")

        def head(key: str) -> dict:
            return s3.head_object(Bucket=bucket, Key=key)

        assert head("f.txt")["ContentType"] == "text/plain" and head("big.jpg")["ContentType"] == "image/jpeg"
        assert head("d/")["ContentType"] == "application/x-directory"
        store.copy_object("f.txt", "f.bin")  # a rename: the new name's type, the user metadata kept
        assert head("f.bin")["ContentType"] == "application/octet-stream"
        assert head("f.bin")["Metadata"] == {"foreign": "keepme"}
        store.copy_object("big.jpg", "big.txt")
        assert head("big.txt")["ContentType"] == "text/plain" and head("big.txt")["ContentLength"] == (8 << 20) + 1
        store.copy_object("f.txt", "f.txt", metadata={"mode": "33188"})  # onto itself: its type kept
        assert head("f.txt")["ContentType"] == "text/plain" and head("f.txt")["Metadata"] == {"mode": "33188"}
    finally:
        store.close()


def test_a_directory_is_renamed_in_place_with_its_childrens_metadata(s3, bucket, mount):
    """--posix-metadata renames a directory as s3fs does: each object copied server-side with its metadata (a
    child's ctime stays), the directory's marker with a new ctime, the old objects deleted."""
    kept = {"mode": str(stat.S_IFREG | 0o600), "ctime": "1000000000", "mtime": "1000000000", "foreign": "x"}
    s3.put_object(Bucket=bucket, Key="d/", Body=b"", Metadata={"mode": str(stat.S_IFDIR | 0o700), "ctime": "5"})
    s3.put_object(Bucket=bucket, Key="d/f.txt", Body=b"data", Metadata=kept)
    s3.put_object(Bucket=bucket, Key="d/sub/g.bin", Body=b"more", Metadata=kept)
    s3.put_object(Bucket=bucket, Key="full/h", Body=b"")
    mnt = mount(f"s3://{bucket}", "--posix-metadata")
    with pytest.raises(OSError) as into_itself:
        os.rename(mnt / "d", mnt / "d" / "sub" / "d")
    assert into_itself.value.errno == errno.EINVAL
    with pytest.raises(OSError) as onto_full:
        os.rename(mnt / "d", mnt / "full")
    assert onto_full.value.errno == errno.ENOTEMPTY
    os.rename(mnt / "d", mnt / "e")
    listed = sorted(obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert listed == ["e/", "e/f.txt", "e/sub/g.bin", "full/h"]
    assert s3.head_object(Bucket=bucket, Key="e/sub/g.bin")["Metadata"] == kept
    assert os.stat(mnt / "e" / "f.txt").st_ctime == 1_000_000_000 and (mnt / "e" / "f.txt").read_bytes() == b"data"
    assert stat.S_IMODE(os.stat(mnt / "e").st_mode) == 0o700 and os.stat(mnt / "e").st_ctime > 5
    assert not (mnt / "d").exists() and sorted(os.listdir(mnt / "e")) == ["f.txt", "sub"]
    (mnt / "e" / "new.txt").write_bytes(b"staged")  # may be staged still: then mv(1) gets EXDEV and copies
    try:
        os.rename(mnt / "e", mnt / "g")
    except OSError as exc:
        assert exc.errno == errno.EXDEV
    else:
        assert (mnt / "g" / "new.txt").read_bytes() == b"staged"


def test_a_renamed_file_keeps_other_clients_metadata(s3, bucket, mount):
    """--posix-metadata renames an object as s3fs does: its user metadata as a HEAD finds it (headers other
    clients set included, and what changed since the mount listed it), only the ctime new."""
    s3.put_object(Bucket=bucket, Key="f.txt", Body=b"data",
                  Metadata={"mode": str(stat.S_IFREG | 0o600), "mtime": "1000000000", "ctime": "1000000000"})
    mnt = mount(f"s3://{bucket}", "--posix-metadata")
    assert stat.S_IMODE(os.stat(mnt / "f.txt").st_mode) == 0o600  # listed, attributes read
    s3.copy_object(Bucket=bucket, Key="f.txt", CopySource={"Bucket": bucket, "Key": "f.txt"},
                   MetadataDirective="REPLACE", Metadata={"mode": str(stat.S_IFREG | 0o600), "mtime": "1000000000",
                                                          "ctime": "1000000000", "foreign": "keepme"})
    os.rename(mnt / "f.txt", mnt / "g.txt")
    metadata = s3.head_object(Bucket=bucket, Key="g.txt")["Metadata"]
    assert {name: metadata[name] for name in ("mode", "mtime", "foreign")} == {
        "mode": str(stat.S_IFREG | 0o600), "mtime": "1000000000", "foreign": "keepme"}
    assert float(metadata["ctime"]) > 1_000_000_000 and (mnt / "g.txt").read_bytes() == b"data"
    assert "f.txt" not in os.listdir(mnt)


def test_a_legacy_dir_object_is_a_directory_until_changed(s3, bucket, mount):
    """s3fs (before 1.63) and s3sync made directories as zero-byte objects `dir` with Content-Type
    application/x-directory: --posix-metadata shows them as directories; a chmod replaces one by `dir/`."""
    s3.put_object(Bucket=bucket, Key="old", Body=b"", ContentType="application/x-directory")
    s3.put_object(Bucket=bucket, Key="old2", Body=b"", ContentType="application/x-directory")
    mnt = mount(f"s3://{bucket}", "--posix-metadata")
    assert (mnt / "old").is_dir() and stat.S_IMODE(os.stat(mnt / "old").st_mode) == 0o750
    os.chmod(mnt / "old", 0o700)
    assert stat.S_IMODE(os.stat(mnt / "old").st_mode) == 0o700
    assert sorted(obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket)["Contents"]) == ["old/", "old2"]
    (mnt / "old" / "f").write_bytes(b"")
    os.unlink(mnt / "old" / "f")
    os.rmdir(mnt / "old")
    os.rmdir(mnt / "old2")  # never changed: the object itself goes
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


def test_renaming_a_directory_keeps_a_legacy_dir_object_in_it_a_directory(s3, bucket, mount):
    """The copy of a legacy `dir` object keeps its Content-Type, by which alone it is a directory (a renamed
    file gets its new name's)."""
    s3.put_object(Bucket=bucket, Key="d/olddir", Body=b"", ContentType="application/x-directory")
    s3.put_object(Bucket=bucket, Key="d/f.txt", Body=b"x", ContentType="application/x-test")
    mnt = mount(f"s3://{bucket}", "--posix-metadata", "--metadata-ttl", "0")
    assert (mnt / "d" / "olddir").is_dir()
    os.rename(mnt / "d", mnt / "e")
    assert s3.head_object(Bucket=bucket, Key="e/olddir")["ContentType"] == "application/x-directory"
    assert s3.head_object(Bucket=bucket, Key="e/f.txt")["ContentType"] == "text/plain"
    assert (mnt / "e" / "olddir").is_dir() and (mnt / "e" / "f.txt").read_bytes() == b"x"


def test_a_legacy_dir_object_is_renamed_whole(s3, bucket, mount):
    """mv of a legacy `dir` object leaves no `dir` behind: its `dir/` marker, with its mode, moves; a directory
    moved onto an empty one replaces it."""
    for key in ("old", "empty"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"", ContentType="application/x-directory",
                      Metadata={"mode": str(stat.S_IFDIR | 0o705)})
    s3.put_object(Bucket=bucket, Key="d/f.txt", Body=b"x")
    mnt = mount(f"s3://{bucket}", "--posix-metadata")
    assert (mnt / "old").is_dir() and (mnt / "empty").is_dir()
    os.rename(mnt / "old", mnt / "new")
    os.rename(mnt / "d", mnt / "empty")
    assert sorted(obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket)["Contents"]) == \
        ["empty/", "empty/f.txt", "new/"]
    assert s3.head_object(Bucket=bucket, Key="new/")["Metadata"]["mode"] == str(stat.S_IFDIR | 0o705)
    assert sorted(os.listdir(mnt)) == ["empty", "new"] and stat.S_IMODE(os.stat(mnt / "new").st_mode) == 0o705


def test_entries_are_created_in_a_legacy_dir_object(s3, bucket, mount):
    """A file, directory, symlink, FIFO or moved file in a legacy `dir` object: it is first replaced by its
    `dir/` marker (its attributes kept), which keys under it would otherwise hide."""
    s3.put_object(Bucket=bucket, Key="old", Body=b"", ContentType="application/x-directory",
                  Metadata={"mode": str(stat.S_IFDIR | 0o755), "uid": "7"})
    s3.put_object(Bucket=bucket, Key="plain.txt", Body=b"plain")
    mnt = mount(f"s3://{bucket}", "--posix-metadata")
    assert (mnt / "old").is_dir()
    (mnt / "old" / "new.txt").write_bytes(b"new")
    os.mkdir(mnt / "old" / "sub")
    os.symlink("new.txt", mnt / "old" / "link")
    os.mkfifo(mnt / "old" / "fifo")
    os.rename(mnt / "plain.txt", mnt / "old" / "plain.txt")
    assert sorted(os.listdir(mnt / "old")) == ["fifo", "link", "new.txt", "plain.txt", "sub"]
    assert (mnt / "old" / "new.txt").read_bytes() == b"new" and os.readlink(mnt / "old" / "link") == "new.txt"
    wait_for(lambda: "old/new.txt" in keys(s3, bucket))
    assert "old" not in keys(s3, bucket) and os.stat(mnt / "old").st_uid == 7
    assert stat.S_IMODE(os.stat(mnt / "old").st_mode) == 0o755
    marker = s3.head_object(Bucket=bucket, Key="old/")["Metadata"]
    assert (marker["mode"], marker["uid"]) == (str(stat.S_IFDIR | 0o755), "7")
