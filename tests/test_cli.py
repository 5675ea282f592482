"""The command line: one-line errors with the right exit status, stale mounts, foreground mode."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from mounthelpers import force_unmount, is_mounted, mount_record, run_cli


def assert_one_line_error(result: subprocess.CompletedProcess, status: int, text: str) -> None:
    assert result.returncode == status, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert text in lines[-1], result.stderr
    if status == 1:
        assert len(lines) == 1, result.stderr


@pytest.fixture
def endpoint(s3_server) -> list[str]:
    return ["--endpoint-url", s3_server.endpoint_url]


def test_mountpoint_errors(tmp_path, bucket, endpoint):
    source = f"s3://{bucket}"
    assert_one_line_error(run_cli("mount", source, str(tmp_path / "missing"), *endpoint), 1,
                          "mountpoint does not exist")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert_one_line_error(run_cli("mount", source, str(a_file), *endpoint), 1, "not a directory")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert_one_line_error(run_cli("mount", source, str(full), *endpoint), 1, "not empty")


def test_already_mounted(tmp_path, bucket, mount, endpoint):
    mnt = mount(f"s3://{bucket}")
    assert_one_line_error(run_cli("mount", f"s3://{bucket}", str(mnt), *endpoint), 1, "already mounted")


def _top_file_system(path) -> str:
    """The type of the file system mounted last at `path` (the one its users see)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as file:
        types = [line.split(" - ")[1].split()[0] for line in file if line.split()[4] == str(path)]
    return types[-1] if types else ""


def test_a_mountpoint_with_another_file_system_on_it(tmp_path, s3, bucket, endpoint):
    """systemd's x-systemd.automount (and an `.automount` unit) keeps an autofs mount at the mountpoint and
    mounts the real one on top of it at first access: the mount goes over another file system, as libfuse's
    do, and only a FUSE mount there is "already mounted" (any mount was, so automounting could never work).
    A tmpfs stands in for autofs, which this kernel lacks."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"on top")
    mnt = tmp_path / "auto"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "systemd-1", str(mnt)], check=True)
    try:
        result = run_cli("mount", f"s3://{bucket}", str(mnt), *endpoint)
        try:
            assert result.returncode == 0, result.stderr
            assert _top_file_system(mnt) == "fuse.quiltmount" and (mnt / "a.txt").read_bytes() == b"on top"
            assert_one_line_error(run_cli("mount", f"s3://{bucket}", str(mnt), *endpoint), 1, "already mounted")
            assert run_cli("umount", str(mnt)).returncode == 0
        finally:
            if _top_file_system(mnt) != "tmpfs":  # (its fusermount -uz would unmount the tmpfs too)
                force_unmount(mnt)
        assert _top_file_system(mnt) == "tmpfs"  # left as it was
        (mnt / "x").write_text("x")
        assert_one_line_error(run_cli("mount", f"s3://{bucket}", str(mnt), *endpoint), 1, "not empty")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_source_errors(tmp_path, endpoint):
    mnt = tmp_path / "m"
    mnt.mkdir()
    assert_one_line_error(run_cli("mount", "s3://no-such-bucket-here", str(mnt), *endpoint), 1,
                          "bucket does not exist: no-such-bucket-here")
    assert_one_line_error(run_cli("mount", "gs://bucket", str(mnt)), 1, "unsupported source")
    assert_one_line_error(run_cli("mount", str(tmp_path / "nope"), str(mnt)), 1, "source directory does not exist")
    assert_one_line_error(run_cli("mount", "s3://b", str(mnt), "--memory-cache-size", "12X"), 2,
                          "invalid size")
    assert_one_line_error(run_cli("mount", "s3://b", str(mnt), "--metadata-ttl", "soon"), 2, "invalid TTL")
    assert_one_line_error(run_cli("mount", "s3://b", str(mnt), "--file-mode", "999"), 2, "invalid mode")
    assert_one_line_error(run_cli("frobnicate"), 2, "invalid choice")
    assert not is_mounted(mnt)


def test_a_cache_dir_that_is_not_a_directory(tmp_path, bucket, endpoint):
    """--cache-dir at a file, or under one, is one line naming it before anything starts (it was a traceback
    with --foreground, "[Errno 17] File exists" without)."""
    mnt = tmp_path / "m"
    mnt.mkdir()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for cache_dir in (a_file, a_file / "under"):
        for foreground in ((), ("--foreground",)):
            result = run_cli("mount", *foreground, f"s3://{bucket}", str(mnt), *endpoint, "--cache-dir", str(cache_dir))
            assert_one_line_error(result, 1, f"--cache-dir {cache_dir}: {a_file} is not a directory")
    assert not is_mounted(mnt)


def test_an_explicit_log_file_needs_its_directory(tmp_path):
    """--log-file's directory is not created (as root, that made directories anywhere), with or without
    --foreground; the default log's directory still is (every other mount)."""
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")  # a mount that fails once its log is set up
    log_file = tmp_path / "no/such/dir/x.log"
    for foreground in ((), ("--foreground",)):
        result = run_cli("mount", *foreground, str(tmp_path), str(full), "--log-file", str(log_file))
        assert_one_line_error(result, 1, f"--log-file {log_file}: {log_file.parent} does not exist")
        assert not (tmp_path / "no").exists()


