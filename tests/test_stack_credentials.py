"""`mount --quilt-credentials`: S3 requests use the AWS credentials of the Quilt catalog the user is logged in
to, refreshed from the catalog (the test double) while reads and uploads go on.  The package functions use them
as quilt3's do, without an option."""

from __future__ import annotations

import random
import subprocess
import time

from mounthelpers import run_cli
import quiltmount
from quiltmount import auth, quiltconfig
from test_config_auth import clean, quilt3_module, stack  # noqa: F401  (fixtures: quilt3 state, catalog double)
from test_writes import body, wait_for


def _credential_requests(stack) -> int:
    return sum(1 for request in stack.requests if request["path"] == "/api/auth/get_credentials")


def test_stack_credentials_are_refreshed_mid_mount(stack, s3, bucket, mount, tmp_path):
    stack.credentials_ttl = 3  # seconds: botocore refreshes credentials this close to expiry before each use
    quiltconfig.config(stack.url)
    auth.login_with_token(stack.issue_refresh_token())
    data = random.Random(1).randbytes(24 << 20)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=data)
    mnt = mount(f"s3://{bucket}", "--quilt-credentials")
    before = _credential_requests(stack)
    deadline = time.monotonic() + 8  # longer than two lifetimes of the credentials
    written = 0
    while time.monotonic() < deadline:
        assert (mnt / "big.bin").read_bytes() == data
        (mnt / f"up{written}.txt").write_bytes(b"x" * written)
        written += 1
        subprocess.run(["sync"], check=True)
        time.sleep(0.5)
    wait_for(lambda: all(body(s3, bucket, f"up{i}.txt") == b"x" * i for i in range(written)), timeout=60)
    assert _credential_requests(stack) - before >= 2, "the daemon never refreshed the stack's credentials"


def test_quilt_credentials_need_a_login(clean, bucket, tmp_path, s3_server):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = run_cli("mount", f"s3://{bucket}", str(mnt), "--quilt-credentials", "--endpoint-url",
                     s3_server.endpoint_url)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "quiltmount login" in result.stderr, result.stderr


def test_package_functions_use_the_catalog_logins_credentials(stack, quilt3_module, s3, bucket, monkeypatch,
                                                               s3_server):
    """As quilt3's: logged in to the catalog, with no AWS credentials of one's own, the package functions (CLI
    and Python) reach an S3 registry with the catalog's credentials (`get_boto3_session()`)."""
    quiltconfig.config(stack.url)
    auth.login_with_token(stack.issue_refresh_token())
    top_hash = "a" * 64
    s3.put_object(Bucket=bucket, Key=".quilt/named_packages/ns/pkg/latest", Body=top_hash.encode())
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(variable)
    registry = f"s3://{bucket}"
    listed = run_cli("packages", "list", registry)
    assert (listed.returncode, listed.stdout) == (0, "ns/pkg\n"), listed.stderr
    versions = list(quiltmount.list_package_versions("ns/pkg", registry))
    assert versions == list(quilt3_module.list_package_versions("ns/pkg", registry)) == [("latest", top_hash)]
    quiltmount.delete_package("ns/pkg", registry)
    assert list(quiltmount.list_packages(registry)) == []
