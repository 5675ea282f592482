"""The Quilt stack verbs of the `quiltmount` command, as a user runs them (real subprocesses), against the
catalog test double; the state they leave is checked with the real quilt3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mounthelpers import LOGIN_PROMPT, on_terminal, run_cli
from test_config_auth import clean, quilt3_module, stack  # noqa: F401  (fixtures)


def cli(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quiltmount", *args], input=stdin, capture_output=True,
                          text=True, timeout=120, env=env)


def test_login_whoami_api_keys_search_bucket_logout(stack, clean, s3, bucket, tmp_path, monkeypatch, s3_server):
    quilt3 = clean
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    configured = cli("config", stack.url)
    assert configured.returncode == 0, configured.stderr
    assert quilt3.config()["registryUrl"] == stack.url

    logged = cli("login", stdin=stack.issue_refresh_token() + "\n")  # stdin is not a terminal: read the code
    assert logged.returncode == 0, logged.stderr
    assert f"{stack.url}/login" in logged.stdout + logged.stderr
    assert quilt3.logged_in() == stack.url  # quilt3 sees the login quiltmount made

    whoami = json.loads(cli("whoami", "--json").stdout)
    assert whoami["catalog"] == stack.url and whoami["registry"] == stack.url and whoami["auth"]

    created = cli("api-keys", "create", "ci-key", "--expires-in-days", "30", "--json")
    assert created.returncode == 0, created.stderr
    secret = json.loads(created.stdout)["secret"]
    assert secret.startswith("qk_")
    listed = json.loads(cli("api-keys", "list", "--json").stdout)
    assert [key["name"] for key in listed] == ["ci-key"]
    duplicate = cli("api-keys", "create", "ci-key")
    assert duplicate.returncode == 1 and "Name taken" in duplicate.stderr and "Traceback" not in duplicate.stderr

    s3.put_object(Bucket=bucket, Key="reports/quarterly.csv", Body=b"a,b\n")
    hits = json.loads(cli("search", "quarterly", "--bucket", bucket, "--json").stdout)
    assert any(hit["_source"]["key"] == "reports/quarterly.csv" for hit in hits)

    with_key = dict(os.environ, CI_KEY=secret)
    keyed = cli("api-keys", "list", "--json", "--api-key-env", "CI_KEY", env=with_key)
    assert keyed.returncode == 0, keyed.stderr

    local = tmp_path / "up.txt"
    local.write_text("uploaded")
    assert cli("bucket", "put", f"s3://{bucket}", "in/up.txt", str(local)).returncode == 0
    assert "in/up.txt" in cli("bucket", "ls", f"s3://{bucket}", "in/").stdout
    fetched = tmp_path / "down.txt"
    assert cli("bucket", "fetch", f"s3://{bucket}", "in/up.txt", str(fetched)).returncode == 0
    assert fetched.read_text() == "uploaded"
    assert cli("bucket", "rm", f"s3://{bucket}", "in/up.txt").returncode == 0
    assert "in/up.txt" not in {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}

    revoked = cli("api-keys", "revoke", "--secret-env", "CI_KEY", env=with_key)
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(cli("api-keys", "list", "--json").stdout) == []

    assert cli("logout").returncode == 0
    assert quilt3.logged_in() is None
    denied = cli("api-keys", "list")
    assert denied.returncode == 1 and len(denied.stderr.strip().splitlines()) == 1


def test_usage_and_configuration_errors(clean):
    assert run_cli("api-keys").returncode == 2
    assert run_cli("api-keys", "create").returncode == 2
    unconfigured = run_cli("api-keys", "list")
    assert unconfigured.returncode == 1 and "Traceback" not in unconfigured.stderr
    bad_url = run_cli("config", "not a url")
    assert bad_url.returncode == 1 and "Invalid URL" in bad_url.stderr


# -- on a terminal ----------------------------------------------------------------------------------------------

PROMPT = LOGIN_PROMPT
def test_progress_bars_only_on_a_terminal(s3, bucket, tmp_path, s3_server):
    source = tmp_path / "src"
    for name in ("a.bin", "sub/b.bin"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(os.urandom(300_000))
    env = {k: v for k, v in os.environ.items() if k != "QUILT_MINIMIZE_STDOUT"}
    env["AWS_ENDPOINT_URL"] = s3_server.endpoint_url

    status, screen = on_terminal("quiltmount.cli:main", "bucket", "put", f"s3://{bucket}", "pre/", str(source),
                                 env=env)
    assert status == 0, screen
    assert "100%" in screen and "600k/600k" in screen, screen
    status, screen = on_terminal("quiltmount.cli:main", "bucket", "fetch", f"s3://{bucket}", "pre/",
                                 f"{tmp_path / 'out'}/", env=env)
    assert status == 0, screen
    assert "100%" in screen and "600k/600k" in screen, screen
    assert (tmp_path / "out/sub/b.bin").read_bytes() == (source / "sub/b.bin").read_bytes()

    quiet = on_terminal("quiltmount.cli:main", "bucket", "fetch", f"s3://{bucket}", "pre/a.bin",
                        str(tmp_path / "q.bin"), env=dict(env, QUILT_MINIMIZE_STDOUT="true"))
    assert quiet == (0, "")
    for args in (("put", f"s3://{bucket}", "again/", str(source)), ("fetch", f"s3://{bucket}", "pre/",
                                                                      f"{tmp_path / 'piped'}/")):
        piped = cli("bucket", *args, env=env)  # stdout and stderr are pipes: no progress
        assert (piped.returncode, piped.stdout, piped.stderr) == (0, "", "")


def _browser(tmp_path: Path) -> tuple[dict, Path]:
    """An environment whose browser (quilt3 runs `xdg-open`, quiltmount Python's `webbrowser`, which honours
    $BROWSER) records the URL it was asked to open instead of opening anything."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    opened = tmp_path / "opened.txt"
    script = bin_dir / "xdg-open"
    script.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n')
    script.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", BROWSER=str(script))
    return env, opened