def test_no_credentials(tmp_path, bucket, endpoint):
    mnt = tmp_path / "m"
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION="us-east-1")
    result = run_cli("mount", f"s3://{bucket}", str(mnt), *endpoint, env=env)
    assert_one_line_error(result, 1, "no AWS credentials found")
    result = run_cli("mount", f"s3://{bucket}", str(mnt), *endpoint, "--profile", "nobody")
    assert_one_line_error(result, 1, "AWS profile not found: nobody")


def test_endpoint_from_environment(tmp_path, s3, bucket, s3_server):
    s3.put_object(Bucket=bucket, Key="env.txt", Body=b"from env")
    mnt = tmp_path / "m"
    mnt.mkdir()
    env = dict(os.environ, AWS_ENDPOINT_URL=s3_server.endpoint_url)
    try:
        result = run_cli("mount", f"s3://{bucket}", str(mnt), env=env)
        assert result.returncode == 0, result.stderr
        assert (mnt / "env.txt").read_bytes() == b"from env"
    finally:
        force_unmount(mnt)


def test_stale_mount_of_a_killed_daemon_is_cleaned(s3, bucket, mount, endpoint):
    s3.put_object(Bucket=bucket, Key="f.txt", Body=b"f")
    mnt = mount(f"s3://{bucket}")
    os.kill(mount_record(mnt)["pid"], signal.SIGKILL)
    time.sleep(0.3)
    with pytest.raises(OSError) as failure:
        os.listdir(mnt)
    assert failure.value.errno == errno.ENOTCONN
    result = run_cli("mount", f"s3://{bucket}", str(mnt), *endpoint)
    assert result.returncode == 0, result.stderr
    assert (mnt / "f.txt").read_bytes() == b"f"
    assert "stale FUSE mount" in open(mount_record(mnt)["log_file"]).read()


def test_foreground_mount_stays_attached(tmp_path, s3, bucket, s3_server):
    s3.put_object(Bucket=bucket, Key="fg.txt", Body=b"foreground")
    mnt = tmp_path / "fg"
    mnt.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "quiltmount", "mount", "--foreground", f"s3://{bucket}",
                                str(mnt), "--endpoint-url", s3_server.endpoint_url],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (mnt / "fg.txt").read_bytes() == b"foreground"
        assert process.poll() is None
        assert run_cli("umount", str(mnt)).returncode == 0
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        force_unmount(mnt)


def test_second_writable_mount_of_a_source_needs_its_own_cache_dir(tmp_path, bucket, mount, endpoint):
    mount(f"s3://{bucket}")
    other = tmp_path / "other"
    other.mkdir()
    assert_one_line_error(run_cli("mount", f"s3://{bucket}", str(other), *endpoint), 1, "use another --cache-dir")
    assert not is_mounted(other)
    read_only = run_cli("mount", f"s3://{bucket}", str(other), *endpoint, "--read-only")
    try:
        assert read_only.returncode == 0, read_only.stderr
    finally:
        force_unmount(other)


