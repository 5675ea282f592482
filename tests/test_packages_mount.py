"""Quilt packages through a real mount: revisions made by the real quilt3, read, inspected and deleted with
ordinary tools, and checked again with quilt3."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from mounthelpers import fresh_record, mount_record, run_cli
from quiltmount.packages import manifest as mf
from test_registry import q3, quilt3_module  # noqa: F401  (fixtures: quilt3 talking to the test server)

SOURCE_FILES = {"README.md": b"# Demo\n", "data/hello.txt": b"hello world\n", "data/ü nï+code#.csv": b"a,b\n1,2\n",
                "empty.txt": b"", "deep/a/b/c.bin": random.Random(5).randbytes(3 << 20)}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return root


@pytest.fixture
def pushed(q3, s3, tmp_path) -> tuple[str, dict[str, dict[str, bytes]]]:
    """A versioned bucket with two revisions of demo/pkg pushed by quilt3; returns (bucket, hash -> files)."""
    bucket = f"pkgs-{os.urandom(4).hex()}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    revisions = {}
    first = write_tree(tmp_path / "v1", SOURCE_FILES)
    pkg = q3.Package().set_dir(".", str(first), meta={"author": "Zoë"})
    pkg.set_meta({"author": "Zoë"})
    top1 = pkg.push("demo/pkg", registry=f"s3://{bucket}", message="first", force=True).top_hash
    revisions[top1] = dict(SOURCE_FILES)
    second_files = dict(SOURCE_FILES, **{"data/hello.txt": b"hello again\n", "new.txt": b"new"})
    second = write_tree(tmp_path / "v2", second_files)
    top2 = q3.Package().set_dir(".", str(second)).push("demo/pkg", registry=f"s3://{bucket}", message="second",
                                                        force=True).top_hash
    revisions[top2] = second_files
    return bucket, revisions


def test_revisions_read_like_the_source(q3, pushed, mount):
    bucket, revisions = pushed
    mnt = mount(f"s3://{bucket}")
    package = mnt / ".packages/demo/pkg"
    assert ".packages" not in os.listdir(mnt)
    versions = dict(q3.list_package_versions("demo/pkg", registry=f"s3://{bucket}"))
    assert sorted(os.listdir(package)) == sorted(versions)
    for pointer, top_hash in versions.items():
        assert os.readlink(package / pointer) == "@" + top_hash
        for key, data in revisions[top_hash].items():
            assert (package / pointer / key).read_bytes() == data, (pointer, key)
            assert (package / f"@{top_hash[:8]}" / key).stat().st_size == len(data)
    latest = versions["latest"]
    found = subprocess.run(["find", "-L", str(package / "latest"), "-type", "f"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert sorted(os.path.relpath(p, package / "latest") for p in found) == sorted(revisions[latest])
    not_followed = subprocess.run(["find", str(mnt / ".packages")], capture_output=True, text=True, check=True)
    assert "README.md" not in not_followed.stdout  # revisions are symlinks: find does not descend
    listing = subprocess.run(["ls", "-l", str(package)], capture_output=True, text=True, check=True).stdout
    assert f"latest -> @{latest}" in listing


def test_revisions_show_when_they_were_pushed(q3, pushed, mount, s3):
    """A revision's files and directories show its manifest's LastModified as mtime, the same after a remount
    (`rsync -a` and `make` from a revision see nothing changed); a timestamp pointer shows its own time."""
    bucket, revisions = pushed
    versions = dict(q3.list_package_versions("demo/pkg", registry=f"s3://{bucket}"))
    pushed_at = {top_hash: s3.head_object(Bucket=bucket, Key=f".quilt/packages/{top_hash}")["LastModified"].timestamp()
                 for top_hash in revisions}

    def times(mnt: Path) -> dict[str, float]:
        package = mnt / ".packages/demo/pkg"
        shown = {pointer: os.lstat(package / pointer).st_mtime for pointer in versions if pointer != "latest"}
        for top_hash, files in revisions.items():
            revision = package / f"@{top_hash}"
            shown[top_hash] = revision.stat().st_mtime
            shown.update({f"{top_hash}/{key}": (revision / key).stat().st_mtime for key in files})
            shown[f"{top_hash}/deep/a"] = (revision / "deep/a").stat().st_mtime
        return shown

    expected = {pointer: float(pointer) for pointer in versions if pointer != "latest"}
    for top_hash, files in revisions.items():
        expected.update({top_hash: pushed_at[top_hash], f"{top_hash}/deep/a": pushed_at[top_hash]})
        expected.update({f"{top_hash}/{key}": pushed_at[top_hash] for key in files})
    first = mount(f"s3://{bucket}")
    assert times(first) == expected
    assert run_cli("umount", str(first)).returncode == 0
    time.sleep(1.1)  # a time taken from the mount would now differ
    assert times(mount(f"s3://{bucket}")) == expected  # from the index the first mount built


def test_a_manifest_rewritten_under_the_same_top_hash_is_indexed_again(q3, s3, bucket, mount, tmp_path):
    """The top hash leaves physical keys out: quilt3 pushing the same content as another package rewrites the
    manifest with that package's keys.  An index of the first manifest, kept from an earlier mount, must not
    be used for the second (its files were read from the first package's keys: EIO once those are gone)."""
    source = write_tree(tmp_path / "src", {"f.txt": b"same content\n"})
    first = q3.Package().set_dir(".", str(source)).push("ns/a", registry=f"s3://{bucket}", message="m",
                                                           force=True).top_hash
    mnt = mount(f"s3://{bucket}", "--disk-cache-size", "0")
    assert (mnt / ".packages/ns/a/latest/f.txt").read_bytes() == b"same content\n"  # indexed
    assert run_cli("umount", str(mnt)).returncode == 0
    second = q3.Package().set_dir(".", str(source)).push("ns/b", registry=f"s3://{bucket}", message="m",
                                                            force=True).top_hash
    assert second == first
    s3.delete_object(Bucket=bucket, Key="ns/a/f.txt")
    again = mount(f"s3://{bucket}", "--disk-cache-size", "0")
    entry = q3.Package.browse("ns/b", registry=f"s3://{bucket}")["f.txt"]
    shown = again / ".packages/ns/b/latest/f.txt"
    assert os.getxattr(shown, "user.quilt.physical_key").decode() == str(entry.physical_key)
    assert shown.read_bytes() == b"same content\n"


def test_extended_attributes_match_the_manifest(q3, pushed, mount):
    bucket, revisions = pushed
    mnt = mount(f"s3://{bucket}")
    versions = dict(q3.list_package_versions("demo/pkg", registry=f"s3://{bucket}"))
    first = next(h for h in revisions if h != versions["latest"])
    package = q3.Package.browse("demo/pkg", registry=f"s3://{bucket}", top_hash=first)
    revision = mnt / f".packages/demo/pkg/@{first}"
    assert os.getxattr(revision, "user.quilt.top_hash").decode() == first
    assert os.getxattr(revision, "user.quilt.message").decode() == "first"
    assert json.loads(os.getxattr(revision, "user.quilt.user_meta")) == {"author": "Zoë"}
    for key, entry in package.walk():
        path = revision / key
        assert json.loads(os.getxattr(path, "user.quilt.hash")) == entry.hash
        assert os.getxattr(path, "user.quilt.physical_key").decode() == str(entry.physical_key)
        assert json.loads(os.getxattr(path, "user.quilt.meta")) == entry._meta
    pointers = json.loads(os.getxattr(mnt / ".packages/demo/pkg", "user.quilt.pointers"))
    assert pointers == versions
    dump = subprocess.run(["getfattr", "-d", str(revision / "README.md")], capture_output=True, text=True, check=True)
    assert "user.quilt.hash" in dump.stdout
    with pytest.raises(OSError) as failure:
        os.getxattr(revision / "README.md", "user.nothing")
    assert failure.value.errno == errno.ENODATA


def test_revisions_are_read_only(pushed, mount):
    bucket, _ = pushed
    mnt = mount(f"s3://{bucket}")
    latest = mnt / ".packages/demo/pkg/latest"
    for action in (lambda: (latest / "README.md").write_bytes(b"x"), lambda: (latest / "README.md").unlink(),
                   lambda: (latest / "new").mkdir(), lambda: (mnt / ".packages/demo/pkg/x").mkdir()):
        with pytest.raises(OSError) as failure:
            action()
        assert failure.value.errno == errno.EROFS
    (mnt / ".packages/demo/x").mkdir()  # room for a new package (its draft): gone again with rmdir
    (mnt / ".packages/demo/x").rmdir()
    assert "x" not in os.listdir(mnt / ".packages/demo")
    with pytest.raises(OSError) as failure:
        os.symlink("@" + "0" * 64, mnt / ".packages/demo/pkg/latest2")
    assert failure.value.errno == errno.EINVAL


def test_looking_up_a_package_path_does_not_list_the_registry(q3, pushed, mount, s3):
    """Once the cached listings expire, a lookup of a package file or pointer asks the registry about that
    name alone: no listing of every pointer (quilt3's list_packages), no read of every pointer of the package
    (what `ls` of it needs)."""
    bucket, revisions = pushed
    versions = dict(q3.list_package_versions("demo/pkg", registry=f"s3://{bucket}"))
    latest = versions["latest"]
    for number in range(30):  # more revisions of demo/pkg, and other packages
        s3.put_object(Bucket=bucket, Key=f".quilt/named_packages/demo/pkg/{1700000000 + number}",
                      Body=latest.encode())
        s3.put_object(Bucket=bucket, Key=f".quilt/named_packages/other/p{number}/latest", Body=latest.encode())
    mnt = mount(f"s3://{bucket}", "--metadata-ttl", "1")
    package = mnt / ".packages/demo/pkg"
    assert len(os.listdir(package)) == len(versions) + 30
    assert (package / "latest/README.md").read_bytes() == revisions[latest]["README.md"]
    time.sleep(1.5)  # every cached listing has expired
    before = fresh_record(mnt)["requests"]["totals"]
    assert os.readlink(package / "1700000007") == "@" + latest
    assert (package / "latest/README.md").read_bytes() == revisions[latest]["README.md"]
    assert (mnt / ".packages/other/p3").is_dir() and not (mnt / ".packages/other/p99").exists()
    after = fresh_record(mnt)["requests"]["totals"]
    spent = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in ("get", "list")}
    # gets: the two pointers read; lists: the package names of the two namespaces
    assert spent["get"] <= 2 and spent["list"] <= 2, spent


