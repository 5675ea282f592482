"""Mounting the way administrators do: the `mount.fuse.quiltmount` helper (mount -t, fstab), `--env-file`,
`install-mount-helper`, and the daemon under systemd (Type=notify readiness, a clean stop on SIGTERM or
SIGINT with the uploads finished, or kept staged for the next mount)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultproxy import Fault, FaultProxy
from mounthelpers import force_unmount, is_mounted, mount_record, run_cli

from quiltmount import state
from quiltmount.envfile import load_env_file
from quiltmount.errors import UserError
from quiltmount.fs.staging import read_journal
from quiltmount.helperlink import HELPER_NAME, install_helper, remove_helper
from quiltmount.mounthelper import (
    HelperError, command_parsers, long_options, parse_invocation, run, split_options, translate,
)
from quiltmount.mountpoint import fusermount_command

SBIN_HELPER = Path("/sbin") / HELPER_NAME


# -- the helper's command line (no mount) -----------------------------------------------------------------
def test_mount_options_become_the_mount_command():
    invocation = parse_invocation([
        "s3://b/p/", "/mnt/x", "-n", "-o",
        'rw,allow_other,metadata-ttl=30,read-only,_netdev,nofail,nosuid,nodev,noexec,user,x-systemd.automount,'
        'comment=boot,X-mount.mkdir,defaults,relatime,endpoint-url="http://h:9000/a,b",profile=data,'
        "env-file=/etc/quiltmount/data.env,stop-timeout=20,disk_cache_size=1G",
        "-t", "fuse.quiltmount"])
    assert invocation.argv == [
        "mount", "s3://b/p/", "/mnt/x", "--allow-other", "--metadata-ttl=30", "--read-only", "--noexec",
        "--endpoint-url=http://h:9000/a,b", "--profile=data", "--env-file=/etc/quiltmount/data.env",
        "--stop-timeout=20", "--disk-cache-size=1G"]
    args = invocation.args
    assert (args.allow_other, args.metadata_ttl, args.read_only, args.noexec, args.stop_timeout,
            args.disk_cache_size, args.foreground) == (True, 30.0, True, True, 20, 1 << 30, False)
    assert args.handler.__name__ == "cmd_mount" and not invocation.fake
    assert parse_invocation(["/srv/d", "/mnt/d", "-o", "ro"]).args.read_only
    assert split_options('a,b="1,2",,c') == ["a", "b=1,2", "c"]


def test_every_mount_option_has_an_o_spelling():
    """The helper takes the options from `quiltmount mount`'s own parser: none is left out, none is
    shadowed by a standard option it ignores."""
    _, mount = command_parsers()
    known = flags, valued = long_options(mount)
    assert {"read-only", "allow-other", "noexec"} <= flags and {"metadata-ttl", "env-file", "profile"} <= valued
    for action in mount._actions:
        for spelling in action.option_strings:
            name = spelling[2:]
            if not spelling.startswith("--") or name in ("help", "foreground"):
                continue
            option = name if action.nargs == 0 else f"{name}=V"
            assert translate("s", "m", [option.replace("-", "_")], known)[0][3:] == [f"--{option}"]


@pytest.mark.parametrize("argv, message", [
    (["s3://b", "/m", "-o", "frobnicate"], "unknown mount option: frobnicate"),
    (["s3://b", "/m", "-o", "metadata-ttl=soon"], "invalid TTL 'soon'"),
    (["s3://b", "/m", "-o", "uid=4294967296"], "invalid id '4294967296': must be <= 4294967294"),
    (["s3://b", "/m", "-o", "endpoint-url=not-a-url"], "invalid endpoint URL 'not-a-url'"),
    (["s3://b", "/m", "-o", "env-file="], "argument --env-file: must not be empty"),  # was: mounted without it
    (["s3://b", "/m", "-o", "as-of=99999999999999999999"], "out of range (years 1-9999)"),  # was: exit 32
    (["s3://b", "/m", "-o", "region=bad region"], "invalid region 'bad region'"),
    (["s3://b", "/m", "-o", "metadata-ttl"], "option metadata-ttl needs a value: metadata-ttl=VALUE"),
    (["s3://b", "/m", "-o", "read-only=yes"], "option read-only takes no value"),
    (["s3://b", "/m", "-o", "foreground"], "option foreground: a mount helper returns once mounted"),
    (["s3://b", "/m", "-o", "remount"], "remounting is not supported"),
    (["s3://b", "/m", "-o", 'endpoint-url="http://x'], "unbalanced double quote"),
    (["s3://b", "/m", "-t", "fuse.sshfs"], "not a quiltmount file system type: fuse.sshfs"),
    (["s3://b", "/m", "-N", "/proc/1/ns/mnt"], "-N (mounting in another namespace) is not supported"),
    (["s3://b"], "the following arguments are required: mountpoint"),
    (["s3://b", "/m", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_invocations_are_one_line_errors_with_status_1(capsys, argv, message):
    with pytest.raises(HelperError) as failure:
        parse_invocation(argv)
    assert message in str(failure.value)
    assert run(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{HELPER_NAME}: error: ") and message in err and err.count("\n") == 1


def test_fake_prints_the_command_and_sloppy_drops_unknown_options(capsys, tmp_path):
    assert run([str(tmp_path), str(tmp_path / "nowhere"), "-sfv", "-o", "ro,frob=1,allow_other"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"quiltmount mount {tmp_path} {tmp_path}/nowhere --read-only --allow-other\n"
    assert captured.err == f"{HELPER_NAME}: ignoring unknown mount option: frob=1\n"


def test_a_failed_mount_exits_32_with_one_line(capsys, tmp_path):
    assert run([str(tmp_path), str(tmp_path / "nowhere")]) == 32
    assert capsys.readouterr().err == f"{HELPER_NAME}: error: mountpoint does not exist: {tmp_path}/nowhere\n"


def test_the_environment_file(tmp_path):
    path = tmp_path / "data.env"
    path.write_text("# credentials for the data mount\n\nAWS_ACCESS_KEY_ID=AKIA1\nexport AWS_SECRET_ACCESS_KEY = "
                    "'s3cr=t'\nAWS_PROFILE=\"data\"\n  EMPTY=\nQUOTE='\n")
    assert load_env_file(str(path)) == {"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "s3cr=t",
                                        "AWS_PROFILE": "data", "EMPTY": "", "QUOTE": "'"}
    for bad in ("AWS_SECRET_ACCESS_KEY hunter2\n", "1KEY=x\n", "=value\n", "KEY WITH SPACE=x\n"):
        path.write_text("OK=1\n" + bad)
        with pytest.raises(UserError) as failure:
            load_env_file(str(path))
        assert str(failure.value) == f"environment file {path}, line 2: expected KEY=VALUE"  # never the line
    with pytest.raises(UserError, match="cannot read environment file .*/missing.env: No such file"):
        load_env_file(str(tmp_path / "missing.env"))
    path.write_bytes(b"KEY=\xff\n")
    with pytest.raises(UserError, match="not UTF-8 text"):
        load_env_file(str(path))


def test_env_file_errors_from_the_command(tmp_path):
    mnt = tmp_path / "m"
    mnt.mkdir()
    result = run_cli("mount", str(tmp_path), str(mnt), "--env-file", str(tmp_path / "missing.env"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == f"quiltmount: error: cannot read environment file {tmp_path}/missing.env: " \
                            "No such file or directory\n"


def test_fusermount_is_found_without_path(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert fusermount_command() in ("/usr/bin/fusermount3", "/bin/fusermount3")
    monkeypatch.delenv("PATH")
    assert os.path.basename(fusermount_command()) == "fusermount3"


def test_install_mount_helper_links_the_console_script(tmp_path):
    script = Path(sys.executable).parent / HELPER_NAME
    assert script.is_file(), "the package is not installed with its console scripts (pip install -e .)"
    link = tmp_path / HELPER_NAME
    assert install_helper(str(tmp_path)) == f"installed {link} -> {script}"
    assert os.readlink(link) == str(script)
    assert install_helper(str(tmp_path)) == f"already installed: {link} -> {script}"
    link.unlink()
    link.symlink_to("/elsewhere/mount.fuse.quiltmount")  # another installation's: replaced
    assert install_helper(str(tmp_path)).startswith("installed")
    assert os.readlink(link) == str(script)
    assert remove_helper(str(tmp_path)) == f"removed {link}"
    assert remove_helper(str(tmp_path)) == f"not installed: {link}"
    link.write_text("#!/bin/sh\n")
    with pytest.raises(UserError, match="exists and is not a symlink: remove it first"):
        install_helper(str(tmp_path))
    with pytest.raises(UserError, match="is not a symlink: not removing it"):
        remove_helper(str(tmp_path))
    result = run_cli("install-mount-helper", "--dir", str(tmp_path / "none"))
    assert (result.returncode, result.stderr) == (1, f"quiltmount: error: not a directory: {tmp_path}/none\n")


# -- real mounts through mount(8) -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sbin_helper() -> Iterator[Path]:
    """/sbin/mount.fuse.quiltmount, made by `install-mount-helper` for these tests; what was there before is
    put back."""
    if os.geteuid() != 0:
        pytest.skip("mount(8) runs helpers for root only without an fstab 'user' entry: run the tests as root")
    before = os.readlink(SBIN_HELPER) if SBIN_HELPER.is_symlink() else None
    result = run_cli("install-mount-helper")
    assert result.returncode == 0, result.stderr
    try:
        yield SBIN_HELPER
    finally:
        run_cli("install-mount-helper", "--remove")
        if before is not None:
            os.symlink(before, SBIN_HELPER)


def mount8(*args: str) -> subprocess.CompletedProcess:
    """mount(8), with no PATH at all (as at boot; mount(8) removes it for its helpers anyway)."""
    env = {name: value for name, value in os.environ.items() if name != "PATH"}
    return subprocess.run(["/usr/bin/mount", *args], capture_output=True, text=True, env=env, timeout=60)


def umount8(mountpoint: Path) -> None:
    """umount(8), as for any fstab mount (it also drops the line libmount keeps in /run/mount/utab), then
    wait for the daemon to finish its uploads and exit."""
    pid = mount_record(mountpoint)["pid"]
    result = subprocess.run(["/usr/bin/umount", str(mountpoint)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    state.wait_for_exit(pid, 30)
    assert not state.pid_alive(pid) and not is_mounted(mountpoint)


def mount_options(mountpoint: Path) -> tuple[str, str]:
    """The file system type and options the kernel shows for `mountpoint`."""
    with open("/proc/self/mounts", encoding="utf-8") as file:
        for line in file:
            fields = line.split()
            if fields[1] == str(mountpoint):
                return fields[2], fields[3]
    raise AssertionError(f"{mountpoint} is not mounted")


@pytest.fixture
def mountpoints() -> Iterator[list[Path]]:
    """Mountpoints to use; each is unmounted in teardown, whatever happened."""
    made: list[Path] = []
    yield made
    for mountpoint in made:
        force_unmount(mountpoint)


def new_mountpoint(tmp_path: Path, made: list[Path], name: str) -> Path:
    mountpoint = tmp_path / name
    mountpoint.mkdir()
    made.append(mountpoint)
    return mountpoint


def test_mount_t_fuse_quiltmount_of_a_local_directory(sbin_helper, tmp_path, mountpoints):
    source = tmp_path / "src"
    source.mkdir()
    (source / "hello.txt").write_text("hello")
    mnt = new_mountpoint(tmp_path, mountpoints, "mnt")
    result = mount8("-t", "fuse.quiltmount", "-o", "allow_other,noexec,metadata-ttl=5,_netdev", str(source),
                    str(mnt))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    fstype, options = mount_options(mnt)
    assert fstype == "fuse.quiltmount"
    assert {"nosuid", "nodev", "noexec", "allow_other"} <= set(options.split(","))
    assert (mnt / "hello.txt").read_text() == "hello"
    (mnt / "new.txt").write_text("written through the helper's mount")
    umount8(mnt)
    assert (source / "new.txt").read_text() == "written through the helper's mount"
    failed = mount8("-t", "fuse.quiltmount", "-o", "frobnicate", str(source), str(mnt))
    assert failed.returncode == 1 and failed.stderr.strip() == f"{HELPER_NAME}: error: unknown mount option: frobnicate"
    failed = mount8("-t", "fuse.quiltmount", str(tmp_path / "missing"), str(mnt))
    assert failed.returncode == 32 and "source directory does not exist" in failed.stderr
    assert failed.stderr.count("\n") == 1 and not is_mounted(mnt)


def utab_targets() -> list[str]:
    """The mountpoints libmount keeps a line for in /run/mount/utab."""
    try:
        lines = Path("/run/mount/utab").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [field[len("TARGET="):] for line in lines for field in line.split() if field.startswith("TARGET=")]


def test_quiltmount_umount_and_a_stop_signal_leave_no_utab_line(sbin_helper, tmp_path, mountpoints):
    """A mount made by mount(8) has a line in /run/mount/utab; `quiltmount umount` and the daemon's own stop (a
    signal, as `systemctl stop` of a service sends) remove it as umount(8) does, instead of leaving it behind."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a")
    mnt = new_mountpoint(tmp_path, mountpoints, "mnt")
    for stop in ("quiltmount umount", "SIGTERM"):
        # (_netdev: an option only user space knows, so libmount keeps a utab line for the mount)
        result = mount8("-t", "fuse.quiltmount", "-o", "_netdev,metadata-ttl=5", str(source), str(mnt))
        assert result.returncode == 0, result.stderr
        assert str(mnt) in utab_targets() and (mnt / "a.txt").read_text() == "a"
        pid = mount_record(mnt)["pid"]
        if stop == "SIGTERM":
            os.kill(pid, signal.SIGTERM)
        else:
            assert run_cli("umount", str(mnt)).returncode == 0
        state.wait_for_exit(pid, 30)
        assert not state.pid_alive(pid) and not is_mounted(mnt), stop
        assert str(mnt) not in utab_targets(), stop


