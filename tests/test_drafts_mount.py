"""Package drafts through a real mount: opened with mkdir, edited with ordinary tools, committed with the
command, and the result read back with the real quilt3."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

import quiltmount

from mounthelpers import fresh_record, mount_record, refuse_links_and_fifos, run_cli
from test_packages_mount import write_tree
from test_registry import q3, quilt3_module  # noqa: F401  (fixtures: quilt3 talking to the test server)

FILES = {"README.md": b"# Demo\n", "data/hello.txt": b"hello world\n", "empty.txt": b"",
         "data-raw.csv": b"a,b\n1,2\n"}


def sh(command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, **kwargs)


@pytest.fixture
def local_package(q3, tmp_path: Path) -> tuple[Path, str]:
    """A local registry with demo/pkg built by quilt3; (registry root, top hash)."""
    src = write_tree(tmp_path / "src", FILES)
    registry = tmp_path / "registry"
    pkg = q3.Package().set_dir(".", str(src)).set_meta({"author": "Zoë"})
    return registry, pkg.build("demo/pkg", registry=registry.as_uri(), message="first")


def test_edit_a_draft_with_shell_tools_and_commit_it(q3, local_package, mount, tmp_path: Path) -> None:
    registry, parent = local_package
    mnt = mount(str(registry))
    package = mnt / ".packages/demo/pkg"
    draft = package / "draft"
    subprocess.run(["mkdir", str(draft)], check=True)
    assert "draft" in os.listdir(package) and draft.is_dir() and not draft.is_symlink()
    assert os.getxattr(draft, "user.quilt.parent").decode() == parent
    assert json.loads(os.getxattr(draft, "user.quilt.user_meta")) == {"author": "Zoë"}
    assert (draft / "data/hello.txt").read_bytes() == b"hello world\n"  # the parent's bytes, read lazily
    assert sorted(os.listdir(draft)) == ["README.md", "data", "data-raw.csv", "empty.txt"]

    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(5000))
    steps = [f"echo changed > {draft}/README.md", f"cp {local} {draft}/new.bin", f"rm {draft}/empty.txt",
             f"mv {draft}/data/hello.txt {draft}/greeting.txt", f"mkdir {draft}/more",
             f"printf 'x' > {draft}/more/x.txt", f"echo '3,4' >> {draft}/data-raw.csv"]
    for step in steps:
        result = sh(step)
        assert result.returncode == 0, (step, result.stderr)
    os.setxattr(draft / "greeting.txt", "user.quilt.meta", json.dumps({"user_meta": {"moved": True}}).encode())
    with pytest.raises(OSError) as bad:
        os.setxattr(draft / "greeting.txt", "user.quilt.meta", b"{not json")
    assert bad.value.errno == errno.EINVAL
    # A package holds files and directories only: links and FIFOs are refused as a filesystem without them
    # refuses them (symlink(2), mknod(2): EPERM; hard links: ENOTSUP, as in the bucket), not as read-only.
    refuse_links_and_fifos(draft, "README.md", errno.EPERM)
    assert sorted(os.listdir(draft)) == ["README.md", "data", "data-raw.csv", "greeting.txt", "more", "new.bin"]
    assert os.listdir(draft / "data") == []  # emptied, still there until rmdir
    assert (draft / "data-raw.csv").read_bytes() == b"a,b\n1,2\n3,4\n"  # appended to a copy of the parent's
    diff = run_cli("packages", "diff", str(draft))
    assert diff.returncode == 0, diff.stderr
    assert diff.stdout.splitlines() == ["M  README.md", "M  data-raw.csv", "D  empty.txt",
                                        "R  data/hello.txt -> greeting.txt", "A  more/x.txt", "A  new.bin"]
    record = fresh_record(mnt)
    assert record["drafts"][0]["package"] == "demo/pkg" and record["drafts"][0]["files_written"] == 4

    result = run_cli("packages", "commit", str(draft), "-m", "edit with shell tools")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("demo/pkg@") and " committed as " in result.stdout, result.stdout
    pkg = q3.Package.browse("demo/pkg", registry=registry.as_uri())
    assert result.stdout.startswith(f"demo/pkg@{pkg.top_hash[:7]} ")
    expected = {"README.md": b"changed\n", "data-raw.csv": b"a,b\n1,2\n3,4\n", "greeting.txt": b"hello world\n",
                "more/x.txt": b"x", "new.bin": local.read_bytes()}
    assert sorted(lk for lk, _ in pkg.walk()) == sorted(expected)
    for logical_key, data in expected.items():
        assert pkg[logical_key].get_bytes() == data, logical_key
    assert pkg["greeting.txt"].meta == {"moved": True} and pkg.meta == {"author": "Zoë"}
    assert pkg._meta["message"] == "edit with shell tools"
    # The mount sees the new revision at once; the draft is now empty of changes, on it.
    assert os.readlink(package / "latest") == "@" + pkg.top_hash
    assert os.getxattr(draft, "user.quilt.parent").decode() == pkg.top_hash
    assert (draft / "README.md").read_bytes() == b"changed\n"
    assert fresh_record(mnt)["drafts"][0]["files_written"] == 0
    written = (registry / ".quilt/packages" / pkg.top_hash).stat().st_mtime  # the new revision's time, as
    assert (package / "latest/more/x.txt").stat().st_mtime == pytest.approx(written, abs=1e-3)  # any mount's
    assert run_cli("packages", "diff", str(draft), "--json").stdout.strip() == "[]"

    # A draft lives until it is committed or removed: across a remount too.
    (draft / "kept.txt").write_bytes(b"kept")
    assert run_cli("umount", str(mnt)).returncode == 0
    again = mount(str(registry))
    assert (again / ".packages/demo/pkg/draft/kept.txt").read_bytes() == b"kept"
    subprocess.run(["rm", "-r", str(again / ".packages/demo/pkg/draft")], check=True)
    assert "draft" not in os.listdir(again / ".packages/demo/pkg")
    assert q3.Package.browse("demo/pkg", registry=registry.as_uri()).top_hash == pkg.top_hash  # untouched


def test_conflicts_new_packages_and_bad_input(q3, local_package, mount, tmp_path: Path) -> None:
    registry, parent = local_package
    mnt = mount(str(registry))
    draft = mnt / ".packages/demo/pkg/draft"
    draft.mkdir()
    (draft / "a.txt").write_bytes(b"a")
    # quilt3 builds a revision after the draft was opened: the commit refuses, the draft stays.
    other = q3.Package().set_dir(".", str(write_tree(tmp_path / "other", {"o.txt": b"o"})))
    other_hash = other.build("demo/pkg", registry=registry.as_uri(), message="other")
    result = run_cli("packages", "commit", str(draft), "-m", "mine")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"Package with hash '{other_hash}' already exists at the destination; expected '{parent}'" \
        in result.stderr
    assert (draft / "a.txt").read_bytes() == b"a"
    result = run_cli("packages", "commit", str(draft), "-m", "mine", "--force", "--json")
    assert result.returncode == 0, result.stderr
    forced = json.loads(result.stdout)
    assert q3.Package.browse("demo/pkg", registry=registry.as_uri()).top_hash == forced["top_hash"]

    # A new package, from mkdir -p.
    subprocess.run(["mkdir", "-p", str(mnt / ".packages/team/fresh/draft")], check=True)
    assert os.getxattr(mnt / ".packages/team/fresh/draft", "user.quilt.parent") == b""
    (mnt / ".packages/team/fresh/draft/one.txt").write_bytes(b"one")
    result = run_cli("packages", "commit", str(mnt / ".packages/team/fresh/draft"), "--meta", '{"k": 1}')
    assert result.returncode == 0, result.stderr
    fresh = q3.Package.browse("team/fresh", registry=registry.as_uri())
    assert fresh["one.txt"].get_bytes() == b"one" and fresh.meta == {"k": 1}

    for args, needle in ((["packages", "commit", str(mnt / ".packages/demo/pkg")], "not the draft of a package"),
                         (["packages", "commit", str(tmp_path)], "not the draft of a package"),
                         (["packages", "diff", str(tmp_path)], "not the draft of a package")):
        result = run_cli(*args)
        assert result.returncode == 1 and needle in result.stderr and result.stderr.count("\n") == 1, \
            (args, result.stderr)
    assert "user.quilt.commit" not in os.listxattr(tmp_path)  # nothing written to what is not a draft
    # A file still open for writing is refused, even once a copy of its descriptor was closed (a FUSE flush,
    # as when a shell's `exec 3>file` or a forked child closes one): the bytes written after are kept.
    writer = os.open(draft / "open.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.write(writer, b"first ")
        os.close(os.dup(writer))
        with pytest.raises(quiltmount.QuiltException, match=r"1 file\(s\) of the draft are open for writing "
                                                             r"\(e\.g\. open\.txt\): close them first"):
            quiltmount.commit_draft(str(draft), "too early")
        os.write(writer, b"second")
    finally:
        os.close(writer)
    quiltmount.commit_draft(str(draft), "closed")
    assert q3.Package.browse("demo/pkg", registry=registry.as_uri())["open.txt"].get_bytes() == b"first second"
    # A release that comes while the commit waits for it (up to 2 s) lets the commit go on.
    writer = os.open(draft / "late.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.write(writer, b"late")
    os.close(os.dup(writer))
    closing = threading.Timer(0.5, os.close, (writer,))
    closing.start()
    quiltmount.commit_draft(str(draft), "released meanwhile")
    closing.join()
    assert q3.Package.browse("demo/pkg", registry=registry.as_uri())["late.txt"].get_bytes() == b"late"
    result = run_cli("packages", "commit", str(draft), "--meta", "{bad")
    assert result.returncode == 2 and "argument --meta: not JSON" in result.stderr.splitlines()[-1]
    read_only = mount(str(registry), "--read-only")
    result = sh(f"mkdir {read_only}/.packages/demo/pkg/draft")
    assert result.returncode != 0 and "Read-only file system" in result.stderr, result.stderr


def test_draft_command_from_an_older_revision_and_restarting_a_draft(q3, local_package, mount,
                                                                     tmp_path: Path) -> None:
    registry, first = local_package
    second = q3.Package.browse("demo/pkg", registry=registry.as_uri()).set("added.txt", str(
        write_tree(tmp_path / "more", {"added.txt": b"added"}) / "added.txt")).build(
        "demo/pkg", registry=registry.as_uri(), message="second")
    mnt = mount(str(registry))
    draft = mnt / ".packages/demo/pkg/draft"
    # The only writable mount: no MOUNTPOINT needed.  From an older revision, by a prefix of its hash.
    result = run_cli("packages", "draft", "demo/pkg", "--from", first[:8])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(draft)
    assert os.getxattr(draft, "user.quilt.parent").decode() == first
    assert not (draft / "added.txt").exists()
    result = run_cli("packages", "draft", "demo/pkg", str(mnt))
    assert result.returncode == 1 and f"demo/pkg already has a draft: {draft}" in result.stderr, result.stderr
    # An unchanged draft can start over from another revision (a pointer name here); a changed one cannot.
    os.setxattr(draft, "user.quilt.parent", b"latest")
    assert os.getxattr(draft, "user.quilt.parent").decode() == second
    time.sleep(1.1)  # names the kernel looked up before show as they were for its entry timeout (1 s)
    assert (draft / "added.txt").read_bytes() == b"added"
    (draft / "added.txt").write_bytes(b"changed")
    with pytest.raises(OSError) as busy:
        os.setxattr(draft, "user.quilt.parent", first.encode())
    assert busy.value.errno == errno.EBUSY
    assert os.getxattr(draft, "user.quilt.parent").decode() == second
    # A revision that does not exist: nothing is left behind.
    result = run_cli("packages", "draft", "team/newpkg", str(mnt), "--from", "ffffff")
    assert result.returncode == 1 and "cannot start the draft of team/newpkg from 'ffffff'" in result.stderr, \
        result.stderr
    assert not (mnt / ".packages/team/newpkg/draft").exists()
    result = run_cli("packages", "draft", "team/newpkg", str(mnt))  # a new package, like mkdir -p
    assert result.returncode == 0 and os.getxattr(result.stdout.strip(), "user.quilt.parent") == b""
    for args, needle in ((["packages", "draft", "../x", str(mnt)], "invalid package name"),
                         (["packages", "draft", "demo/other", str(tmp_path)], "not a quiltmount mount point")):
        result = run_cli(*args)
        assert result.returncode == 1 and needle in result.stderr and result.stderr.count("\n") == 1, \
            (args, result.stderr)
    read_only = mount(str(registry), "--read-only")
    result = run_cli("packages", "draft", "demo/other", str(read_only))
    assert result.returncode == 1 and "it is read-only" in result.stderr, result.stderr


def test_drafts_in_a_single_package_mount(q3, local_package, mount, tmp_path: Path) -> None:
    registry, parent = local_package
    mnt = mount(str(registry), "--package", "demo/pkg")
    draft = mnt / ".draft"
    assert not draft.exists() and ".draft" not in os.listdir(mnt)
    with pytest.raises(OSError) as refused:
        (mnt / "x.txt").write_bytes(b"x")  # the revision itself stays read-only
    assert refused.value.errno == errno.EROFS
    result = run_cli("packages", "draft", "demo/other", str(mnt))
    assert result.returncode == 1 and "it shows package demo/pkg" in result.stderr, result.stderr
    result = run_cli("packages", "draft", "demo/pkg", str(mnt))
    assert result.returncode == 0 and result.stdout.strip() == str(draft), result.stderr
    assert os.getxattr(draft, "user.quilt.parent").decode() == parent
    assert sorted(os.listdir(draft)) == sorted(os.listdir(mnt))
    assert ".draft" not in os.listdir(mnt)  # reserved names are never listed: find and du see the package only
    assert sh(f"echo new > {draft}/README.md && cp {draft}/data/hello.txt {draft}/copy.txt "
              f"&& rm {draft}/empty.txt").returncode == 0
    diff = run_cli("packages", "diff", str(draft))
    assert diff.stdout.splitlines() == ["M  README.md", "A  copy.txt", "D  empty.txt"], diff.stderr
    reports: list[dict] = []
    done = quiltmount.commit_draft(str(draft), "from a package mount", progress=reports.append)
    pkg = q3.Package.browse("demo/pkg", registry=registry.as_uri())
    assert done["top_hash"] == pkg.top_hash and pkg["README.md"].get_bytes() == b"new\n"
    assert sorted(lk for lk, _ in pkg.walk()) == ["README.md", "copy.txt", "data-raw.csv", "data/hello.txt"]
    assert all(report["phase"] in ("parent", "upload", "publish") for report in reports)
    # The mount keeps showing the revision it mounted; the draft goes on from the new one.
    assert (mnt / "README.md").read_bytes() == b"# Demo\n"
    assert os.getxattr(draft, "user.quilt.parent").decode() == pkg.top_hash
    subprocess.run(["rm", "-r", str(draft)], check=True)
    assert not draft.exists()
    read_only = mount(str(registry), "--package", "demo/pkg", "--read-only")
    result = sh(f"mkdir {read_only}/.draft")
    assert result.returncode != 0 and "Read-only file system" in result.stderr, result.stderr


def test_a_package_holding_the_draft_name_in_a_single_package_mount(q3, mount, tmp_path: Path) -> None:
    """`.draft` at the root of a writable single-package mount is the mount's: a package's own top-level
    `.draft/` is hidden from the listing (logged), as a bucket's `.packages` is, so `find` and `tar` of the
    mount work; the draft still holds it (a commit keeps it), and a read-only mount, which has no draft,
    shows it."""
    src = write_tree(tmp_path / "src", {"a.txt": b"a", ".draft/x.txt": b"x"})
    registry = tmp_path / "registry"
    q3.Package().set_dir(".", str(src)).build("demo/own", registry=registry.as_uri(), message="m")
    mnt = mount(str(registry), "--package", "demo/own")
    assert sorted(os.listdir(mnt)) == ["a.txt"]
    found = sh(f"find {mnt}")
    assert found.returncode == 0 and found.stdout.split() == [str(mnt), str(mnt / "a.txt")], found.stderr
    assert sh(f"tar -cf {tmp_path / 'all.tar'} -C {mnt} .").returncode == 0
    log = Path(mount_record(mnt)["log_file"]).read_text()
    assert "'.draft' at the root of the mounted tree is hidden: the mount reserves that name" in log, log[-2000:]
    assert run_cli("packages", "draft", "demo/own", str(mnt)).returncode == 0
    assert sorted(os.listdir(mnt / ".draft")) == [".draft", "a.txt"]
    assert (mnt / ".draft/.draft/x.txt").read_bytes() == b"x"
    read_only = mount(str(registry), "--package", "demo/own", "--read-only")
    assert sorted(os.listdir(read_only)) == [".draft", "a.txt"]
    assert (read_only / ".draft/x.txt").read_bytes() == b"x"


def test_directories_of_a_draft_and_their_metadata(q3, mount, tmp_path: Path) -> None:
    """quilt3 keeps a directory's metadata when its files are deleted and drops it when the directory is
    (pkg.delete(dir)); mkdir'd and rmdir'd directories are kept across a remount."""
    src = write_tree(tmp_path / "src", {"keep.txt": b"k", "data/a.txt": b"a", "data/sub/b.txt": b"b",
                                        "gone/c.txt": b"c"})
    registry = tmp_path / "registry"
    pkg = q3.Package().set_dir(".", str(src))
    pkg["data"].set_meta({"d": 1})
    pkg["data/sub"].set_meta({"s": 2})
    pkg["gone"].set_meta({"g": 3})
    pkg.build("demo/dirs", registry=registry.as_uri(), message="dirs")
    mnt = mount(str(registry))
    draft = mnt / ".packages/demo/dirs/draft"
    draft.mkdir()
    assert sh(f"rm {draft}/data/a.txt {draft}/data/sub/b.txt && rm -r {draft}/gone && mkdir {draft}/empty "
              f"&& rmdir {draft}/data/sub").returncode == 0
    assert run_cli("umount", str(mnt)).returncode == 0
    mnt = mount(str(registry))
    draft = mnt / ".packages/demo/dirs/draft"
    assert sorted(os.listdir(draft)) == ["data", "empty", "keep.txt"]
    assert os.listdir(draft / "data") == []
    assert run_cli("packages", "commit", str(draft), "-m", "dirs").returncode == 0
    ours = q3.Package.browse("demo/dirs", registry=registry.as_uri())
    expected = q3.Package.browse("demo/dirs", registry=registry.as_uri(), top_hash=pkg.top_hash)
    for key in ("data/a.txt", "data/sub/b.txt"):
        expected.delete(key)
    expected.delete("data/sub")
    expected.delete("gone")
    expected.set_meta(expected.meta)
    expected._set_commit_message("dirs")
    assert ours.top_hash == expected.top_hash
    mine, theirs = io.StringIO(), io.StringIO()
    ours.dump(mine)
    expected.dump(theirs)
    assert mine.getvalue() == theirs.getvalue()  # the directory-metadata lines too: data/ stays, the rest go
    assert '"logical_key": "data/"' in mine.getvalue() and '"logical_key": "gone/"' not in mine.getvalue()


def test_a_commit_follows_the_registrys_workflow(q3, local_package, mount) -> None:
    registry, _ = local_package
    config = registry / ".quilt/workflows/config.yml"
    config.parent.mkdir(parents=True)
    config.write_text("version: '1'\ndefault_workflow: alpha\nworkflows:\n  alpha:\n    name: Alpha\n"
                      "    is_message_required: true\n")
    mnt = mount(str(registry))
    draft = mnt / ".packages/demo/pkg/draft"
    draft.mkdir()
    (draft / "a.txt").write_bytes(b"a")
    result = run_cli("packages", "commit", str(draft))
    assert result.returncode == 1 and result.stderr.strip().endswith(
        "Commit message is required by workflow, but none was provided."), result.stderr
    assert (draft / "a.txt").read_bytes() == b"a"
    result = run_cli("packages", "commit", str(draft), "--workflow", "")
    assert result.returncode == 1 and "Workflow required, but none specified." in result.stderr, result.stderr
    assert run_cli("packages", "commit", str(draft), "-m", "with a message").returncode == 0
    pkg = q3.Package.browse("demo/pkg", registry=registry.as_uri())
    assert pkg._workflow["id"] == "alpha" and pkg["a.txt"].get_bytes() == b"a"


def test_diff_prints_a_key_with_a_line_break_on_one_line(q3, local_package, mount) -> None:
    """A file name may hold a newline: `packages diff` prints every change on one line (escaped), as the rest
    of the command line does, so that a key cannot forge another change."""
    registry, _ = local_package
    mnt = mount(str(registry))
    draft = mnt / ".packages/demo/pkg/draft"
    draft.mkdir()
    (draft / "a\nD  README.md").write_bytes(b"forged")
    shown = run_cli("packages", "diff", str(draft))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["A  a\\nD  README.md"]
    assert json.loads(run_cli("packages", "diff", str(draft), "--json").stdout) == [
        {"change": "A", "key": "a\nD  README.md"}]


def test_a_key_removed_then_written_again_has_no_meta_and_truncate_by_path_closes(q3, mount, tmp_path: Path) -> None:
    """`rm` then a new file of the same key: a new entry, without the meta of the parent's row (quilt3's delete
    then set gives it none).  truncate(2) by path leaves nothing open (the commit would refuse the file as
    still being written).  NaN is not JSON: `user.quilt.meta` refuses it (the commit could not write it)."""
    registry = tmp_path / "registry"
    src = write_tree(tmp_path / "src", {"f.txt": b"old\n", "g.txt": b"longer text\n"})
    pkg = q3.Package()
    pkg.set("f.txt", str(src / "f.txt"), meta={"k": "v"})
    pkg.set("g.txt", str(src / "g.txt"))
    pkg.build("demo/meta", registry=registry.as_uri(), message="first")
    mnt = mount(str(registry))
    draft = mnt / ".packages/demo/meta/draft"
    draft.mkdir()
    assert json.loads(os.getxattr(draft / "f.txt", "user.quilt.meta")) == {"user_meta": {"k": "v"}}
    os.remove(draft / "f.txt")
    (draft / "f.txt").write_bytes(b"brand new\n")
    assert json.loads(os.getxattr(draft / "f.txt", "user.quilt.meta")) == {}
    os.truncate(draft / "g.txt", 6)
    with pytest.raises(OSError) as refused:
        os.setxattr(draft / "g.txt", "user.quilt.meta", b'{"a": NaN}')
    assert refused.value.errno == errno.EINVAL
    result = run_cli("packages", "commit", str(draft), "-m", "again", "--json")
    assert result.returncode == 0, result.stderr
    committed = q3.Package.browse("demo/meta", registry=registry.as_uri())
    assert committed["f.txt"]._meta == {} and committed["f.txt"].get_bytes() == b"brand new\n"
    assert committed["g.txt"].get_bytes() == b"longer"