def test_rm_deletes_pointers_like_quilt3(q3, pushed, mount, s3):
    bucket, revisions = pushed
    mnt = mount(f"s3://{bucket}", "--metadata-ttl", "1")
    package = mnt / ".packages/demo/pkg"
    versions = dict(q3.list_package_versions("demo/pkg", registry=f"s3://{bucket}"))
    timestamps = sorted(p for p in versions if p != "latest")
    (package / "latest").unlink()  # = delete_package(top_hash=latest): latest moves to the older revision
    after = dict(q3.list_package_versions("demo/pkg", registry=f"s3://{bucket}"))
    assert after == {timestamps[0]: versions[timestamps[0]], "latest": versions[timestamps[0]]}
    assert sorted(os.listdir(package)) == sorted(after)

    old = versions["latest"]
    subprocess.run(["ln", "-sfn", f"@{old[:10]}", str(package / "latest")], check=True)  # quilt3's rollback
    assert dict(q3.list_package_versions("demo/pkg", registry=f"s3://{bucket}"))["latest"] == old
    assert os.readlink(package / "latest") == "@" + old

    subprocess.run(["rm", "-r", str(package)], check=True)
    assert list(q3.list_packages(f"s3://{bucket}")) == []
    keys = {obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert all(f".quilt/packages/{h}" in keys for h in revisions)  # manifests and data stay
    assert "demo/pkg/README.md" in keys
    assert not (mnt / ".packages/demo").exists() or os.listdir(mnt / ".packages/demo") == []


def test_rm_r_of_a_namespace_and_of_packages(q3, pushed, mount, s3):
    """`rm -r` of a namespace, or of `.packages`, deletes every package in it and succeeds: a namespace whose
    last package went stays (empty) until its own rmdir, as a package whose last pointer went does."""
    bucket, revisions = pushed
    registry = f"s3://{bucket}"
    latest = dict(q3.list_package_versions("demo/pkg", registry))["latest"]
    for name in ("demo/other", "team/a", "team/b"):
        s3.put_object(Bucket=bucket, Key=f".quilt/named_packages/{name}/latest", Body=latest.encode())
    mnt = mount(registry)
    removed = subprocess.run(["rm", "-r", str(mnt / ".packages/demo")], capture_output=True, text=True)
    assert (removed.returncode, removed.stderr) == (0, ""), removed.stderr
    assert list(q3.list_packages(registry)) == ["team/a", "team/b"]
    assert os.listdir(mnt / ".packages") == ["team"]
    removed = subprocess.run(["rm", "-r", str(mnt / ".packages")], capture_output=True, text=True)
    assert (removed.returncode, removed.stderr) == (0, ""), removed.stderr
    assert list(q3.list_packages(registry)) == []
    assert os.listdir(mnt / ".packages") == []  # the view stays, empty
    keys = {obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert all(f".quilt/packages/{h}" in keys for h in revisions)  # manifests stay


def test_rm_r_of_a_package_with_a_pointer_that_names_no_revision(q3, pushed, mount, s3):
    """A pointer holding no top hash is hidden, but it is still a pointer: quilt3 lists the package. `rm -r`
    deletes what it sees, as quilt3 would (deleting `latest` copies the greatest remaining pointer, here the
    bad one, into `latest`), then its rmdir fails with ENOTEMPTY, the pointers left named in the log."""
    bucket, _ = pushed
    registry = f"s3://{bucket}"
    s3.put_object(Bucket=bucket, Key=".quilt/named_packages/demo/pkg/1000000000", Body=b"not a hash")
    mnt = mount(registry)
    removed = subprocess.run(["rm", "-r", str(mnt / ".packages/demo/pkg")], capture_output=True, text=True)
    assert removed.returncode == 1 and "Directory not empty" in removed.stderr, removed.stderr
    left = dict(q3.list_package_versions("demo/pkg", registry))
    assert left == {"1000000000": "not a hash", "latest": "not a hash"}
    assert list(q3.list_packages(registry)) == ["demo/pkg"]
    assert os.listdir(mnt / ".packages/demo/pkg") == []  # what is left names no revision
    log = Path(mount_record(mnt)["log_file"]).read_text()
    assert "pointers that name no revision: '1000000000', 'latest' (ENOTEMPTY)" in log, log[-2000:]


def test_pointers_of_any_name_and_broken_pointers(q3, pushed, mount, s3, s3_server, monkeypatch):
    """A pointer named other than a timestamp or `latest` (a tag) is a pointer for quilt3: listed by the API,
    the CLI, the package directory and `user.quilt.pointers`, and mountable as `--package NAME:TAG`.  A pointer
    that holds no top hash is skipped with a warning, the others listed (quilt3 would hand back its text)."""
    bucket, revisions = pushed
    registry = f"s3://{bucket}"
    versions = dict(q3.list_package_versions("demo/pkg", registry))
    first = next(h for h in revisions if h != versions["latest"])
    prefix = ".quilt/named_packages/demo/pkg"
    s3.put_object(Bucket=bucket, Key=f"{prefix}/mytag", Body=first.encode())
    s3.put_object(Bucket=bucket, Key=f"{prefix}/draft", Body=first.encode())  # the draft's name in the mount
    theirs = list(q3.list_package_versions("demo/pkg", registry))
    assert ("mytag", first) in theirs
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    import quiltmount

    assert list(quiltmount.list_package_versions("demo/pkg", registry)) == theirs
    listed = run_cli("packages", "versions", "demo/pkg", "--registry", registry, "--json")
    assert json.loads(listed.stdout) == [{"pointer": p, "top_hash": h} for p, h in theirs]

    mnt = mount(registry)
    package = mnt / ".packages/demo/pkg"
    assert sorted(os.listdir(package)) == sorted([*versions, "mytag"])  # `draft` is hidden, and logged
    assert os.readlink(package / "mytag") == f"@{first}"
    assert (package / "mytag/data/hello.txt").read_bytes() == revisions[first]["data/hello.txt"]
    shown = {pointer: top_hash for pointer, top_hash in theirs if pointer != "draft"}
    assert json.loads(os.getxattr(package, "user.quilt.pointers")) == shown
    log = Path(mount_record(mnt)["log_file"]).read_text()
    assert "pointer 'draft' of demo/pkg" in log
    tagged = mount(registry, "--package", "demo/pkg:mytag")
    assert (tagged / "data/hello.txt").read_bytes() == revisions[first]["data/hello.txt"]

    s3.put_object(Bucket=bucket, Key=f"{prefix}/1000000000", Body=b"not a hash")
    with pytest.warns(UserWarning, match="pointer '1000000000' of package demo/pkg .* does not contain a top hash"):
        assert list(quiltmount.list_package_versions("demo/pkg", registry)) == theirs
    listed = run_cli("packages", "versions", "demo/pkg", "--registry", registry)
    assert listed.returncode == 0, listed.stderr
    assert "mytag" in listed.stdout and "1000000000" not in listed.stdout
    assert listed.stderr.startswith("quiltmount: warning: ") and "'1000000000'" in listed.stderr
    unused = mnt.parent / "unused"
    unused.mkdir()
    refused = run_cli("mount", registry, str(unused), "--endpoint-url", s3_server.endpoint_url,
                      "--package", "demo/pkg:1000000000")
    assert refused.returncode == 1 and "pointer '1000000000' of package demo/pkg holds no top hash" in \
        refused.stderr, refused.stderr


def test_single_package_mounts(q3, pushed, mount):
    bucket, revisions = pushed
    versions = dict(q3.list_package_versions("demo/pkg", registry=f"s3://{bucket}"))
    latest = versions["latest"]
    first = next(h for h in revisions if h != latest)
    mnt = mount(f"quilt+s3://{bucket}#package=demo/pkg")
    assert sorted(os.listdir(mnt)) == sorted({k.split("/")[0] for k in revisions[latest]})
    assert (mnt / "data/hello.txt").read_bytes() == revisions[latest]["data/hello.txt"]
    with pytest.raises(OSError) as failure:
        (mnt / "x").write_bytes(b"x")
    assert failure.value.errno == errno.EROFS
    old = mount(f"s3://{bucket}", "--package", f"demo/pkg@{first[:7]}")
    assert (old / "data/hello.txt").read_bytes() == b"hello world\n"
    assert not (old / "new.txt").exists()
    pointer = next(p for p, h in versions.items() if h == first)
    tagged = mount(f"quilt+s3://{bucket}#package=demo/pkg:{pointer}&catalog=catalog.example.com")  # as copied
    assert sorted(os.listdir(tagged)) == sorted(os.listdir(old))
    unused = old.parent / "unused"
    unused.mkdir()
    bad = run_cli("mount", f"quilt+s3://{bucket}#package=demo/nope", str(unused))
    assert bad.returncode == 1 and "package not found: demo/nope" in bad.stderr, bad.stderr
    bad = run_cli("mount", f"quilt+s3://{bucket}#package=demo/pkg@ffffff", str(unused))
    assert bad.returncode == 1 and "Found zero matches" in bad.stderr, bad.stderr


def test_local_registry_built_by_quilt3(q3, tmp_path, mount):
    src = write_tree(tmp_path / "src", {"a.txt": b"A", "sub/b.txt": b"B" * 1000})
    registry = tmp_path / "registry"
    top = q3.Package().set_dir(".", str(src)).build("team/local", registry=registry.as_uri(), message="m")
    mnt = mount(str(registry))
    assert sorted(os.listdir(mnt / ".packages/team/local")) == \
        sorted(os.listdir(registry / ".quilt/named_packages/team/local"))
    assert (mnt / ".packages/team/local/latest/sub/b.txt").read_bytes() == b"B" * 1000
    assert os.getxattr(mnt / ".packages/team/local/latest", "user.quilt.top_hash").decode() == top
    built_at = (registry / ".quilt/packages" / top).stat().st_mtime
    assert (mnt / ".packages/team/local/latest/sub/b.txt").stat().st_mtime == pytest.approx(built_at, abs=1e-3)
    one = mount(str(registry), "--package", "team/local")
    assert sorted(os.listdir(one)) == ["a.txt", "sub"]
    subprocess.run(["rm", str(mnt / ".packages/team/local/latest")], check=True)
    assert list(q3.list_packages(registry.as_uri())) == []
    assert (registry / ".quilt/packages" / top).exists()


def test_user_meta_is_what_quilt3s_package_meta_returns(q3, tmp_path, mount):
    """`user.quilt.user_meta` is quilt3's `Package.meta`: the header's `user_meta`, `{}` when the header has
    none (a package made with `set` alone), `null` when it holds null (`set_dir` and `quilt3 push` without
    `--meta` write it); so is a draft's, before and after a commit, and a new package's."""
    src = write_tree(tmp_path / "src", {"a.txt": b"a"})
    registry = tmp_path / "registry"
    q3.Package().set_dir(".", str(src)).set_meta({"k": 1}).build("meta/set", registry=registry.as_uri())
    q3.Package().set("a.txt", str(src / "a.txt")).build("meta/none", registry=registry.as_uri())
    q3.Package().set_dir(".", str(src)).build("meta/null", registry=registry.as_uri())
    mnt = mount(str(registry))
    for name in ("meta/set", "meta/none", "meta/null"):
        expected = q3.Package.browse(name, registry=registry.as_uri()).meta
        assert json.loads(os.getxattr(mnt / f".packages/{name}/latest", "user.quilt.user_meta")) == expected, name
        draft = mnt / f".packages/{name}/draft"
        draft.mkdir()
        assert json.loads(os.getxattr(draft, "user.quilt.user_meta")) == expected, name
    assert [q3.Package.browse(f"meta/{name}", registry=registry.as_uri()).meta for name in ("none", "null")] \
        == [{}, None]
    (mnt / ".packages/meta/none/draft/b.txt").write_bytes(b"b")
    run_cli("packages", "commit", str(mnt / ".packages/meta/none/draft"), "-m", "b").check_returncode()
    assert json.loads(os.getxattr(mnt / ".packages/meta/none/draft", "user.quilt.user_meta")) == {}
    new = mnt / ".packages/meta/new/draft"
    os.makedirs(new)
    assert json.loads(os.getxattr(new, "user.quilt.user_meta")) == q3.Package().meta == {}


def _write_package(store_client, bucket: str, name: str, files: dict[str, tuple[str, str, bytes]]) -> str:
    """A manifest written by quiltmount's own writer: logical key -> (bucket, key, bytes) already in S3."""
    entries = []
    for logical_key, (data_bucket, key, data) in files.items():
        version = store_client.head_object(Bucket=data_bucket, Key=key).get("VersionId")
        physical = mf.format_physical_key(mf.PhysicalKey("s3", data_bucket, key,
                                                         None if version in (None, "null") else version))
        entries.append(mf.Entry(logical_key, physical, len(data), "sha2-256-chunked",
                                mf.hash_bytes("sha2-256-chunked", data)))
    manifest = mf.Manifest({"version": "v0", "message": "by quiltmount"}, entries)
    top_hash = manifest.top_hash
    store_client.put_object(Bucket=bucket, Key=f".quilt/packages/{top_hash}", Body=mf.write_manifest(manifest))
    for pointer in ("1795424102", "latest"):
        store_client.put_object(Bucket=bucket, Key=f".quilt/named_packages/{name}/{pointer}", Body=top_hash.encode())
    return top_hash


def test_entries_in_other_buckets_large_entry_and_corruption(q3, s3, bucket, mount):
    other = f"data-{os.urandom(4).hex()}"
    s3.create_bucket(Bucket=other)
    big = random.Random(9).randbytes(66 * 1024 * 1024 + 5)
    s3.put_object(Bucket=other, Key="raw/big.bin", Body=big)
    s3.put_object(Bucket=other, Key="raw/small.txt", Body=b"small")
    s3.put_object(Bucket=other, Key="raw/tampered.txt", Body=b"original bytes")
    files = {"big.bin": (other, "raw/big.bin", big), "small.txt": (other, "raw/small.txt", b"small"),
             "tampered.txt": (other, "raw/tampered.txt", b"original bytes")}
    top_hash = _write_package(s3, bucket, "ext/pkg", files)
    # quilt3 reads what quiltmount wrote
    browsed = q3.Package.browse("ext/pkg", registry=f"s3://{bucket}")
    assert browsed.top_hash == top_hash and browsed["small.txt"].get_bytes() == b"small"
    s3.put_object(Bucket=other, Key="raw/tampered.txt", Body=b"tampered bytes")  # same size, other content

    mnt = mount(f"s3://{bucket}", "--memory-cache-size", "64M")
    latest = mnt / ".packages/ext/pkg/latest"
    digest = hashlib.sha256()
    with open(latest / "big.bin", "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(big).hexdigest()
    assert (latest / "small.txt").read_bytes() == b"small"
    with pytest.raises(OSError) as failure:
        (latest / "tampered.txt").read_bytes()
    assert failure.value.errno == errno.EIO
    result = subprocess.run(["cat", str(latest / "tampered.txt")], capture_output=True)
    assert result.returncode != 0
    log = Path(json.loads(run_cli("status", "--json").stdout)["mounts"][0]["log_file"]).read_text()
    assert "does not match the manifest hash" in log


def test_package_verbs_match_quilt3(q3, pushed, s3_server, monkeypatch):
    bucket, revisions = pushed
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    import quiltmount

    registry = f"s3://{bucket}"
    assert list(quiltmount.list_packages(registry)) == list(q3.list_packages(registry))
    assert list(quiltmount.list_package_versions("demo/pkg", registry)) == \
        list(q3.list_package_versions("demo/pkg", registry))
    listed = run_cli("packages", "list", registry, "--json")
    assert json.loads(listed.stdout) == ["demo/pkg"]
    versions = run_cli("packages", "versions", "demo/pkg", "--registry", registry)
    assert versions.returncode == 0 and "latest" in versions.stdout
    latest = dict(q3.list_package_versions("demo/pkg", registry))["latest"]
    deleted = run_cli("packages", "delete", "demo/pkg", "--registry", registry, "--top-hash", latest[:8])
    assert deleted.returncode == 0, deleted.stderr
    remaining = dict(q3.list_package_versions("demo/pkg", registry))
    assert latest not in remaining.values() and "latest" in remaining
    bad = run_cli("packages", "delete", "demo/pkg", "--registry", registry, "--top-hash", "zz")
    assert bad.returncode == 1 and "Invalid hash" in bad.stderr and "Traceback" not in bad.stderr
    quiltmount.delete_package("demo/pkg", registry)
    assert list(q3.list_packages(registry)) == []


def test_quickstart_example_is_a_registry_quilt3_reads(q3, tmp_path, mount):
    example = tmp_path / "example"
    script = Path(__file__).parent.parent / "scripts" / "make_example.py"
    subprocess.run([os.sys.executable, str(script), str(example)], check=True)
    mnt = mount(str(example))
    assert (mnt / "data/iris.csv").read_bytes() == (example / "data/iris.csv").read_bytes()
    package = mnt / ".packages/example/iris"
    assert sorted(os.listdir(package)) == ["1795424102", "1795424162", "latest"]
    browsed = q3.Package.browse("example/iris", registry=example.as_uri())
    assert os.readlink(package / "latest") == "@" + browsed.top_hash
    assert (package / "latest/data/notes.txt").read_bytes() == browsed["data/notes.txt"].get_bytes()
    assert (package / "1795424102/README.md").read_bytes() != (package / "latest/README.md").read_bytes()


def test_malformed_registry_content_fails_only_that_package(s3, bucket, mount):
    good = _write_package(s3, bucket, "ok/pkg", {})
    bad_manifest = b'{"version": "v0", "message": null}\n{"logical_key": "../escape", "physical_keys": ' \
                   b'["s3://x/y"], "size": 1, "hash": {"type": "SHA256", "value": "00"}, "meta": {}}\n'
    fake_hash = "ab" * 32
    s3.put_object(Bucket=bucket, Key=f".quilt/packages/{fake_hash}", Body=bad_manifest)
    s3.put_object(Bucket=bucket, Key=".quilt/named_packages/bad/manifest/latest", Body=fake_hash.encode())
    s3.put_object(Bucket=bucket, Key=".quilt/named_packages/bad/pointer/latest", Body=b"not a hash")
    s3.put_object(Bucket=bucket, Key=".quilt/named_packages/bad/missing/latest", Body=("cd" * 32).encode())
    mnt = mount(f"s3://{bucket}")
    packages = mnt / ".packages"
    assert os.listdir(packages / "ok/pkg/latest") == []
    assert os.getxattr(packages / "ok/pkg/latest", "user.quilt.top_hash").decode() == good
    assert os.listdir(packages / "bad/pointer") == []  # a pointer that is not a hash is left out (and logged)
    for path, expected in ((packages / "bad/manifest/latest", errno.EIO),
                           (packages / "bad/pointer/latest", errno.ENOENT),
                           (packages / "bad/missing/latest", errno.ENOENT)):
        with pytest.raises(OSError) as failure:
            os.listdir(path)
        assert failure.value.errno == expected, path
    assert os.listdir(packages / "ok/pkg/latest") == []  # the mount is still fine
