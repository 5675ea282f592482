"""`mount --quilt-credentials`: S3 requests use the AWS credentials of the Quilt catalog the user is logged in
to, refreshed from the catalog (the test double) while reads and uploads go on."""

from __future__ import annotations

import random
import subprocess
import time

from mounthelpers import run_cli
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
