"""Package drafts, continued: a daemon killed (`kill -9`) in the middle of a commit and remounted, drafts of a
package in an S3 registry edited with shell tools, `rsync` and pandas, a draft whose staged bytes vanished
behind the daemon's back, and commits of paths that are not drafts.

Everything is checked from the outside: the registry's objects with boto3 (through tests/faultproxy.py,
which also holds requests to catch a commit half-way and counts the uploads), revisions with the real quilt3.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import quiltmount
from faultproxy import Fault, FaultProxy
from mounthelpers import fresh_record, mount_record, run_cli
from quiltmount.errors import QuiltException
from quiltmount.state import pid_alive
from test_packages_mount import write_tree
from test_registry import _new_bucket, _patch_quilt3

NAME = "demo/pkg"
PARENT_FILES = {"README.md": b"# Demo\n", "data/hello.txt": b"hello world\n", "empty.txt": b"",
                "data/table.csv": b"a,b\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(300)),
                "blob.bin": os.urandom(5000)}


# -- helpers ---------------------------------------------------------------------------------------------------
@pytest.fixture
def q3(s3_server, monkeypatch: pytest.MonkeyPatch):
    """quilt3 talking to the test server (as tests/test_registry.py's fixture of that name)."""
    os.environ.setdefault("QUILT_DISABLE_USAGE_METRICS", "true")
    import quilt3  # after the isolated environment is in place: it reads XDG dirs at import

    _patch_quilt3(monkeypatch, quilt3, s3_server.endpoint_url)
    return quilt3


@pytest.fixture
def proxy(s3_server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy


def sh(command: str) -> None:
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (command, result.stderr)


def push(q3, bucket: str, tmp_path: Path, files: dict[str, bytes] = PARENT_FILES) -> str:
    """demo/pkg pushed by quilt3 into `bucket` (package meta, one entry with meta); its top hash."""
    src = write_tree(tmp_path / "parent-src", files)
    pkg = q3.Package().set_dir(".", str(src)).set_meta({"author": "Zoë"})
    pkg.set("data/hello.txt", str(src / "data/hello.txt"), meta={"lang": "en"})
    return pkg.push(NAME, registry=f"s3://{bucket}", message="first", force=True).top_hash


def commit(draft: Path, message: str, *extra: str) -> dict:
    result = run_cli("packages", "commit", str(draft), "-m", message, "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def start_commit(draft: Path, message: str) -> subprocess.Popen:
    """`quiltmount packages commit` in the background (it blocks in setxattr while the daemon commits)."""
    return subprocess.Popen([sys.executable, "-m", "quiltmount", "packages", "commit", str(draft), "-m", message],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def assert_failed(running: subprocess.Popen) -> None:
    """The backgrounded commit ended (the daemon died under it) with a one-line error, not a hang or a trace."""
    _, stderr = running.communicate(timeout=30)
    assert running.returncode == 1 and stderr.startswith("quiltmount: error: ") and stderr.count("\n") == 1, \
        stderr


def pointers(s3, bucket: str, name: str = NAME) -> dict[str, str]:
    """Every pointer of `name` in the bucket, read directly: pointer name -> top hash."""
    prefix = f".quilt/named_packages/{name}/"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {item["Key"][len(prefix):]: s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode().strip()
            for item in listed}


def manifests(s3, bucket: str) -> set[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=".quilt/packages/").get("Contents", [])
    return {item["Key"].rpartition("/")[2] for item in listed}


def assert_pointers_sound(q3, s3, bucket: str) -> dict[str, str]:
    """Every pointer names a manifest that exists and is whole: quilt3 browses it and its content hashes to the
    name (quilt3 computes `top_hash` from the entries it read)."""
    found = pointers(s3, bucket)
    stored = manifests(s3, bucket)
    for pointer, top_hash in found.items():
        assert top_hash in stored, f"pointer {pointer} names {top_hash}, which has no manifest"
        pkg = q3.Package.browse(NAME, registry=f"s3://{bucket}", top_hash=top_hash)
        assert pkg.top_hash == top_hash, f"pointer {pointer}: the manifest of {top_hash} is incomplete or altered"
    return found


def versions(s3, bucket: str, key: str) -> int:
    listed = s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])
    return sum(1 for version in listed if version["Key"] == key)


def wait_for(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill_daemon(mnt: Path) -> None:
    """kill -9 of the mount's daemon; returns once it is gone (the mount is left stale)."""
    pid = int(mount_record(mnt)["pid"])
    os.kill(pid, signal.SIGKILL)
    # exited (a zombie not reaped yet counts: its FUSE connection is closed)
    wait_for(lambda: not pid_alive(pid), 10, f"daemon {pid} to die")


def remount(mnt: Path, source: str, endpoint: str) -> None:
    """Mount `source` again on the stale mountpoint of a killed daemon (the mount command cleans it)."""
    result = run_cli("mount", source, str(mnt), "--endpoint-url", endpoint)
    assert result.returncode == 0, result.stderr


def tree_of(root: Path) -> dict[str, bytes]:
    """Every file under `root` (a draft, or a local directory): relative path -> bytes."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


def browse_files(q3, bucket: str, top_hash: str | None = None, name: str = NAME) -> dict[str, bytes]:
    pkg = q3.Package.browse(name, registry=f"s3://{bucket}", top_hash=top_hash)
    return {key: entry.get_bytes() for key, entry in pkg.walk()}


# -- 1. kill -9 during a commit ---------------------------------------------------------------------------------
def test_a_commit_killed_by_kill_9_at_each_step_finishes_when_run_again(q3, s3, proxy, mount, tmp_path: Path) -> None:
    """The daemon dies (kill -9) while the commit's uploads are in flight, then after the manifest is written
    (while the timestamp pointer is), then after the timestamp pointer (while `latest` is).  Each time no
    pointer names a missing or partial manifest, `latest` stays on the parent, and the draft survives the
    remount whole; the next run goes on without sending again the files that had landed, and the last one
    finishes the commit as the revision the first would have made."""
    bucket = _new_bucket(s3)
    parent = push(q3, bucket, tmp_path)
    before = pointers(s3, bucket)
    assert before["latest"] == parent and len(before) == 2
    source = f"s3://{bucket}"
    mnt = mount(source, "--endpoint-url", proxy.endpoint_url)
    draft = mnt / f".packages/{NAME}/draft"
    draft.mkdir()
    # New files of 1 KiB or more (all reusable once landed), a changed file, a deletion and a move.
    new = {f"new/{i}.bin": os.urandom(200_000 + i * 1000) for i in range(4)}
    new["new/held.bin"] = os.urandom(150_000)  # its upload is held by the proxy until the daemon is killed
    for key, data in new.items():
        (draft / key).parent.mkdir(parents=True, exist_ok=True)
        (draft / key).write_bytes(data)
    table = PARENT_FILES["data/table.csv"] + b"".join(b"%d,0\n" % i for i in range(300, 600))
    sh(f"cat {tmp_path}/parent-src/data/table.csv > {draft}/data/table.csv"
       f" && seq 300 599 | sed 's/$/,0/' >> {draft}/data/table.csv")
    sh(f"rm {draft}/empty.txt && mkdir {draft}/moved && mv {draft}/blob.bin {draft}/moved/blob.bin")
    expected = {"README.md": PARENT_FILES["README.md"], "data/hello.txt": PARENT_FILES["data/hello.txt"],
                "data/table.csv": table, "moved/blob.bin": PARENT_FILES["blob.bin"], **new}
    assert tree_of(draft) == expected
    diff = run_cli("packages", "diff", str(draft)).stdout.splitlines()
    assert diff == ["M  data/table.csv", "D  empty.txt", "R  blob.bin -> moved/blob.bin",
                    *(f"A  {key}" for key in sorted(new))]
    bucket_path = f"^/{bucket}/{NAME}/"

    try:
        # Run 1: killed while new/held.bin is being sent and the others have landed.
        held = proxy.add(Fault.stall(method="PUT", path=re.escape(f"/{bucket}/{NAME}/new/held.bin") + "$"))
        sent = proxy.add(Fault.latency(0, method="PUT", path=bucket_path))
        running = start_commit(draft, "killed and finished")
        proxy.wait_for_hits(held)
        # quilt3's push put the parent's files at demo/pkg/<key> too: data/table.csv gets a second version.
        landed = {**{key: 1 for key in new if key != "new/held.bin"}, "data/table.csv": 2}
        wait_for(lambda: all(versions(s3, bucket, f"{NAME}/{key}") == n for key, n in landed.items()), 30,
                 "the other uploads to land")
        kill_daemon(mnt)
        assert_failed(running)  # the command fails (the mount is gone), it does not hang
        proxy.remove(held)
        assert sent.hits == len(landed)
        assert versions(s3, bucket, f"{NAME}/new/held.bin") == 0
        assert manifests(s3, bucket) == {parent}  # no manifest was written
        assert assert_pointers_sound(q3, s3, bucket) == before  # latest still names the parent

        remount(mnt, source, proxy.endpoint_url)
        assert tree_of(draft) == expected  # the draft is whole: every change, the same bytes
        assert os.getxattr(draft, "user.quilt.parent").decode() == parent
        assert run_cli("packages", "diff", str(draft)).stdout.splitlines() == diff

        # Run 2: the files that landed are not sent again; killed once the manifest is written, while the
        # timestamp pointer is being written.
        proxy.remove(sent)
        sent = proxy.add(Fault.latency(0, method="PUT", path=bucket_path))
        held = proxy.add(Fault.stall(method="PUT", path=f"^/{bucket}/\\.quilt/named_packages/{NAME}/\\d+$"))
        manifest = proxy.add(Fault.latency(0, method="PUT", path=f"^/{bucket}/\\.quilt/packages/"))
        running = start_commit(draft, "killed and finished")
        proxy.wait_for_hits(held)
        assert manifest.hits == 1 and sent.hits == 1  # new/held.bin only
        kill_daemon(mnt)
        assert_failed(running)
        proxy.remove(held)
        orphans = manifests(s3, bucket) - {parent}
        assert len(orphans) == 1  # written whole, and named by no pointer
        orphan = orphans.pop()
        assert assert_pointers_sound(q3, s3, bucket) == before
        assert browse_files(q3, bucket, orphan) == expected

        remount(mnt, source, proxy.endpoint_url)
        assert tree_of(draft) == expected
        assert run_cli("packages", "diff", str(draft)).stdout.splitlines() == diff

        # Run 3: nothing sent again (every new file is 1 KiB or more), the same revision; killed after the
        # timestamp pointer, while `latest` is being written.
        proxy.remove(sent)
        sent = proxy.add(Fault.latency(0, method="PUT", path=bucket_path))
        held = proxy.add(Fault.stall(method="PUT", path=f"^/{bucket}/\\.quilt/named_packages/{NAME}/latest$"))
        running = start_commit(draft, "killed and finished")
        proxy.wait_for_hits(held)
        kill_daemon(mnt)
        assert_failed(running)
        proxy.remove(held)
        assert sent.hits == 0 and manifests(s3, bucket) == {parent, orphan}
        half = assert_pointers_sound(q3, s3, bucket)
        stamped = [p for p, h in half.items() if h == orphan]  # a timestamp pointer, whole, but not `latest`
        assert half["latest"] == parent and len(stamped) == 1 and stamped[0].isdigit()
        assert {p: h for p, h in half.items() if h == parent} == before

        remount(mnt, source, proxy.endpoint_url)
        assert tree_of(draft) == expected

        # Run 4 finishes it (`latest` still names the draft's parent: no conflict).
        proxy.remove(sent)
        sent = proxy.add(Fault.latency(0, method="PUT", path=bucket_path))
        done = commit(draft, "killed and finished")
        assert sent.hits == 0
        assert done["top_hash"] == orphan and done["package"] == NAME
    finally:
        proxy.clear()

    after = assert_pointers_sound(q3, s3, bucket)
    assert after == {**half, done["pointer"]: orphan, "latest": orphan}
    assert {key: versions(s3, bucket, f"{NAME}/{key}") for key in landed} == landed
    assert versions(s3, bucket, f"{NAME}/new/held.bin") == 1
    pkg = q3.Package.browse(NAME, registry=source)
    assert pkg.top_hash == orphan and pkg._meta["message"] == "killed and finished"
    assert browse_files(q3, bucket) == expected
    assert pkg["data/hello.txt"].meta == {"lang": "en"} and pkg.meta == {"author": "Zoë"}
    package = mnt / f".packages/{NAME}"
    assert os.readlink(package / "latest") == "@" + orphan
    assert os.readlink(package / done["pointer"]) == "@" + orphan
    assert os.getxattr(draft, "user.quilt.parent").decode() == orphan
    assert run_cli("packages", "diff", str(draft)).stdout == ""


def test_a_commit_is_shown_from_what_it_wrote_and_its_revision_indexed_from_the_parents_index(
        q3, s3, proxy, mount, tmp_path: Path) -> None:
    """Once committed, the package directory shows the new timestamp and `latest` without the registry being
    asked again (listing a package's pointers reads every one of them), and the commit's outcome is read from
    the draft without opening the new revision; the first look inside the draft opens it, with an index made
    from the parent's (a million entries would take seconds to download and index again): its manifest is
    never read."""
    bucket = _new_bucket(s3)
    parent = push(q3, bucket, tmp_path)
    mnt = mount(f"s3://{bucket}", "--endpoint-url", proxy.endpoint_url, "--metadata-ttl", "600")
    package = mnt / f".packages/{NAME}"
    draft = package / "draft"
    draft.mkdir()
    listed_before = set(os.listdir(package))  # the pointers, listed (and kept for the TTL)
    (draft / "new.txt").write_bytes(b"new\n")
    new_manifest_reads = proxy.add(Fault.latency(0, method="GET", path=f"^/{bucket}/\\.quilt/packages/(?!{parent})"))
    try:
        done = quiltmount.commit_draft(str(draft), "second")
        assert new_manifest_reads.hits == 0
        registry_reads = [proxy.add(Fault.latency(0, method="GET", path=f"^/{bucket}/?$")),  # LISTs
                          proxy.add(Fault.latency(0, path=f"^/{bucket}/\\.quilt/named_packages/"))]
        assert set(os.listdir(package)) == listed_before | {done["pointer"]}
        assert os.readlink(package / "latest") == os.readlink(package / done["pointer"]) == "@" + done["top_hash"]
        assert [fault.hits for fault in registry_reads] == [0, 0]
        assert new_manifest_reads.hits == 0
        assert (draft / "new.txt").read_bytes() == b"new\n"  # now a row of the new revision
        assert sorted(os.listdir(draft)) == sorted({key.split("/")[0] for key in PARENT_FILES} | {"new.txt"})
        assert (draft / "data/hello.txt").read_bytes() == PARENT_FILES["data/hello.txt"]
        assert json.loads(os.getxattr(draft / "data/hello.txt", "user.quilt.meta")) == {"user_meta": {"lang": "en"}}
        assert new_manifest_reads.hits == 0
    finally:
        proxy.clear()
    log = Path(mount_record(mnt)["log_file"]).read_text()
    assert f"indexed revision {done['top_hash']} from its parent's index: 6 entries" in log
    before = {pointer: parent for pointer in listed_before - {"draft"}}
    assert pointers(s3, bucket) == {**before, done["pointer"]: done["top_hash"], "latest": done["top_hash"]}

    # Two commits nobody looks into between (new user_meta only: the draft directory's attribute): the first
    # look after them makes both indexes, the older first, and reads neither manifest.
    committed = []
    for version in (2, 3):
        os.setxattr(draft, "user.quilt.user_meta", json.dumps({"v": version}).encode())
        committed.append(quiltmount.commit_draft(str(draft), f"user_meta {version}")["top_hash"])
    manifest_reads = [proxy.add(Fault.latency(0, method="GET", path=f"^/{bucket}/\\.quilt/packages/{top_hash}$"))
                      for top_hash in committed]
    try:
        assert (draft / "new.txt").read_bytes() == b"new\n"
        assert [fault.hits for fault in manifest_reads] == [0, 0]
    finally:
        proxy.clear()
    log = Path(mount_record(mnt)["log_file"]).read_text()
    assert all(f"indexed revision {top_hash} from its parent's index: 6 entries" in log for top_hash in committed)
    assert q3.Package.browse(NAME, registry=f"s3://{bucket}").meta == {"v": 3}


# -- 2. the mount walk on an S3 registry ------------------------------------------------------------------------
def test_edit_a_draft_of_an_s3_registry_with_shell_tools(q3, s3, mount, tmp_path: Path) -> None:
    """The walk of tests/test_drafts_mount.py on an S3 registry, checked with quilt3; then commits and diffs of
    paths that are not drafts."""
    bucket = _new_bucket(s3)
    parent = push(q3, bucket, tmp_path)
    registry = f"s3://{bucket}"
    mnt = mount(registry)
    package = mnt / f".packages/{NAME}"
    draft = package / "draft"
    sh(f"mkdir {draft}")
    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(300_000))
    for step in (f"echo changed > {draft}/README.md",  # new bytes, under 1 KiB
                 f"cp {local} {draft}/data/new.bin",  # a new file
                 f"rm {draft}/empty.txt",
                 f"mv {draft}/data/hello.txt {draft}/greeting.txt",  # a parent row moved: nothing copied
                 f"cp {draft}/blob.bin {draft}/blob-copy.bin",  # a parent file's bytes read and written back
                 f"echo 'x,y' >> {draft}/data/table.csv",  # appended to a copy of the parent's bytes
                 f"mv {draft}/data/new.bin {draft}/data/renamed.bin",  # staged bytes moved
                 f"setfattr -n user.quilt.meta -v '{{\"user_meta\": {{\"copy\": true}}}}' {draft}/blob-copy.bin",
                 f"setfattr -n user.quilt.user_meta -v '{{\"author\": \"Zoë\", \"v\": 2}}' {draft}"):
        sh(step)
    expected = {"README.md": b"changed\n", "blob.bin": PARENT_FILES["blob.bin"],
                "blob-copy.bin": PARENT_FILES["blob.bin"], "data/renamed.bin": local.read_bytes(),
                "data/table.csv": PARENT_FILES["data/table.csv"] + b"x,y\n",
                "greeting.txt": PARENT_FILES["data/hello.txt"]}
    assert tree_of(draft) == expected
    listing = subprocess.run(["ls", "-lR", str(draft)], capture_output=True, text=True, check=True).stdout
    assert re.search(rf"\b{len(expected['data/table.csv'])} .* table\.csv", listing), listing

    before = pointers(s3, bucket)
    assert sorted(os.listdir(package)) == sorted([*before, "draft"])
    done = commit(draft, "edited on S3")
    # The mount shows `latest` and the new timestamp at once (its listings are otherwise trusted 10 s).
    assert sorted(os.listdir(package)) == sorted([*before, done["pointer"], "draft"])
    assert os.readlink(package / "latest") == os.readlink(package / done["pointer"]) == "@" + done["top_hash"]
    assert (package / "latest/data/table.csv").read_bytes() == expected["data/table.csv"]
    after = {**before, done["pointer"]: done["top_hash"], "latest": done["top_hash"]}
    assert pointers(s3, bucket) == dict(q3.list_package_versions(NAME, registry=registry)) == after

    pkg = q3.Package.browse(NAME, registry=registry)
    assert pkg.top_hash == done["top_hash"] and pkg._meta["message"] == "edited on S3"
    assert pkg.meta == {"author": "Zoë", "v": 2}
    assert sorted(key for key, _ in pkg.walk()) == sorted(expected)
    old = q3.Package.browse(NAME, registry=registry, top_hash=parent)
    expected_dir = write_tree(tmp_path / "expected", expected)
    for key, data in expected.items():
        entry = pkg[key]
        assert entry.get_bytes() == data and entry.size == len(data), key
        alone = q3.Package().set(key, str(expected_dir / key))
        alone._calculate_missing_hashes()
        assert entry.hash == alone[key].hash, key  # quilt3's own hash of these bytes
    assert pkg["greeting.txt"].meta == {"lang": "en"} and pkg["blob-copy.bin"].meta == {"copy": True}
    assert pkg["data/table.csv"].meta == {} and pkg["README.md"].meta == {}
    # Unchanged and moved rows are the parent's (same physical keys); new bytes went to demo/pkg/<key>.
    assert pkg["blob.bin"].physical_key == old["blob.bin"].physical_key
    assert pkg["greeting.txt"].physical_key == old["data/hello.txt"].physical_key
    for key in ("README.md", "blob-copy.bin", "data/renamed.bin", "data/table.csv"):
        physical = pkg[key].physical_key
        assert (physical.bucket, physical.path) == (bucket, f"{NAME}/{key}") and physical.version_id, key

    # quilt3 computes the same top hash for the same edits made to the parent it browses.
    same = q3.Package.browse(NAME, registry=registry, top_hash=parent)
    same.set("greeting.txt", same["data/hello.txt"])
    for key in ("data/hello.txt", "empty.txt"):
        same.delete(key)
    for key in ("README.md", "data/table.csv", "data/renamed.bin"):
        same.set(key, str(expected_dir / key), meta=None)
    same.set("blob-copy.bin", str(expected_dir / "blob-copy.bin"), meta={"copy": True})
    same.set_meta({"author": "Zoë", "v": 2})
    same._set_commit_message("edited on S3")
    same._calculate_missing_hashes()
    assert same.top_hash == done["top_hash"]
    assert tree_of(draft) == expected and os.getxattr(draft, "user.quilt.parent").decode() == done["top_hash"]

    # Paths that are not drafts: refused in one line, nothing set on them, nothing published.
    s3.put_object(Bucket=bucket, Key="x/y/z/draft/f.txt", Body=b"a directory of the bucket named draft")
    fake = tmp_path / "elsewhere/.packages/demo/pkg/draft"  # the right shape, not in a mount
    fake.mkdir(parents=True)
    paths = (package / "latest", package / f"@{parent}", package / f"@{parent}/README.md", draft / "README.md",
             draft / "data", mnt / "x/y/z/draft", fake, mnt / ".packages/demo/nothing/draft", tmp_path / "draft")
    for path in paths:  # through the Python API (the command's own path, checked below for two of them)
        for call in (lambda: quiltmount.commit_draft(str(path), "no"), lambda: quiltmount.diff_draft(str(path))):
            with pytest.raises(QuiltException, match="not the draft of a package"):
                call()
    for path in (package / "latest", fake):
        for args in (["packages", "commit", str(path), "-m", "no"], ["packages", "diff", str(path)]):
            result = run_cli(*args)
            assert result.returncode == 1 and "not the draft of a package" in result.stderr \
                and result.stderr.count("\n") == 1, (args, result.stderr)
    assert os.listxattr(fake) == []
    sh(f"rm -r {draft}")  # a draft removed is not one any more
    result = run_cli("packages", "commit", str(draft), "-m", "no")
    assert result.returncode == 1 and "not the draft of a package" in result.stderr, result.stderr
    assert pointers(s3, bucket) == after and "draft" not in os.listdir(package)


# -- 3. rsync and pandas --------------------------------------------------------------------------------------
RSYNC_TEMP = re.compile(r"(^|/)\.[^/]+\.[A-Za-z0-9]{6}$|~tmp~")


def test_rsync_into_a_draft_twice(q3, s3, mount, tmp_path: Path) -> None:
    """`rsync -a` into a new package's draft, commit, change one source file, `rsync -a` again, commit: the
    revisions are exactly the source tree (none of rsync's temporary names), and the second differs from the
    first in that file only.  A draft does not store mtimes (docs/SEMANTICS.md), so the second rsync copies
    every file again (the sources' mtimes are set in the past to make that certain): the unchanged ones, 1 KiB
    or more, are found already in place and keep their rows."""
    bucket = _new_bucket(s3)
    registry = f"s3://{bucket}"
    mnt = mount(registry)
    draft = mnt / ".packages/team/synced/draft"
    sh(f"mkdir -p {draft}")
    files = {"a.txt": b"a\n", "data/b.csv": b"x,y\n" + b"1,2\n" * 600, "data/deep/c.bin": os.urandom(70_000),
             "data/deep/d.txt": b"d" * 1500, "e f.txt": b"space\n", ".hidden": b"a dot file of the source\n"}
    src = write_tree(tmp_path / "src", files)

    def sync(*options: str) -> list[str]:
        for key in files:
            os.utime(src / key, (1_600_000_000, 1_600_000_000))
        result = subprocess.run(["rsync", "-ai", *options, f"{src}/", f"{draft}/"], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        return sorted(line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith(">f"))

    assert sync() == sorted(files)
    assert tree_of(draft) == files
    first = commit(draft, "rsync 1")
    assert browse_files(q3, bucket, name="team/synced") == files

    (src / "data/b.csv").write_bytes(b"x,y\n" + b"3,4\n" * 700)
    files["data/b.csv"] = (src / "data/b.csv").read_bytes()
    assert "data/b.csv" in sync()
    assert tree_of(draft) == files
    second = commit(draft, "rsync 2")
    one = q3.Package.browse("team/synced", registry=registry, top_hash=first["top_hash"])
    two = q3.Package.browse("team/synced", registry=registry, top_hash=second["top_hash"])
    assert sorted(key for key, _ in two.walk()) == sorted(files)
    assert not [key for key, _ in two.walk() if RSYNC_TEMP.search(key)]
    assert {key: entry.get_bytes() for key, entry in two.walk()} == files
    changed = [key for key, entry in two.walk()
               if (entry.hash, entry.size, entry.meta) != (one[key].hash, one[key].size, one[key].meta)]
    assert changed == ["data/b.csv"]
    for key in ("data/deep/c.bin", "data/deep/d.txt"):  # 1 KiB or more: not sent again
        assert two[key].physical_key == one[key].physical_key, key
    # Compared by content, nothing differs: rsync -c writes nothing, and the draft has no changes.
    assert sync("-c") == []
    assert run_cli("packages", "diff", str(draft)).stdout == ""
    # (two commits in one second share a timestamp pointer, as quilt3's do)
    assert set(os.listdir(mnt / ".packages/team/synced")) == {first["pointer"], second["pointer"], "draft", "latest"}


def test_pandas_to_csv_in_a_draft(q3, s3, mount, tmp_path: Path) -> None:
    """`DataFrame.to_csv` into a draft (a new file, and a parent file rewritten), `read_csv` of it in the draft,
    and of the committed revision through quilt3."""
    pd = pytest.importorskip("pandas")
    bucket = _new_bucket(s3)
    parent = push(q3, bucket, tmp_path)
    mnt = mount(f"s3://{bucket}")
    draft = mnt / f".packages/{NAME}/draft"
    draft.mkdir()
    frame = pd.DataFrame({"id": range(2000), "name": [f"row {i} é" for i in range(2000)],
                          "value": [i / 7 for i in range(2000)]})
    frame.to_csv(draft / "x.csv", index=False)
    table = pd.read_csv(draft / "data/table.csv")  # a parent file, read lazily
    table["c"] = table["a"] + table["b"]
    table.to_csv(draft / "data/table.csv", index=False)  # replaced in place
    pd.testing.assert_frame_equal(pd.read_csv(draft / "x.csv"), frame)
    pd.testing.assert_frame_equal(pd.read_csv(draft / "data/table.csv"), table)
    done = commit(draft, "pandas")
    pkg = q3.Package.browse(NAME, registry=f"s3://{bucket}")
    assert pkg.top_hash == done["top_hash"] != parent
    pd.testing.assert_frame_equal(pd.read_csv(io.BytesIO(pkg["x.csv"].get_bytes())), frame)
    pd.testing.assert_frame_equal(pd.read_csv(io.BytesIO(pkg["data/table.csv"].get_bytes())), table)
    pd.testing.assert_frame_equal(pd.read_csv(draft / "x.csv"), frame)  # the draft now reads the revision


# -- 4. a draft whose files vanished; paths that are not drafts -----------------------------------------------
def _draft_with_vanished_bytes(q3, s3, mount, tmp_path: Path) -> tuple[str, str, Path, Path]:
    """A draft of demo/pkg (README.md changed, data/hello.txt removed, gone.bin added) whose staged bytes of
    gone.bin were deleted from the cache directory behind the daemon's back; (bucket, parent, mount, draft)."""
    bucket = _new_bucket(s3)
    parent = push(q3, bucket, tmp_path)
    mnt = mount(f"s3://{bucket}")
    draft = mnt / f".packages/{NAME}/draft"
    draft.mkdir()
    (draft / "gone.bin").write_bytes(os.urandom(3000))
    (draft / "README.md").write_bytes(b"kept\n")
    (draft / "data/hello.txt").unlink()
    staging = Path(mount_record(mnt)["cache_dir"]) / f"drafts/{NAME}/staging"
    journal = {json.loads(path.read_text())["key"]: path.stem for path in (staging / "journal").glob("*.json")}
    assert sorted(journal) == ["README.md", "gone.bin"]
    (staging / "data" / journal["gone.bin"]).unlink()
    return bucket, parent, mnt, draft


def test_a_draft_whose_staged_bytes_vanished(q3, s3, mount, tmp_path: Path) -> None:
    """The commit fails in one line and publishes nothing; the draft's other changes stay; a remount drops the
    file whose bytes are gone (the staging area's recovery) and the commit then goes through."""
    bucket, parent, mnt, draft = _draft_with_vanished_bytes(q3, s3, mount, tmp_path)
    before = pointers(s3, bucket)
    result = run_cli("packages", "commit", str(draft), "-m", "vanished")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, \
        result.stderr
    assert result.stderr.startswith("quiltmount: error: "), result.stderr
    with pytest.raises(QuiltException):
        quiltmount.commit_draft(str(draft), "vanished")
    assert pointers(s3, bucket) == before and manifests(s3, bucket) == {parent}
    assert os.getxattr(draft, "user.quilt.parent").decode() == parent
    assert (draft / "README.md").read_bytes() == b"kept\n"
    assert not (draft / "data/hello.txt").exists()
    assert (draft / "data/table.csv").read_bytes() == PARENT_FILES["data/table.csv"]
    diff = run_cli("packages", "diff", str(draft)).stdout.splitlines()
    assert "M  README.md" in diff and "D  data/hello.txt" in diff, diff

    assert run_cli("umount", str(mnt)).returncode == 0
    again = mount(f"s3://{bucket}")
    draft = again / f".packages/{NAME}/draft"
    expected = {"README.md": b"kept\n", "blob.bin": PARENT_FILES["blob.bin"], "empty.txt": b"",
                "data/table.csv": PARENT_FILES["data/table.csv"]}
    assert tree_of(draft) == expected
    done = commit(draft, "without the vanished file")
    assert browse_files(q3, bucket) == expected and done["top_hash"] != parent


def test_a_draft_with_vanished_bytes_still_lists_and_says_which_file(q3, s3, mount, tmp_path: Path) -> None:
    bucket, parent, mnt, draft = _draft_with_vanished_bytes(q3, s3, mount, tmp_path)
    listing = set(os.listdir(draft))
    assert {"README.md", "blob.bin", "data", "empty.txt"} <= listing, listing
    result = run_cli("packages", "commit", str(draft), "-m", "vanished")
    assert result.returncode == 1 and "gone.bin" in result.stderr, result.stderr
    (mnt / ".packages/team/other/draft").mkdir(parents=True)  # the status record keeps being written
    assert sorted(d["package"] for d in fresh_record(mnt)["drafts"]) == [NAME, "team/other"]
    assert (draft / "gone.bin").stat().st_size == 0  # shown empty, so that it can be removed
    with pytest.raises(OSError) as unreadable:
        (draft / "gone.bin").read_bytes()
    assert unreadable.value.errno == errno.EIO
    (draft / "gone.bin").unlink()  # what the commit's error says to do
    done = commit(draft, "without the vanished file")
    assert sorted(browse_files(q3, bucket, done["top_hash"])) == ["README.md", "blob.bin", "data/table.csv",
                                                                  "empty.txt"]