def test_mount_t_fuse_quiltmount_of_the_bucket(sbin_helper, s3, bucket, s3_server, tmp_path, mountpoints):
    s3.put_object(Bucket=bucket, Key="data/a.csv", Body=b"x,y\n1,2\n")
    mnt = new_mountpoint(tmp_path, mountpoints, "mnt")
    result = mount8("-t", "fuse.quiltmount", "-o", f"ro,endpoint-url={s3_server.endpoint_url},uid=1000",
                    f"s3://{bucket}/data/", str(mnt))
    assert result.returncode == 0, result.stderr
    assert (mnt / "a.csv").read_bytes() == b"x,y\n1,2\n" and (mnt / "a.csv").stat().st_uid == 1000
    with pytest.raises(OSError, match="Read-only file system"):
        (mnt / "b.csv").write_text("no")
    assert "ro" in mount_options(mnt)[1].split(",")
    umount8(mnt)


def test_an_fstab_line_with_credentials_from_an_env_file(sbin_helper, s3, bucket, s3_server, tmp_path,
                                                         mountpoints):
    """`mount MOUNTPOINT` of an fstab line: the endpoint comes from the env file only."""
    s3.put_object(Bucket=bucket, Key="prefix/b.txt", Body=b"from fstab")
    mnt = new_mountpoint(tmp_path, mountpoints, "data")
    env_file = tmp_path / "data.env"
    env_file.write_text(f"# as /etc/quiltmount/data.env\nexport AWS_ENDPOINT_URL='{s3_server.endpoint_url}'\n")
    env_file.chmod(0o600)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"s3://{bucket}/prefix/ {mnt} fuse.quiltmount _netdev,nofail,allow_other,metadata-ttl=30,"
                     f"read-only,env-file={env_file},x-systemd.automount,x-systemd.idle-timeout=600 0 0\n")
    result = mount8("-T", str(fstab), str(mnt))
    assert result.returncode == 0, result.stderr
    assert (mnt / "b.txt").read_bytes() == b"from fstab"
    assert {"ro", "allow_other"} <= set(mount_options(mnt)[1].split(","))
    record = mount_record(mnt)
    with open(f"/proc/{record['pid']}/cmdline", "rb") as file:  # the daemon's argv names no secret
        assert s3_server.endpoint_url.encode() not in file.read()
    umount8(mnt)


