"""What uploads put on the wire: every body S3 receives from the mount carries a SHA-256 checksum header of
exactly its bytes, and over plain HTTP the payload is not hashed a second time for the signature
(`UNSIGNED-PAYLOAD`: the signed checksum header already binds the body)."""

from __future__ import annotations

import base64
import errno
import hashlib
import random
import threading
from typing import Iterator

import boto3
import pytest
from botocore.config import Config

from faultproxy import FaultProxy, _Upstream
from quiltmount.errors import StorageError
from quiltmount.storage.s3 import S3Store, _PartBody
from quiltmount.units import PART_SIZE

BUCKET = "upload-wire-bucket"


class RecordingProxy(FaultProxy):
    """Forwards every request and keeps (method, path, headers, body) of each."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self._record_lock = threading.Lock()

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Upstream:
        with self._record_lock:
            self.requests.append((method, path, {k.lower(): v for k, v in headers.items()}, body))
        return super().forward(method, path, headers, body)


@pytest.fixture
def proxy(s3_server) -> Iterator[RecordingProxy]:
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, config=Config(s3={"addressing_style": "path"}))
    if BUCKET not in {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    with RecordingProxy(s3_server.endpoint_url) as recording:
        yield recording


@pytest.mark.parametrize("size", [300_000, PART_SIZE + 1_000_000], ids=["single put", "multipart"])
def test_upload_bodies_carry_their_checksum_and_are_not_hashed_again(proxy: RecordingProxy, tmp_path, s3_server,
                                                                   size: int):
    data = random.Random(size).randbytes(size)
    local = tmp_path / "file.bin"
    local.write_bytes(data)
    store = S3Store(BUCKET, endpoint_url=proxy.endpoint_url)
    try:
        info = store.put_file("wire/file.bin", str(local))
    finally:
        store.close()

    puts = [(path, headers, body) for method, path, headers, body in proxy.requests if method == "PUT"]
    assert puts, "no upload went through the proxy"
    assert sum(len(body) for _, _, body in puts) == size  # every byte was sent exactly once
    for path, headers, body in puts:
        assert headers.get("x-amz-checksum-sha256") == base64.b64encode(hashlib.sha256(body).digest()).decode(), path
        assert headers.get("x-amz-content-sha256") == "UNSIGNED-PAYLOAD", path
        assert "x-amz-checksum-sha256" in headers["authorization"].lower(), "the checksum header must be signed"
    assert len(puts) == (1 if size < PART_SIZE else 2)

    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, config=Config(s3={"addressing_style": "path"}))
    assert info.size == size
    assert s3.get_object(Bucket=BUCKET, Key="wire/file.bin")["Body"].read() == data


def test_a_part_whose_file_gets_shorter_while_it_is_sent_fails_at_once(tmp_path):
    """A part streams from its staged file; a truncate meanwhile must fail the part, not leave the request
    short of its Content-Length (the server would wait for the rest until the read timeout)."""
    path = tmp_path / "staged"
    path.write_bytes(random.Random(3).randbytes(1 << 20))
    with _PartBody.from_filename(str(path), 0, 1 << 20, enable_callbacks=False) as body:
        assert len(body.read(1000)) == 1000
        with open(path, "r+b") as file:
            file.truncate(5000)
        with pytest.raises(StorageError) as failure:
            body.read(64 << 10)
        assert failure.value.errno == errno.EIO
    with _PartBody.from_filename(str(path), 0, 5000, enable_callbacks=False) as body:
        assert len(body.read()) == 5000 and body.read(10) == b""  # the whole part, then its end: no error