def test_login_on_a_terminal_reads_the_code_without_echo_like_quilt3(stack, clean, tmp_path):
    quilt3 = clean
    env, opened = _browser(tmp_path)
    assert cli("config", stack.url).returncode == 0

    code = stack.issue_refresh_token()
    status, ours = on_terminal("quiltmount.cli:main", "login", env=env, answer=code + "\n")
    assert status == 0, ours
    assert code not in ours  # getpass turned echo off
    assert ours.endswith(f"{PROMPT}\r\nlogged in to {stack.url}\r\n"), ours
    assert quilt3.logged_in() == stack.url
    assert cli("logout").returncode == 0

    code = stack.issue_refresh_token()
    status, theirs = on_terminal("quilt3.main:main", "login", env=env, answer=code + "\n")
    assert status == 0, theirs
    assert code not in theirs
    assert ours.split(PROMPT)[0] == theirs.split(PROMPT)[0] == (
        f"Launching a web browser...\r\nIf that didn't work, please visit the following URL: {stack.url}/login"
        "\r\n\r\n")
    assert quilt3.logged_in() == stack.url
    deadline = time.monotonic() + 10
    while opened.read_text().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # webbrowser does not wait for the browser it starts
    assert opened.read_text() == f"{stack.url}/login\n" * 2


def test_login_on_a_terminal_cancelled_with_ctrl_d(stack, clean, tmp_path):
    env, _ = _browser(tmp_path)
    assert cli("config", stack.url).returncode == 0
    status, screen = on_terminal("quiltmount.cli:main", "login", env=env, answer="\x04")
    assert status == 1, screen
    assert screen.endswith("quiltmount: error: No code entered; login cancelled.\r\n"), screen
    assert "Traceback" not in screen and clean.logged_in() is None