def kernel_source(mountpoint: Path) -> str:
    """The source the kernel shows for the mount at `mountpoint` (mountinfo's escapes undone)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as file:
        for line in file:
            fields = line.split()
            if fields[4] == str(mountpoint):
                source = line.split(" - ")[1].split()[1]
                return source.encode().decode("unicode_escape")
    raise AssertionError(f"{mountpoint} is not mounted")


def test_mount_a_skips_the_lines_already_mounted(sbin_helper, s3, bucket, s3_server, tmp_path, mountpoints):
    """libmount takes an fstab line as mounted when the kernel shows its source at its mountpoint: the mount's
    name is SOURCE as given (it was `quiltmount:s3://...`, so a second `mount -a` mounted again: "already
    mounted", exit 32)."""
    s3.put_object(Bucket=bucket, Key="dir/a.txt", Body=b"a")
    mnt = new_mountpoint(tmp_path, mountpoints, "a1")
    fstab = tmp_path / "fstab"
    fstab.write_text(f"s3://{bucket}/dir/ {mnt} fuse.quiltmount _netdev,nofail,read-only,"
                     f"endpoint-url={s3_server.endpoint_url} 0 0\n")
    first = mount8("-a", "-T", str(fstab))
    assert (first.returncode, first.stderr) == (0, "")
    pid = mount_record(mnt)["pid"]
    again = mount8("-a", "-T", str(fstab))
    assert (again.returncode, again.stderr) == (0, "")
    assert mount_record(mnt)["pid"] == pid and (mnt / "a.txt").read_bytes() == b"a"
    assert kernel_source(mnt) == f"s3://{bucket}/dir/"
    umount8(mnt)


def test_the_mount_is_named_by_its_source_as_given(tmp_path, mountpoints):
    """Commas and backslashes would be taken apart by libfuse's option list, spaces escaped by the kernel's
    table: the name comes back as given."""
    source = tmp_path / "data, v2\\raw dir"
    source.mkdir()
    mnt = new_mountpoint(tmp_path, mountpoints, "mnt")
    result = run_cli("mount", str(source) + "/", str(mnt))
    assert result.returncode == 0, result.stderr
    assert kernel_source(mnt) == f"{source}/"
    assert run_cli("umount", str(mnt)).returncode == 0


# -- the daemon under systemd: readiness, stop signals ------------------------------------------------------
README = Path(__file__).resolve().parent.parent / "README.md"


def readme_service_settings(key: str) -> list[str]:
    """The values of `key=` in the README's `quiltmount-data.service` unit."""
    text = README.read_text(encoding="utf-8")
    unit = text.split("`/etc/systemd/system/quiltmount-data.service`:", 1)[1].split("```ini\n", 1)[1]
    return [line.split("=", 1)[1] for line in unit.split("```", 1)[0].splitlines() if line.startswith(f"{key}=")]


def test_the_readme_service_restarts_after_a_crash(s3, bucket, s3_server, tmp_path, mount):
    """After a crash, systemd restarts the README's service (Restart=on-failure) by running its ExecStartPre=
    lines again: the mountpoint is stale ("Transport endpoint is not connected") until quiltmount's own mount
    cleans it, so a step before it must not fail the restart (its `mkdir -p` did, and the service stayed
    down).  A command after `-` may fail (systemd's rule)."""
    s3.put_object(Bucket=bucket, Key="f.txt", Body=b"f")
    mnt = mount(f"s3://{bucket}")
    os.kill(mount_record(mnt)["pid"], signal.SIGKILL)
    time.sleep(0.3)
    commands = readme_service_settings("ExecStartPre")
    assert commands, "the README's service has no ExecStartPre= any more: drop this test's first half"
    for command in commands:
        argv = command.lstrip("-").replace("/mnt/data", str(mnt)).split()
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert result.returncode == 0 or command.startswith("-"), (command, result.stderr)
    result = run_cli("mount", f"s3://{bucket}", str(mnt), "--endpoint-url", s3_server.endpoint_url)
    assert result.returncode == 0, result.stderr
    assert (mnt / "f.txt").read_bytes() == b"f"


def test_notify_sends_one_datagram_where_notify_socket_says(tmp_path, monkeypatch):
    from quiltmount.daemon.notify import notify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify("READY=1")  # not under systemd: nothing to do
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1", "STATUS=two\nlines")
        assert sock.recv(4096) == b"READY=1\nSTATUS=two lines"
    assert not notify("STOPPING=1")  # nobody listens any more: logged, never raised
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not notify("READY=1")


@pytest.fixture
def proxy(s3_server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """systemd's side of NOTIFY_SOCKET: an abstract AF_UNIX datagram socket, and its '@' name."""
    name = f"quiltmount-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(30)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def notification(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def test_foreground_notify_readiness_and_sigterm_finishes_the_uploads(s3, bucket, tmp_path, proxy, notify_socket):
    sock, name = notify_socket
    mnt = tmp_path / "fg"
    mnt.mkdir()
    slow = proxy.add(Fault.latency(0.8, method="PUT"))  # uploads are still running when SIGTERM comes
    stderr = tmp_path / "stderr"
    with open(stderr, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "quiltmount", "mount", "--foreground", f"s3://{bucket}",
                                    str(mnt), "--endpoint-url", proxy.endpoint_url], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=sink, env=dict(os.environ, NOTIFY_SOCKET=name))
    try:
        ready = notification(sock)
        assert ready["READY"] == "1" and ready["STATUS"] == f"mounted s3://{bucket}/ at {mnt}"
        assert is_mounted(mnt) and os.listdir(mnt) == []  # live when READY=1 comes
        files = {f"f{number}.bin": os.urandom(300_000 + number) for number in range(8)}
        for key, data in files.items():
            (mnt / key).write_bytes(data)
        process.send_signal(signal.SIGTERM)
        stopping = notification(sock)
        assert stopping["STOPPING"] == "1" and stopping["STATUS"] == "SIGTERM: stopping"
        assert process.wait(timeout=60) == 0
        assert not is_mounted(mnt) and slow.hits >= len(files)
        for key, data in files.items():
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
        log = stderr.read_text()
        assert "SIGTERM: stopping the mount" in log and "finishing" in log and "Traceback" not in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        force_unmount(mnt)


def stop_daemon(record: dict, *signals: signal.Signals) -> str:
    """Send the daemon `signals`, each once it has taken the one before; return its log once it has exited
    (within 10 s)."""
    pid, log = record["pid"], Path(record["log_file"])
    started = time.monotonic()
    for number, sent in enumerate(signals):
        if number:
            while f"{signals[number - 1].name}: stopping" not in log.read_text():
                assert time.monotonic() - started < 10, "the daemon did not take the first signal"
                time.sleep(0.02)
        os.kill(pid, sent)
    state.wait_for_exit(pid, 30)
    assert not state.pid_alive(pid) and time.monotonic() - started < 10
    return log.read_text()


def test_a_stop_cut_short_keeps_what_did_not_land_for_the_next_mount(s3, bucket, tmp_path, proxy, mount):
    """The background daemon on SIGINT, with uploads that cannot finish and a file still open for writing: it
    exits after --stop-timeout (or at a second signal) and reports them; the next `quiltmount umount` of the
    mountpoint lists them although the daemon is gone, and the next mount of the source uploads the closed
    ones (the open one is set aside, never uploaded)."""
    stalled = proxy.add(Fault.stall(method="PUT"))
    mnt = mount(f"s3://{bucket}", "--endpoint-url", proxy.endpoint_url, "--stop-timeout", "1")
    files = {"a.bin": os.urandom(1000), "b.bin": os.urandom(2000)}
    for key, data in files.items():
        (mnt / key).write_bytes(data)
    proxy.wait_for_hits(stalled, 2)
    record = mount_record(mnt)  # (asked before the file is opened: a fork would close a copy of it, a flush)
    with open(mnt / "open.bin", "wb", buffering=0) as writing:
        writing.write(b"half")
        log = stop_daemon(record, signal.SIGINT)
        with contextlib.suppress(OSError):
            writing.close()
    assert not is_mounted(mnt)
    assert "SIGINT: stopping the mount" in log and "--stop-timeout (1 s) is over" in log
    assert "not uploaded: 'a.bin'" in log and "upload not finished when the daemon stopped" in log
    staging = Path(record["cache_dir"]) / "staging"
    staged = {entry.key: staging / "data" / entry.id for entry in read_journal(str(staging))}
    result = run_cli("umount", str(mnt))
    assert result.returncode == 1 and result.stdout == "", result
    assert sorted(result.stderr.splitlines()) == sorted([
        *[f"quiltmount: not uploaded: {key} (kept at {staged[key]}): upload not finished when the daemon stopped"
          for key in files],
        f"quiltmount: not uploaded: open.bin (kept at {staged['open.bin']}): still open for writing when the "
        "daemon stopped",
        f"quiltmount: error: {mnt} is not mounted (its daemon has exited), but 2 file(s) are still staged: the "
        "next mount of the same source uploads them; 1 file(s) were still open for writing: not uploaded (their "
        f"bytes may be incomplete); the next mount of the same source moves them to {staging.parent / 'stranded'}"])
    result = run_cli("umount", str(mnt))  # listed once
    assert (result.returncode, result.stderr) == (1, f"quiltmount: error: not mounted: {mnt}\n")
    assert [key for key in files if "Contents" in s3.list_objects_v2(Bucket=bucket, Prefix=key)] == []

    again = mount(f"s3://{bucket}", "--endpoint-url", proxy.endpoint_url)  # recovers both: still stalled
    proxy.wait_for_hits(stalled, 4)
    log = stop_daemon(mount_record(again), signal.SIGTERM, signal.SIGINT)  # --stop-timeout 60, cut short
    assert "a second stop signal: not waiting for the uploads any longer" in log and not is_mounted(again)

    proxy.remove(stalled)
    mount(f"s3://{bucket}", "--endpoint-url", proxy.endpoint_url)  # the same source: the same staging area
    deadline = time.monotonic() + 30
    for key, data in files.items():
        while "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=key):
            assert time.monotonic() < deadline, f"{key} was not uploaded by the next mount"
            time.sleep(0.1)
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="open.bin")
    assert (staging.parent / "stranded").is_dir()
