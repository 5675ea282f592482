"""A new file written in order into a draft sends its parts to S3 while it is written, into a multipart upload
at the key the commit uploads it to, which only the commit completes; anything else that becomes of the file
drops the upload, and the commit sends the staged bytes whole.

Checked from the outside through real mounts: S3's multipart uploads and parts, and the objects, with boto3
(the uploads' parts counted by tests/faultproxy.py), the revisions with the real quilt3.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from faultproxy import Fault
from mounthelpers import run_cli
from test_drafts_more import (  # noqa: F401 (fixtures)
    NAME, browse_files, commit, kill_daemon, proxy, push, q3, remount, sh, wait_for,
)
from test_registry import _new_bucket

MIB = 1 << 20
#: Three parts of quilt3's 8 MiB chunks, the last one short: two sent while written, the third by the commit.
SIZE = 20 * MIB


def uploads(s3, bucket: str) -> dict[str, list[int]]:
    """The multipart uploads in progress in `bucket`: key -> the numbers of the parts it holds."""
    found = {}
    for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        parts = s3.list_parts(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts", [])
        found[upload["Key"]] = sorted(part["PartNumber"] for part in parts)
    return found


def exists(s3, bucket: str, key: str) -> bool:
    return bool([item for item in s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
                 if item["Key"] == key])


def random_file(path: Path, size: int = SIZE) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def quilt3_hash(quilt3, key: str, path: Path) -> str:
    alone = quilt3.Package().set(key, str(path))
    alone._calculate_missing_hashes()
    return alone[key].hash["value"]


def test_a_file_copied_into_a_draft_is_sent_while_written_and_lands_only_at_the_commit(
        q3, s3, proxy, mount, tmp_path: Path) -> None:  # noqa: F811
    """`cp` of a 20 MiB file into a draft of an unversioned registry: its two full parts are in S3 before the
    commit, in an upload at demo/pkg/<key> that is not an object yet (the parent's file at that key is
    untouched); the commit sends only the last part and completes the upload; quilt3 reads the bytes with
    its own hash."""
    bucket = _new_bucket(s3, versioned=False)
    parent = push(q3, bucket, tmp_path)
    mnt = mount(f"s3://{bucket}", "--endpoint-url", proxy.endpoint_url)
    draft = mnt / f".packages/{NAME}/draft"
    sh(f"mkdir {draft}")
    parts = proxy.add(Fault.latency(0, method="PUT", path=re.escape(f"/{bucket}/{NAME}/") + "(new|blob)"))
    new, replaced = tmp_path / "new.bin", tmp_path / "blob.bin"
    data = {"new/big.bin": random_file(new), "blob.bin": random_file(replaced, SIZE + 5)}
    sh(f"mkdir {draft}/new && cp {new} {draft}/new/big.bin && cp {replaced} {draft}/blob.bin")

    keys = {f"{NAME}/new/big.bin", f"{NAME}/blob.bin"}
    wait_for(lambda: uploads(s3, bucket) == {key: [1, 2] for key in keys}, 30, "two parts of each file in S3")
    assert parts.hits == 4
    assert not exists(s3, bucket, f"{NAME}/new/big.bin")  # nothing lands before the commit
    parent_blob = s3.get_object(Bucket=bucket, Key=f"{NAME}/blob.bin")["Body"].read()
    assert len(parent_blob) == 5000  # the parent's file, still at the key the new bytes will go to
    assert browse_files(q3, bucket)["blob.bin"] == parent_blob  # which the parent revision still reads

    done = commit(draft, "streamed")
    assert parts.hits == 6  # the last part of each: the others were sent before
    assert uploads(s3, bucket) == {}
    pkg = q3.Package.browse(NAME, registry=f"s3://{bucket}")
    assert pkg.top_hash == done["top_hash"] != parent
    for key, source in (("new/big.bin", new), ("blob.bin", replaced)):
        assert pkg[key].get_bytes() == data[key], key
        assert pkg[key].hash == {"type": "sha2-256-chunked", "value": quilt3_hash(q3, key, source)}, key
        assert pkg[key].physical_key.path == f"{NAME}/{key}"
    assert browse_files(q3, bucket, parent)["README.md"] == b"# Demo\n"


def test_a_file_not_written_in_order_once_is_sent_whole_by_the_commit(q3, s3, mount,  # noqa: F811
                                                                      tmp_path: Path) -> None:
    """Files copied into a draft, then rewritten out of order, truncated, appended to by a second open, renamed
    or deleted before the commit: each upload sent while they were written is aborted, the commit sends what
    is staged (the appended file goes on in order: its upload is used), and no upload is left behind."""
    bucket = _new_bucket(s3)
    push(q3, bucket, tmp_path)
    mnt = mount(f"s3://{bucket}")
    draft = mnt / f".packages/{NAME}/draft"
    sh(f"mkdir {draft}")
    source = tmp_path / "source.bin"
    data = random_file(source)
    names = ("rewritten", "truncated", "appended", "renamed", "deleted", "small")
    for name in names[:-1]:
        sh(f"cp {source} {draft}/{name}.bin")
    (draft / "small.bin").write_bytes(data[:MIB])  # under one part: nothing to stream
    wait_for(lambda: uploads(s3, bucket) == {f"{NAME}/{name}.bin": [1, 2] for name in names[:-1]}, 30,
             "two parts of each file in S3")

    sh(f"printf 'XYZ' | dd of={draft}/rewritten.bin bs=1 seek=100 conv=notrunc status=none")
    sh(f"truncate -s {10 * MIB} {draft}/truncated.bin")
    sh(f"head -c {4 * MIB} {source} >> {draft}/appended.bin")
    sh(f"mv {draft}/renamed.bin {draft}/moved.bin")
    sh(f"rm {draft}/deleted.bin")
    expected = {"rewritten.bin": data[:100] + b"XYZ" + data[103:], "truncated.bin": data[:10 * MIB],
                "appended.bin": data + data[:4 * MIB], "moved.bin": data, "small.bin": data[:MIB]}
    wait_for(lambda: uploads(s3, bucket) == {f"{NAME}/appended.bin": [1, 2, 3]}, 30,
             "the uploads of the others aborted")

    done = commit(draft, "rewritten")
    assert uploads(s3, bucket) == {}
    files = browse_files(q3, bucket, done["top_hash"])
    assert {key: files[key] for key in expected} == expected
    assert "renamed.bin" not in files and "deleted.bin" not in files
    for name in ("renamed", "deleted"):
        assert not exists(s3, bucket, f"{NAME}/{name}.bin"), name


def test_discarding_a_draft_or_unmounting_aborts_its_uploads(q3, s3, mount, tmp_path: Path) -> None:  # noqa: F811
    """`rm -r` of a draft aborts the uploads of its files; so does an unmount, after which the draft's file is
    still staged and the commit on a new mount sends it whole."""
    bucket = _new_bucket(s3)
    push(q3, bucket, tmp_path)
    source = tmp_path / "source.bin"
    data = random_file(source)
    mnt = mount(f"s3://{bucket}")
    discarded, kept = mnt / ".packages/demo/other/draft", mnt / f".packages/{NAME}/draft"
    sh(f"mkdir -p {discarded} {kept} && cp {source} {discarded}/a.bin && cp {source} {kept}/a.bin")
    both = {"demo/other/a.bin": [1, 2], f"{NAME}/a.bin": [1, 2]}
    wait_for(lambda: uploads(s3, bucket) == both, 30, "two parts of each file in S3")

    sh(f"rm -r {discarded}")  # rm unlinks the file (its upload is aborted in the background), then the draft
    wait_for(lambda: uploads(s3, bucket) == {f"{NAME}/a.bin": [1, 2]}, 10, "the discarded file's upload to go")
    assert run_cli("umount", str(mnt)).returncode == 0
    assert uploads(s3, bucket) == {}

    again = mount(f"s3://{bucket}")
    draft = again / f".packages/{NAME}/draft"
    assert (draft / "a.bin").read_bytes() == data
    done = commit(draft, "after a remount")
    assert browse_files(q3, bucket, done["top_hash"])["a.bin"] == data
    assert uploads(s3, bucket) == {} and not exists(s3, bucket, "demo/other/a.bin")



def test_an_upload_a_killed_daemon_left_is_aborted_by_the_next_mount(q3, s3, s3_server, mount,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    """kill -9 of the daemon once a draft's file has two parts in S3: its upload stays in S3, invisible, until
    the next mount of the source opens the draft and aborts it (the staged file's journal entry names it); the
    commit then sends the file whole and leaves no upload behind."""
    bucket = _new_bucket(s3)
    push(q3, bucket, tmp_path)
    source = tmp_path / "source.bin"
    data = random_file(source)
    mnt = mount(f"s3://{bucket}")
    draft = mnt / f".packages/{NAME}/draft"
    sh(f"mkdir {draft} && cp {source} {draft}/a.bin")
    wait_for(lambda: uploads(s3, bucket) == {f"{NAME}/a.bin": [1, 2]}, 30, "two parts in S3")
    kill_daemon(mnt)
    assert uploads(s3, bucket) == {f"{NAME}/a.bin": [1, 2]}  # what a killed daemon leaves: an unfinished upload

    remount(mnt, f"s3://{bucket}", s3_server.endpoint_url)
    assert (draft / "a.bin").read_bytes() == data
    wait_for(lambda: uploads(s3, bucket) == {}, 10, "the abandoned upload to be aborted")
    done = commit(draft, "after a crash")
    assert browse_files(q3, bucket, done["top_hash"])["a.bin"] == data
    assert uploads(s3, bucket) == {}
