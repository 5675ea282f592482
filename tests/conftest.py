"""Fixtures: an isolated environment, a real S3 server on 127.0.0.1 (moto + range fix), real FUSE mounts.

Every mount made through `mount` is unmounted in teardown, even when the test fails.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from mounthelpers import force_unmount, run_cli  # noqa: E402
from s3server import S3TestServer  # noqa: E402

_bucket_numbers = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak-seconds", type=float, default=40.0,
                     help="how long tests/test_soak.py runs its workers (default 40)")


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """XDG dirs, HOME and AWS settings of the tests' own, inherited by every daemon they start."""
    home = tmp_path_factory.mktemp("home")
    saved = dict(os.environ)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN",
                 "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        os.environ.pop(name, None)
    os.environ.update({
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_STATE_HOME": str(home / ".local/state"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "QUILT_DISABLE_USAGE_METRICS": "true",
    })
    yield home
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def own_disk_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own shared disk cache (inherited by the daemons it starts): blocks cached by one test
    must not turn another's GETs into hits."""
    path = tmp_path / "disk-cache"
    monkeypatch.setenv("QUILTMOUNT_DISK_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3TestServer]:
    with S3TestServer() as server:
        yield server


@pytest.fixture(scope="session")
def s3(s3_server: S3TestServer):
    """A boto3 client of the test server."""
    return s3_server.client()


@pytest.fixture
def bucket(s3) -> str:
    """A new, empty bucket for one test."""
    name = f"test-bucket-{next(_bucket_numbers)}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def mount(tmp_path: Path, s3_server: S3TestServer) -> Iterator[Callable[..., Path]]:
    """Factory: `mount(source, *options)` mounts with the CLI and returns the mountpoint."""
    mounted: list[Path] = []
    names = itertools.count(1)

    def do_mount(source: str, *options: str) -> Path:
        mountpoint = tmp_path / f"mnt{next(names)}"
        mountpoint.mkdir()
        mounted.append(mountpoint)
        result = run_cli("mount", source, str(mountpoint), "--endpoint-url", s3_server.endpoint_url, *options)
        assert result.returncode == 0, result.stderr
        return mountpoint

    yield do_mount
    for mountpoint in mounted:
        force_unmount(mountpoint)
