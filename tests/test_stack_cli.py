"""The Quilt stack verbs of the `quiltmount` command, as a user runs them (real subprocesses), against the
catalog test double; the state they leave is checked with the real quilt3."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mounthelpers import run_cli
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
