"""Security: private state files and caches, secrets kept out of logs, status, argv and error messages,
`--allow-other` off by default with the kernel's permission checks on, and no name leading outside the mount's
own directories."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mounthelpers import force_unmount, mount_record, run_cli
from quiltmount import api_keys, auth, catalog, quiltconfig, state
from quiltmount.errors import QuiltException
from quiltmount.packages import manifest as mf
from quiltmount.packages.index import index_name
from quiltmount.paths import index_dir, mounts_dir
from test_bad_input import run, scratch_bucket, snapshot  # noqa: F401  (fixture)
from test_config_auth import clean, quilt3_module, stack  # noqa: F401  (fixtures)
from test_writes import wait_for

MARK = "s3cr3t-9b7e51"  # in every planted secret, so one search finds them all
NOBODY = 65534


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: whatever a file is created with is what it gets, nothing masks a wide mode."""
    previous = os.umask(0)
    yield
    os.umask(previous)


# ---------------------------------------------------------------------------------------------------------
# auth.json and credentials.json


def test_secret_files_are_0600_from_creation_to_rename(clean, open_umask, monkeypatch):  # noqa: F811
    targets = {str(auth.auth_path()), str(auth.credentials_path())}
    created: dict[str, int] = {}  # temporary file -> its mode right after creation (still empty)
    renamed: dict[str, int] = {}  # final path -> mode of the file renamed onto it

    real_mkstemp, real_replace = tempfile.mkstemp, os.replace

    def mkstemp(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        assert os.fstat(fd).st_size == 0
        created[path] = stat.S_IMODE(os.fstat(fd).st_mode)
        return fd, path

    def replace(source, destination):
        if str(destination) in targets:
            renamed[str(destination)] = mode(source)
            assert str(source) in created, "written through a file that was not created private"
            json.loads(Path(source).read_text())  # complete before it is renamed into place
        return real_replace(source, destination)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "replace", replace)
    auth.auth_path().parent.mkdir(parents=True, exist_ok=True)
    auth.auth_path().write_text("{}")
    os.chmod(auth.auth_path(), 0o644)  # as a client that chmods after writing might have left it
    before = os.stat(auth.auth_path()).st_ino

    auth.save_auth({"http://catalog": {"refresh_token": MARK, "access_token": MARK, "expires_at": 1.0}})
    auth.save_credentials({"access_key": "a", "secret_key": MARK, "token": MARK, "expiry_time": "2099-01-01"})

    assert set(renamed) == targets and set(renamed.values()) == {0o600}
    assert set(created.values()) == {0o600}
    assert mode(auth.auth_path()) == mode(auth.credentials_path()) == 0o600
    assert os.stat(auth.auth_path()).st_ino != before  # replaced by rename, never rewritten in place
    leftovers = [p.name for p in auth.auth_path().parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_login_and_logout_keep_secret_files_private(stack, open_umask):  # noqa: F811
    quiltconfig.config(stack.url)
    auth.login_with_token(stack.issue_refresh_token())
    assert mode(auth.auth_path()) == mode(auth.credentials_path()) == 0o600
    auth.logout()
    assert mode(auth.auth_path()) == mode(auth.credentials_path()) == 0o600


# ---------------------------------------------------------------------------------------------------------
# Secrets never shown


def test_secrets_stay_out_of_error_messages(stack, monkeypatch):  # noqa: F811
    quiltconfig.config(stack.url)
    failures = []

    def failure_of(action) -> str:
        with pytest.raises(QuiltException) as caught:
            action()
        failures.append(str(caught.value))
        return str(caught.value)

    auth.save_auth({stack.url: {"refresh_token": "refresh-" + MARK, "access_token": "a", "expires_at": 0}})
    assert "Failed to update the access token" in failure_of(api_keys.list)
    auth.save_auth({stack.url: {"refresh_token": "r", "access_token": f"a\r\n{MARK}", "expires_at": 4e9}})
    assert "malformed" in failure_of(api_keys.list)
    auth.login_with_api_key(f"qk_{MARK}\n")  # from Python, not stripped: requests would quote the header
    assert "malformed" in failure_of(api_keys.list)
    auth.clear_api_key()
    auth.login_with_token(stack.issue_refresh_token())
    monkeypatch.setitem(stack.app.view_functions, "get_credentials",
                        lambda: {"AccessKeyId": "a", "SecretAccessKey": MARK, "SessionToken": MARK})
    assert "not a set of AWS credentials" in failure_of(auth.get_credentials)
    monkeypatch.setitem(stack.app.view_functions, "graphql",
                        lambda: {"data": {"apiKeyCreate": {"__typename": "Unknown", "secret": f"qk_{MARK}"}}})
    assert "Unexpected apiKeyCreate result" in failure_of(lambda: api_keys.create("k"))
    monkeypatch.setitem(stack.app.view_functions, "graphql", lambda: [f"qk_{MARK}"])
    assert "Invalid GraphQL response" in failure_of(lambda: catalog.graphql("{ me }", "me", {}))
    assert not [message for message in failures if MARK in message]


def test_secrets_stay_out_of_cli_output(stack, monkeypatch):  # noqa: F811
    quiltconfig.config(stack.url)
    auth.login_with_token(stack.issue_refresh_token())
    secrets = [auth.load_auth()[stack.url]["access_token"], auth.load_auth()[stack.url]["refresh_token"],
               auth.load_credentials()["secret_key"], auth.load_credentials()["token"]]
    _, secret = api_keys.create("ci")
    monkeypatch.setenv("QUILT_API_KEY", secret)
    outputs = [run(*argv) for argv in (["whoami"], ["whoami", "--json"], ["config", "--json"], ["status"],
                                       ["status", "--json"], ["api-keys", "list", "--json"])]
    assert all(code == 0 for code, _, _ in outputs), outputs
    for value in [*secrets, secret]:
        assert not [out for _, out, err in outputs if value in out + err]


def test_secrets_stay_out_of_daemon_argv_log_and_status(s3, scratch_bucket, mount, monkeypatch):
    bucket = scratch_bucket
    s3.put_object(Bucket=bucket, Key="data/a.txt", Body=b"a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"aws-{MARK}")
    monkeypatch.setenv("AWS_SESSION_TOKEN", f"session-{MARK}")
    monkeypatch.setenv("QUILT_API_KEY", f"qk_{MARK}")
    mnt = mount(f"s3://{bucket}", "--log-level", "DEBUG")
    assert (mnt / "data/a.txt").read_bytes() == b"a"
    (mnt / "data/b.txt").write_bytes(b"b")
    assert not (mnt / "data/missing").exists()
    with pytest.raises(OSError):
        os.listdir(mnt / ".packages/no/such/@" / ("0" * 64))
    record = mount_record(mnt)

    argv = Path(f"/proc/{record['pid']}/cmdline").read_bytes().split(b"\0")
    options = json.loads(next(arg for arg in argv if arg.startswith(b"{")))
    assert options["mountpoint"] == str(mnt)
    assert MARK.encode() not in b" ".join(argv)
    assert MARK not in Path(record["log_file"]).read_text(errors="replace")
    for argv in (["status"], ["status", "--json"]):
        result = run_cli(*argv)
        assert result.returncode == 0 and MARK not in result.stdout + result.stderr
    assert all(MARK not in path.read_text() for path in Path(mounts_dir()).glob("*.json"))
    # The daemon did use the planted credentials (moto accepts any), so they were there to leak.
    assert f"session-{MARK}".encode() in Path(f"/proc/{record['pid']}/environ").read_bytes()


# ---------------------------------------------------------------------------------------------------------
# Private caches, and names that stay inside them


def test_cache_and_staging_dirs_are_0700(own_disk_cache, s3, scratch_bucket, mount, tmp_path):
    bucket = scratch_bucket
    s3.put_object(Bucket=bucket, Key="data/a.txt", Body=b"hello")
    entry = mf.Entry("a.txt", f"s3://{bucket}/data/a.txt", 5, mf.SHA2_256_CHUNKED,
                     mf.hash_bytes(mf.SHA2_256_CHUNKED, b"hello"))
    manifest = mf.Manifest({"version": "v0", "message": None}, [entry])
    s3.put_object(Bucket=bucket, Key=f".quilt/packages/{manifest.top_hash}", Body=mf.write_manifest(manifest))
    s3.put_object(Bucket=bucket, Key=".quilt/named_packages/ns/pkg/latest", Body=manifest.top_hash.encode())
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    os.chmod(cache, 0o755)  # an existing, readable directory given as --cache-dir
    mnt = mount(f"s3://{bucket}", "--cache-dir", str(cache), "--disk-cache-size", "16M")
    assert (mnt / "data/a.txt").read_bytes() == b"hello"
    assert (mnt / ".packages/ns/pkg/latest/a.txt").read_bytes() == b"hello"
    with open(mnt / "data/new.txt", "wb") as file:
        file.write(b"new")
        staged = [p for p in (cache / "staging/data").iterdir()]
        assert [mode(p) for p in staged] == [0o600]
    indexes = Path(index_dir())
    directories = [cache, cache / "staging", cache / "staging/data", cache / "staging/journal", indexes,
                   Path(mounts_dir())]
    assert {str(d): oct(mode(d)) for d in directories} == {str(d): oct(0o700) for d in directories}
    index = indexes / index_name(f"s3://{bucket}", manifest.top_hash)
    assert [oct(mode(p)) for p in indexes.iterdir() if p == index] == [oct(0o600)]
    assert oct(mode(state.record_path(str(mnt)))) == oct(0o600)
    assert oct(mode(Path(state.read_record(str(mnt))["log_file"]))) == oct(0o600)  # it names keys and paths
    assert run_cli("umount", str(mnt)).returncode == 0  # the disk cache's blocks are all written now
    shared = [own_disk_cache, *(p for p in own_disk_cache.rglob("*") if p.is_dir())]
    assert len(shared) >= 4  # the root, blocks/, tmp/ and a directory of blocks
    assert {str(d): oct(mode(d)) for d in shared} == {str(d): oct(0o700) for d in shared}
    files = [p for p in own_disk_cache.rglob("*") if p.is_file()]
    assert len(files) >= 3  # the index and the blocks of the two files
    assert {str(p): oct(mode(p)) for p in files} == {str(p): oct(0o600) for p in files}

HOSTILE_KEYS = ["../../../escape", "a/../../escape", "%2e%2e/%2e%2e/escape", "..\\..\\escape", "./x"]
WRITTEN_NAMES = ["...", "..\\escape", " ..", "%2e%2e%2fescape", "-rf", "\x01ctl"]


def test_names_never_lead_outside_the_mount_or_cache(own_disk_cache, s3, scratch_bucket, mount, tmp_path):
    bucket = scratch_bucket
    for key in HOSTILE_KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    cache = tmp_path / "cache"
    outside = snapshot(tmp_path, skip=("cache", "mnt1", "disk-cache"))
    mnt = mount(f"s3://{bucket}", "--cache-dir", str(cache), "--disk-cache-size", "16M", "--sync-on-close")
    for path in mnt.rglob("*"):
        if path.is_file():
            path.read_bytes()
    for name in WRITTEN_NAMES:
        (mnt / name).write_bytes(name.encode())
    assert not list(tmp_path.parent.glob("escape")) and not (tmp_path / "escape").exists()
    assert snapshot(tmp_path, skip=("cache", "mnt1", "disk-cache")) == outside
    written = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert written == set(HOSTILE_KEYS) | set(WRITTEN_NAMES)
    patterns = {"manifests": r"[0-9a-f]{64}",
                "staging": r"lock|owner|(data/[0-9a-f]{32})|(journal/[0-9a-f]{32}\.json)"}
    for path in cache.rglob("*"):
        if path.is_file():
            top, _, rest = str(path.relative_to(cache)).partition("/")
            assert top in patterns and re.fullmatch(patterns[top], rest), path
    assert run_cli("umount", str(mnt)).returncode == 0  # the disk cache's blocks are all written now
    shared = [str(path.relative_to(own_disk_cache)) for path in own_disk_cache.rglob("*") if path.is_file()]
    assert any(name.startswith("blocks/") for name in shared)
    assert all(re.fullmatch(r"index\.sqlite(?:-wal|-shm)?|blocks/([0-9a-f]{2})/\1[0-9a-f]{30}", name)
               for name in shared), shared


FORGED = "1999-01-01 00:00:00,000 CRITICAL quiltmount: forged"


def test_a_newline_in_a_name_cannot_forge_a_log_line(s3, scratch_bucket, mount, s3_server):
    """Keys and paths are logged quoted, and any line break in a log message is escaped: names holding a
    newline yield no log line of their own, as their upload is logged (the test server refuses such keys:
    "not found", an error naming the key too), or their bytes are set aside after a crash, or umount lists
    them."""
    bucket = scratch_bucket
    mnt = mount(f"s3://{bucket}")
    record = mount_record(mnt)  # (asked before a file is open: a fork would flush it, "closed")
    log = Path(record["log_file"])
    (mnt / f"closed\n{FORGED}").write_bytes(b"a")
    with open(mnt / f"open\n{FORGED}", "wb", buffering=0) as writing:
        writing.write(b"b")
        wait_for(lambda: "closed" in log.read_text())
        os.kill(record["pid"], signal.SIGKILL)
        wait_for(lambda: not state.pid_alive(record["pid"]))
        with contextlib.suppress(OSError):
            writing.close()
    result = run_cli("mount", f"s3://{bucket}", str(mnt), "--endpoint-url", s3_server.endpoint_url)
    assert result.returncode == 0, result.stderr
    run_cli("umount", str(mnt))
    text = log.read_text()
    for quoted in (f"'closed\\n{FORGED}'", f"'open\\n{FORGED}' was still open for writing"):
        assert quoted in text
    assert not [line for line in text.splitlines() if line.startswith("1999")], text

# ---------------------------------------------------------------------------------------------------------
# --allow-other


def _options(mountpoint: Path) -> set[str]:
    with open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == str(mountpoint):
                return set(fields[3].split(","))
    raise AssertionError(f"{mountpoint} is not in /proc/mounts")


def _allow_other_permitted() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/etc/fuse.conf", encoding="utf-8") as conf:
            return any(line.strip() == "user_allow_other" for line in conf)
    except OSError:
        return False


def as_nobody(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True,
                          text=True, timeout=30)


@pytest.mark.skipif(not _allow_other_permitted(),
                    reason="allow_other needs root or user_allow_other in /etc/fuse.conf, which this machine lacks")
def test_allow_other_is_off_by_default_and_permissions_apply(s3, scratch_bucket, s3_server):
    bucket = scratch_bucket
    s3.put_object(Bucket=bucket, Key="private.txt", Body=b"only the owner")
    base = Path(tempfile.mkdtemp(prefix="quiltmount-allow-other-", dir="/tmp"))
    os.chmod(base, 0o755)  # other users must reach the mountpoints (pytest's tmp_path is 0700)
    default, shared = base / "default", base / "shared"
    try:
        for mountpoint, options in ((default, []), (shared, ["--allow-other", "--file-mode", "0600"])):
            mountpoint.mkdir()
            result = run_cli("mount", f"s3://{bucket}", str(mountpoint), "--endpoint-url", s3_server.endpoint_url,
                             "--cache-dir", str(base / f"{mountpoint.name}-cache"), *options)
            assert result.returncode == 0, result.stderr
        assert "allow_other" not in _options(default) and "default_permissions" in _options(default)
        assert {"allow_other", "default_permissions"} <= _options(shared)
        if os.geteuid() != 0:
            pytest.skip("checking what another user sees needs root (to run as nobody)")
        denied = as_nobody("stat", str(default))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        listed = as_nobody("ls", str(shared))
        assert listed.returncode == 0 and listed.stdout.split() == ["private.txt"]
        read = as_nobody("cat", str(shared / "private.txt"))
        assert read.returncode != 0 and "Permission denied" in read.stderr  # 0600, owned by root
        assert (shared / "private.txt").read_bytes() == b"only the owner"
    finally:
        for mountpoint in (default, shared):
            force_unmount(mountpoint)
        shutil.rmtree(base, ignore_errors=True)
