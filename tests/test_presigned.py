"""Ranged reads through presigned URLs (quiltmount/storage/presigned.py, httpget.py), against the moto server.

What the fast path must keep: the bytes, boto3's errors, a fall back to boto3 for answers it cannot judge
(and switching itself off when they keep coming), no proxy bypassed, and kept-alive connections the server
closed never surfacing as errors.
"""

from __future__ import annotations

import random
import re
import socket
import threading
from collections.abc import Callable, Iterator

import boto3
import pytest
from botocore.config import Config

from faultproxy import FaultProxy
from quiltmount.errors import ObjectChanged
from quiltmount.storage.httpget import HostConnections
from quiltmount.storage.presigned import STRIKES, PresignedRanges
from quiltmount.storage.s3 import S3Store

BUCKET = "presigned-bucket"
DATA = random.Random(7).randbytes(3 << 20)


@pytest.fixture(scope="module")
def server_bucket(s3_server) -> str:
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, config=Config(s3={"addressing_style": "path"}))
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="data.bin", Body=DATA)
    return s3_server.endpoint_url


@pytest.fixture
def recorded(server_bucket) -> Iterator[tuple[FaultProxy, list[str]]]:
    """A proxy in front of the server that records each request's method and raw path (query included)."""
    seen: list[str] = []
    lock = threading.Lock()

    def record(method: str, raw_path: str) -> bool:
        with lock:
            seen.append(f"{method} {raw_path}")
        return False

    with FaultProxy(server_bucket, deny=record) as proxy:
        yield proxy, seen


def _refusing(marker: str) -> tuple[Callable[[str, str], bool], list[str]]:
    """A proxy `deny` predicate that refuses (403) the requests whose raw path holds `marker`, and the list
    of the paths it refused."""
    refused: list[str] = []

    def deny(method: str, raw_path: str) -> bool:
        if marker in raw_path:
            refused.append(raw_path)
            return True
        return False

    return deny, refused


def _ranges(count: int) -> list[tuple[int, int]]:
    rng = random.Random(count)
    return [(start, start + rng.randint(1, 300_000)) for start in (rng.randrange(len(DATA) - 300_000)
                                                                    for _ in range(count))]


def test_ranged_reads_are_plain_gets_of_presigned_urls(recorded):
    proxy, seen = recorded
    store = S3Store(BUCKET, endpoint_url=proxy.endpoint_url)
    try:
        obj = store.head("data.bin")
        seen.clear()
        for start, end in _ranges(20):
            assert store.get_range(obj, start, end) == DATA[start:end]
    finally:
        store.close()
    gets = [line for line in seen if line.startswith("GET ")]
    assert len(gets) == 20, seen
    assert all("X-Amz-Signature=" in line and "X-Amz-Credential=" in line for line in gets), gets[:2]


def test_an_answer_it_cannot_judge_goes_to_boto3_and_repeated_ones_switch_it_off(server_bucket):
    """A 403 to every presigned URL (a server refusing query-string auth, a wrong region's signature): each
    read is answered by boto3 instead, and after STRIKES of them the presigned path is no longer tried."""
    refuse_presigned, refused = _refusing("X-Amz-Signature=")
    with FaultProxy(server_bucket, deny=refuse_presigned) as proxy:
        store = S3Store(BUCKET, endpoint_url=proxy.endpoint_url)
        try:
            obj = store.head("data.bin")
            for start, end in _ranges(STRIKES + 5):
                assert store.get_range(obj, start, end) == DATA[start:end]
        finally:
            store.close()
    assert len(refused) == STRIKES


def test_tls_failures_of_the_presigned_path_count_as_strikes(server_bucket, monkeypatch):
    """The presigned path answers (None, 0) when TLS fails (a CA only boto3 was told about): boto3 reads
    instead, and after STRIKES such reads the path is off."""
    store = S3Store(BUCKET, endpoint_url=server_bucket)
    try:
        obj = store.head("data.bin")
        monkeypatch.setattr(store._presigned, "get", lambda *args: (None, 0))
        for start, end in _ranges(STRIKES):
            assert store._presigned.enabled
            assert store.get_range(obj, start, end) == DATA[start:end]
        assert not store._presigned.enabled
    finally:
        store.close()


def test_a_refused_old_url_is_signed_again_before_boto3_is_asked(server_bucket):
    """Credentials rotate: a URL signed with the old ones is refused (403).  Each read then signs the URL
    anew and reads through it; boto3 is not needed, and the path is not switched off."""
    refuse_stale, stale = _refusing("X-Amz-Signature=stale")
    with FaultProxy(server_bucket, deny=refuse_stale) as proxy:
        store = S3Store(BUCKET, endpoint_url=proxy.endpoint_url)
        try:
            obj = store.head("data.bin")
            presigned = store._presigned
            for start, end in _ranges(STRIKES + 2):
                target, connections, where = presigned._target(obj.key, None)
                presigned._urls[(obj.key, None)] = (  # the URL in the cache was signed "long ago"
                    re.sub(r"X-Amz-Signature=[0-9a-f]+", "X-Amz-Signature=stale", target), connections, where)
                assert store.get_range(obj, start, end) == DATA[start:end]
            assert len(stale) == STRIKES + 2 and presigned.enabled
        finally:
            store.close()


def test_changed_and_deleted_objects_fail_with_one_request(recorded, server_bucket):
    proxy, seen = recorded
    s3 = boto3.client("s3", endpoint_url=server_bucket, config=Config(s3={"addressing_style": "path"}))
    s3.put_object(Bucket=BUCKET, Key="changing.bin", Body=b"old" * 1000)
    store = S3Store(BUCKET, endpoint_url=proxy.endpoint_url)
    try:
        obj = store.head("changing.bin")
        assert store.get_range(obj, 0, 10) == b"oldoldoldo"
        s3.put_object(Bucket=BUCKET, Key="changing.bin", Body=b"new" * 1000)
        seen.clear()
        with pytest.raises(ObjectChanged, match="changed"):
            store.get_range(obj, 0, 10)  # If-Match: 412
        assert len(seen) == 1, seen
        s3.delete_object(Bucket=BUCKET, Key="changing.bin")
        seen.clear()
        with pytest.raises(ObjectChanged, match="deleted"):
            store.get_range(obj, 0, 10)  # 404
        assert len(seen) == 1, seen
    finally:
        store.close()


def test_a_proxy_in_the_environment_keeps_reads_on_boto3(server_bucket, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = boto3.client("s3", endpoint_url="http://s3.example.test", region_name="us-east-1",
                          config=Config(signature_version="s3v4"))
    assert not PresignedRanges(client, BUCKET, timeout=1).enabled
    monkeypatch.setenv("NO_PROXY", "s3.example.test")
    assert PresignedRanges(client, BUCKET, timeout=1).enabled


class _ClosingServer:
    """Answers each request on a connection with a keep-alive response, then closes the connection: what
    a server does to a connection it considers idle, seen from the client."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with client:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = client.recv(65536)
                    if not chunk:
                        break
                    request += chunk
                body = b"hello"
                client.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\n"
                               b"Connection: keep-alive\r\n\r\n" + body)

    def close(self) -> None:
        self.sock.close()


def test_connections_the_server_closed_are_replaced_not_reported():
    server = _ClosingServer()
    connections = HostConnections("http", "127.0.0.1", server.port, timeout=5)
    try:
        for _ in range(5):
            answer = connections.get("/b/k?sig=1", {"Range": "bytes=0-4"}, "http://127.0.0.1/b/k")
            assert answer.status == 206 and answer.read() == b"hello"
    finally:
        connections.close()
        server.close()
    assert server.connections == 5