def test_local_directory_source(tmp_path, mount):
    source = tmp_path / "src"
    (source / "sub dir").mkdir(parents=True)
    (source / "sub dir" / "ü.txt").write_bytes(b"local")
    (source / "big.bin").write_bytes(os.urandom(5 << 20))
    (source / "empty").mkdir()
    for spelled, options in ((str(source), ()), (f"file://{source}", ("--cache-dir", str(tmp_path / "cache2")))):
        mnt = mount(spelled, *options)  # a second writable mount of one source needs its own cache dir
        assert sorted(os.listdir(mnt)) == ["big.bin", "empty", "sub dir"]
        assert (mnt / "sub dir" / "ü.txt").read_bytes() == b"local"
        subprocess.run(["cmp", str(mnt / "big.bin"), str(source / "big.bin")], check=True)
        assert os.listdir(mnt / "empty") == []


def test_the_parent_waits_while_the_daemon_reports_work():
    """`mount` returns once the daemon says READY; a daemon indexing a large revision before mounting sends
    WORKING beats, and the parent waits as long as they come (the timeout counts silence only)."""
    from quiltmount.daemon import launcher

    def word(daemon_code: str, timeout: float) -> str | None:
        read_fd, write_fd = os.pipe()
        child = subprocess.Popen([sys.executable, "-c", daemon_code, str(write_fd)], pass_fds=(write_fd,))
        os.close(write_fd)
        try:
            with os.fdopen(read_fd, "rb") as pipe:
                return launcher.await_word(pipe, timeout)
        finally:
            child.kill()
            child.wait()

    # The real beat: ReadySignal.working() around 1.2 s of work, beating every 0.2 s, then READY.
    working = ("import sys, time; from quiltmount.daemon import launcher; launcher.WORKING_INTERVAL = 0.2; "
               "signal = launcher.ReadySignal(int(sys.argv[1]))\n"
               "with signal.working(): time.sleep(1.2)\n"
               "signal.ready()")
    assert word(working, timeout=0.6) == "READY"
    silent = "import os, sys, time; time.sleep(1.2); os.write(int(sys.argv[1]), b'READY\\n')"
    assert word(silent, timeout=0.6) is None
    assert word("import os, sys; os.write(int(sys.argv[1]), b'ERROR: no such bucket\\n')", 5) == "ERROR: no such bucket"


def test_the_source_reaches_the_daemon_parsed(tmp_path):
    """The command parses SOURCE (and --package) once; the daemon gets the parsed `Source` as data."""
    from quiltmount.daemon.launcher import MountOptions
    from quiltmount.storage import Source

    options = MountOptions(source=Source("s3", "bucket", "some/prefix/", package="team/ds:latest"),
                           mountpoint=str(tmp_path))
    assert MountOptions.from_json(options.to_json()) == options
    both = run_cli("mount", "quilt+s3://bucket#package=team/ds", str(tmp_path), "--package", "team/other")
    assert_one_line_error(both, 1, "give the package either in the source URI or with --package, not both")


def test_importing_the_daemon_loads_no_control_api_and_no_libfuse():
    """The daemon needs none of the quilt3-compatible API to start, and loads libfuse only once it mounts
    (after choosing the library)."""
    code = "import sys, quiltmount.daemon; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    api = {f"quiltmount.{name}" for name in ("api", "api_keys", "auth", "bucket", "catalog", "catalog_search",
                                             "quiltconfig", "stackcli")}
    assert not loaded & (api | {"mfusepy"})


def test_commit_progress_bar(capsys) -> None:
    from quiltmount.cli import CommitProgressBar

    report = {"phase": "parent", "parent_entries": 65536, "files_done": 0, "files_total": 0, "bytes_done": 0,
              "bytes_total": 0}
    with CommitProgressBar() as bar:
        bar.update(report)
        bar.update({**report, "phase": "upload", "files_total": 2, "bytes_total": 3 << 20})
        bar.update({**report, "phase": "upload", "files_done": 1, "files_total": 2, "bytes_done": 1 << 20,
                    "bytes_total": 3 << 20})
        bar.update({**report, "phase": "publish", "files_done": 2, "files_total": 2, "bytes_done": 3 << 20,
                    "bytes_total": 3 << 20})
    shown = capsys.readouterr().err
    assert "reading the parent" in shown and "65536 entries" in shown
    assert "uploading" in shown and "1/2 files" in shown and "1.00M/3.00M" in shown


def test_the_largest_uid_and_gid_are_accepted():
    """4294967294 is the last id: one more is (uid_t)-1, "no id" (refused, as above: tests/test_bad_input.py)."""
    from quiltmount.cli import build_parser

    args = build_parser().parse_args(["mount", "s3://b", "/m", "--uid", "4294967294", "--gid", "4294967294"])
    assert (args.uid, args.gid) == (4294967294, 4294967294)


@pytest.mark.parametrize("buffered", [True, False])
@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["cache", "status"], ["config"],
                                  ["packages", "list", "{registry}"]])
def test_a_reader_that_went_away_ends_the_command_quietly(argv, buffered, tmp_path):
    """`quiltmount status | head -1`: once stdout's reader is gone, the command stops with 141 (as killed by
    SIGPIPE, which Python ignores) and nothing on stderr.  It printed "[Errno 32] Broken pipe" when the
    output was written while it ran (PYTHONUNBUFFERED, or 25 KB of it), and Python's "Exception ignored"
    lines (exit 120) when it was still in the buffer at exit."""
    registry = tmp_path / "registry"
    for number in range(600):  # 25 KB of names: written while the command runs, not only at exit
        package = registry / f".quilt/named_packages/namespace/package-with-a-longish-name-{number}"
        package.mkdir(parents=True)
        (package / "latest").write_text("0" * 64)
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    if not buffered:
        environment["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "quiltmount", *(arg.format(registry=registry) for arg in argv)],
                                stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE, text=True,
                                timeout=60, env=environment)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


def test_status_text_lists_failed_and_stranded_files_up_to_a_cap() -> None:
    """`status` (text) shows the upload counts, then one line per failed upload and per file set aside after a
    crash, at most UPLOAD_LINES of each, then how many more `--json` lists."""
    from quiltmount.cli import UPLOAD_LINES, upload_lines

    record = {"pending_uploads": 2, "uploaded": 7, "upload_retries": 3,
              "failed_uploads": [{"key": f"f{i}", "staged": f"/s/{i}", "error": "denied"}
                                 for i in range(UPLOAD_LINES + 2)],
              "stranded": [{"key": "h.txt", "kept_at": "/c/stranded/T/h.txt"}]}
    assert upload_lines(record) == [
        f"  uploads:   2 pending, 7 done, 3 retries, {UPLOAD_LINES + 2} failed, 1 stranded",
        *[f"  failed:    f{i} (staged at /s/{i}): denied" for i in range(UPLOAD_LINES)],
        "  failed:    ... and 2 more (`quiltmount status --json` lists them all)",
        "  stranded:  h.txt: not uploaded, kept at /c/stranded/T/h.txt"]
    assert upload_lines({"pending_uploads": 0, "uploaded": 0, "upload_retries": 0, "failed_uploads": [],
                         "stranded": []}) == ["  uploads:   0 pending, 0 done, 0 retries, 0 failed, 0 stranded"]
    forged = upload_lines({"failed_uploads": [], "stranded": [{"key": "a\n  failed:    b", "kept_at": "/c/a\nb"}]})
    assert forged[1:] == ["  stranded:  a\\n  failed:    b: not uploaded, kept at /c/a\\nb"]  # a name is one line


def test_mount_warns_of_stranded_files_in_one_line() -> None:
    """`mount`'s warning names where the set-aside files are, on one line even if a key holds a newline."""
    from quiltmount.cli import stranded_warning

    one = stranded_warning([{"key": "a\nb", "kept_at": "/c/stranded/T/a\nb"}])
    assert one == ("quiltmount: warning: 1 file(s) a stopped daemon left open for writing were not uploaded (their "
                   "bytes may be incomplete); kept at /c/stranded/T/a\\nb (`quiltmount status` lists them)")
    two = stranded_warning([{"key": "d/x", "kept_at": "/c/stranded/T/d/x"},
                            {"key": "d/y\r", "kept_at": "/c/stranded/T/d/y\r"}])
    assert "2 file(s)" in two and "kept under /c/stranded/T/d (" in two and "\n" not in two
