"""Tests for tests/s3server.py: the moto test server and its ranged-GET fix.

The fix must (a) return exactly what stock moto returns -- bytes, status and
headers -- for every kind of GET/HEAD, and (b) actually avoid reading the whole
object for a ranged GET.  (a) is checked against Python slicing and, request by
request, against stock moto (fix temporarily uninstalled); (b) by counting the
bytes read from the object's buffer inside the (in-process) server.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

try:
    import s3server
except ImportError:  # e.g. pytest --import-mode=importlib
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import s3server

from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.s3.responses import S3Response

MiB = 1024 * 1024
BUCKET = "quiltmount-range-test"
VBUCKET = "quiltmount-range-versioned"
PART = 5 * MiB  # S3's minimum multipart part size

# Response headers that legitimately differ between two identical requests.
VOLATILE_HEADERS = {"date", "x-amzn-requestid", "x-amz-request-id", "x-amz-id-2"}


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@dataclass
class Corpus:
    """The objects the tests read, and a way to (re)create them."""

    s3: Any
    objects: dict[str, bytes] = field(default_factory=dict)
    versions: list[tuple[str, bytes]] = field(default_factory=list)  # (id, data)

    def populate(self) -> None:
        rng = random.Random(20240611)
        s3 = self.s3
        s3.create_bucket(Bucket=BUCKET)
        self.objects = {
            "small.bin": rng.randbytes(1000),
            "empty.bin": b"",
            # > MOTO_S3_DEFAULT_KEY_BUFFER_SIZE: rolled over to a temp file
            "large.bin": rng.randbytes(20 * MiB),
        }
        for key, data in self.objects.items():
            s3.put_object(Bucket=BUCKET, Key=key, Body=data)

        parts = [rng.randbytes(PART), rng.randbytes(PART), rng.randbytes(MiB + 123)]
        upload = s3.create_multipart_upload(Bucket=BUCKET, Key="multipart.bin")
        etags = [
            s3.upload_part(
                Bucket=BUCKET,
                Key="multipart.bin",
                UploadId=upload["UploadId"],
                PartNumber=number,
                Body=body,
            )["ETag"]
            for number, body in enumerate(parts, start=1)
        ]
        s3.complete_multipart_upload(
            Bucket=BUCKET,
            Key="multipart.bin",
            UploadId=upload["UploadId"],
            MultipartUpload={
                "Parts": [
                    {"ETag": etag, "PartNumber": number}
                    for number, etag in enumerate(etags, start=1)
                ]
            },
        )
        self.objects["multipart.bin"] = b"".join(parts)

        s3.create_bucket(Bucket=VBUCKET)
        s3.put_bucket_versioning(
            Bucket=VBUCKET, VersioningConfiguration={"Status": "Enabled"}
        )
        self.versions = []
        for size in (6 * MiB, 6 * MiB + 17):
            data = rng.randbytes(size)
            version = s3.put_object(Bucket=VBUCKET, Key="doc.bin", Body=data)
            self.versions.append((version["VersionId"], data))


@pytest.fixture(scope="module")
def server() -> Iterator[s3server.S3TestServer]:
    with s3server.S3TestServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def s3(server: s3server.S3TestServer) -> Any:
    return server.client()


@pytest.fixture(scope="module")
def corpus(s3: Any) -> Corpus:
    corpus = Corpus(s3)
    corpus.populate()
    return corpus


@contextlib.contextmanager
def stock_moto() -> Iterator[None]:
    """Temporarily run unpatched moto."""
    s3server.uninstall_range_fix()
    try:
        yield
    finally:
        s3server.install_range_fix()


def backend_key(bucket: str, key: str) -> Any:
    """moto's FakeKey for an object (the server runs in this process)."""
    fake_key = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_object(bucket, key)
    assert fake_key is not None
    return fake_key


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def satisfiable_ranges(n: int) -> list[tuple[str, int, int]]:
    """(Range header, start, stop) for an object of n >= 1000 bytes.

    ``data[start:stop]`` is what S3 must return.
    """
    mid = n // 2
    return [
        ("bytes=0-0", 0, 1),  # first byte
        ("bytes=0-99", 0, 100),  # start
        (f"bytes={mid}-{mid + 4095}", mid, min(mid + 4096, n)),  # middle
        (f"bytes={n // 3}-{2 * n // 3}", n // 3, 2 * n // 3 + 1),  # big middle
        (f"bytes={n - 100}-{n - 1}", n - 100, n),  # end
        (f"bytes={n - 1}-{n - 1}", n - 1, n),  # last byte
        (f"bytes={n - 1}-", n - 1, n),  # last byte, open-ended
        ("bytes=0-", 0, n),  # open-ended, whole object
        (f"bytes={mid}-", mid, n),  # open-ended
        ("bytes=-1", n - 1, n),  # suffix: last byte
        ("bytes=-100", n - 100, n),  # suffix
        (f"bytes=-{n}", 0, n),  # suffix == size
        (f"bytes=-{n + 1000}", 0, n),  # suffix > size: whole object
        (f"bytes={n - 10}-{n + 1000}", n - 10, n),  # crosses the end: clipped
        (f"bytes=0-{n - 1}", 0, n),  # explicit whole object
        (f"bytes=0-{n * 10}", 0, n),  # way past the end: clipped
    ]


def unsatisfiable_ranges(n: int) -> list[str]:
    return [f"bytes={n}-", f"bytes={n}-{n + 10}", f"bytes={n + 5000}-{n + 6000}", "bytes=-0"]


def check_ranged_get(
    s3: Any, bucket: str, key: str, data: bytes, spec: str, start: int, stop: int, **kw: Any
) -> dict[str, Any]:
    response = s3.get_object(Bucket=bucket, Key=key, Range=spec, **kw)
    body = response["Body"].read()
    n = len(data)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 206, spec
    assert body == data[start:stop], spec
    assert response["ContentLength"] == stop - start, spec
    assert response["ContentRange"] == f"bytes {start}-{stop - 1}/{n}", spec
    assert response["AcceptRanges"] == "bytes", spec
    return response  # type: ignore[no-any-return]


def fetch(s3: Any, method: str, bucket: str, key: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    """(status, headers without volatile ones, body) of a GET/HEAD, errors included."""
    call = s3.get_object if method == "GET" else s3.head_object
    try:
        response = call(Bucket=bucket, Key=key, **kw)
        body = response["Body"].read() if "Body" in response else b""
    except ClientError as error:
        response = error.response
        body = repr(error.response.get("Error"))[:500].encode()
    meta = response["ResponseMetadata"]
    headers = {
        k: v for k, v in meta["HTTPHeaders"].items() if k.lower() not in VOLATILE_HEADERS
    }
    return meta["HTTPStatusCode"], headers, body


def request_variants(n: int, etag: str) -> list[tuple[str, dict[str, Any]]]:
    """GET/HEAD requests whose responses must be identical with and without the fix."""
    specs = [spec for spec, _, _ in satisfiable_ranges(max(n, 1000))]
    specs += unsatisfiable_ranges(n)
    specs += ["bytes=0-1,5-6", "bytes=abc", "bytes=5-2", "bytes=0-0", "bytes=-5", "bytes=0-"]
    variants: list[tuple[str, dict[str, Any]]] = [("GET", {}), ("HEAD", {})]
    variants += [("GET", {"Range": spec}) for spec in specs]
    variants += [("HEAD", {"Range": spec}) for spec in ("bytes=0-9", f"bytes={n}-", "bytes=-3")]
    variants += [
        ("GET", {"Range": "bytes=0-9", "IfMatch": etag}),
        ("GET", {"Range": "bytes=0-9", "IfMatch": '"0123456789abcdef0123456789abcdef"'}),
        ("GET", {"IfMatch": '"0123456789abcdef0123456789abcdef"'}),
        ("GET", {"Range": "bytes=0-9", "IfNoneMatch": etag}),
        ("GET", {"Range": "bytes=0-9", "IfNoneMatch": '"0123456789abcdef0123456789abcdef"'}),
        ("HEAD", {"IfMatch": '"0123456789abcdef0123456789abcdef"'}),
        ("GET", {"PartNumber": 1}),
        ("GET", {"PartNumber": 1, "Range": "bytes=0-9"}),
    ]
    return variants


class CountingBuffer:
    """Proxy for FakeKey._value_buffer that counts the bytes read from it."""

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped
        self.bytes_read = 0

    def read(self, *args: Any) -> bytes:
        data = self.wrapped.read(*args)
        self.bytes_read += len(data)
        return data  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


# --------------------------------------------------------------------------
# Range correctness
# --------------------------------------------------------------------------

NONEMPTY = ["small.bin", "large.bin", "multipart.bin"]


@pytest.mark.parametrize("key", NONEMPTY)
def test_ranged_get_matches_python_slicing(s3: Any, corpus: Corpus, key: str) -> None:
    data = corpus.objects[key]
    etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"]
    for spec, start, stop in satisfiable_ranges(len(data)):
        response = check_ranged_get(s3, BUCKET, key, data, spec, start, stop)
        assert response["ETag"] == etag, spec


@pytest.mark.parametrize("key", NONEMPTY + ["empty.bin"])
def test_unsatisfiable_range_is_416(s3: Any, corpus: Corpus, key: str) -> None:
    n = len(corpus.objects[key])
    for spec in unsatisfiable_ranges(n) + (["bytes=0-0", "bytes=0-9"] if n == 0 else []):
        with pytest.raises(ClientError) as info:
            s3.get_object(Bucket=BUCKET, Key=key, Range=spec)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416, spec
        assert info.value.response["Error"]["Code"] == "InvalidRange", spec


def test_multipart_ranges_across_part_boundaries(s3: Any, corpus: Corpus) -> None:
    data = corpus.objects["multipart.bin"]
    for boundary in (PART, 2 * PART):
        for start, stop in [(boundary - 10, boundary + 10), (boundary - 1, boundary + 1),
                            (boundary, boundary + 1), (boundary - MiB, boundary + MiB)]:
            check_ranged_get(s3, BUCKET, "multipart.bin", data, f"bytes={start}-{stop - 1}", start, stop)
    assert s3.head_object(Bucket=BUCKET, Key="multipart.bin")["ETag"].endswith('-3"')


def test_plain_get_and_head_unchanged(s3: Any, corpus: Corpus) -> None:
    for key, data in corpus.objects.items():
        response = s3.get_object(Bucket=BUCKET, Key=key)
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert response["Body"].read() == data
        assert "ContentRange" not in response
        head = s3.head_object(Bucket=BUCKET, Key=key)
        assert head["ContentLength"] == len(data)
        assert head["ETag"] == response["ETag"]


def test_versioned_ranged_get_returns_that_version(s3: Any, corpus: Corpus) -> None:
    (old_id, old), (new_id, new) = corpus.versions
    assert old_id != new_id and old[:100] != new[:100]
    for spec, start, stop in satisfiable_ranges(len(old))[:8]:
        response = check_ranged_get(s3, VBUCKET, "doc.bin", old, spec, start, stop, VersionId=old_id)
        assert response["VersionId"] == old_id
    for spec, start, stop in satisfiable_ranges(len(new))[:8]:
        response = check_ranged_get(s3, VBUCKET, "doc.bin", new, spec, start, stop)
        assert response["VersionId"] == new_id
    # beyond the end of the (shorter) old version, inside the newer one
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=VBUCKET, Key="doc.bin", Range=f"bytes={len(old)}-", VersionId=old_id)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416


def test_conditional_ranged_get(s3: Any, corpus: Corpus) -> None:
    data = corpus.objects["large.bin"]
    etag = s3.head_object(Bucket=BUCKET, Key="large.bin")["ETag"]
    check_ranged_get(s3, BUCKET, "large.bin", data, "bytes=10-19", 10, 20, IfMatch=etag)
    check_ranged_get(s3, BUCKET, "large.bin", data, "bytes=10-19", 10, 20, IfNoneMatch='"nope"')
    # stock moto 5.2.5: If-Match mismatch -> 412 PreconditionFailed (like S3)
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=BUCKET, Key="large.bin", Range="bytes=10-19", IfMatch='"nope"')
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"
    # If-None-Match hit -> 304 Not Modified
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=BUCKET, Key="large.bin", Range="bytes=10-19", IfNoneMatch=etag)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304


@pytest.mark.parametrize("key", NONEMPTY + ["empty.bin", "versioned"])
def test_responses_identical_to_stock_moto(s3: Any, corpus: Corpus, key: str) -> None:
    """Status, headers and body of many GET/HEAD variants equal stock moto's."""
    bucket, extra = BUCKET, {}
    if key == "versioned":
        bucket, key, extra = VBUCKET, "doc.bin", {"VersionId": corpus.versions[0][0]}
    n = s3.head_object(Bucket=bucket, Key=key, **extra)["ContentLength"]
    etag = s3.head_object(Bucket=bucket, Key=key, **extra)["ETag"]
    variants = request_variants(n, etag)

    assert s3server.range_fix_installed()
    fixed = [fetch(s3, method, bucket, key, **extra, **kw) for method, kw in variants]
    with stock_moto():
        stock = [fetch(s3, method, bucket, key, **extra, **kw) for method, kw in variants]

    mismatches = [
        (method, kw, f[:2], s[:2], len(f[2]), len(s[2]))
        for (method, kw), f, s in zip(variants, fixed, stock)
        if f != s
    ]
    assert not mismatches, mismatches


# --------------------------------------------------------------------------
# The fix is effective
# --------------------------------------------------------------------------


def test_ranged_get_reads_only_the_slice(s3: Any, corpus: Corpus) -> None:
    data = corpus.objects["large.bin"]
    fake_key = backend_key(BUCKET, "large.bin")
    fake_key.etag  # make sure the (cached) ETag needs no full read
    counter = CountingBuffer(fake_key._value_buffer)
    fake_key._value_buffer = counter
    start, stop = 7 * MiB + 3, 8 * MiB + 3
    try:
        check_ranged_get(s3, BUCKET, "large.bin", data, f"bytes={start}-{stop - 1}", start, stop)
        with_fix = counter.bytes_read

        counter.bytes_read = 0
        with stock_moto():
            check_ranged_get(s3, BUCKET, "large.bin", data, f"bytes={start}-{stop - 1}", start, stop)
        stock = counter.bytes_read
    finally:
        fake_key._value_buffer = counter.wrapped

    assert with_fix == stop - start, f"read {with_fix} bytes for a {stop - start} byte range"
    # control: the counter does see stock moto's full read
    assert stock >= len(data)


def test_lazy_value_view(corpus: Corpus) -> None:
    fake_key = backend_key(BUCKET, "small.bin")
    data = corpus.objects["small.bin"]
    view = s3server.LazyKeyValue(fake_key)
    assert len(view) == len(data) and bool(view)
    for item in [slice(0, 10), slice(990, 2000), slice(-5, None), slice(None), slice(5, 2),
                 slice(0, 100, 3), slice(2000, 3000)]:
        assert view[item] == data[item], item
    assert view[0] == data[0] and view[-1] == data[-1]
    with pytest.raises(IndexError):
        view[len(data)]
    assert bytes(view) == data == view.tobytes()
    assert not s3server.LazyKeyValue(backend_key(BUCKET, "empty.bin"))


def test_install_is_idempotent(s3: Any, corpus: Corpus) -> None:
    patched = (S3Response.get_object, S3Response.key_response)
    s3server.install_range_fix()
    s3server.install_range_fix()
    assert (S3Response.get_object, S3Response.key_response) == patched
    with stock_moto():
        assert not s3server.range_fix_installed()
        s3server.uninstall_range_fix()  # idempotent too
        assert S3Response.get_object is not patched[0]
    assert s3server.range_fix_installed()
    data = corpus.objects["small.bin"]
    check_ranged_get(s3, BUCKET, "small.bin", data, "bytes=5-9", 5, 10)


# --------------------------------------------------------------------------
# Server plumbing
# --------------------------------------------------------------------------


def test_server_basics(server: s3server.S3TestServer) -> None:
    assert server.endpoint_url == f"http://127.0.0.1:{server.port}"
    client = server.client()
    assert client.meta.endpoint_url == server.endpoint_url
    assert client.meta.region_name == "us-east-1"
    assert client.meta.config.s3["addressing_style"] == "path"


def test_reset_wipes_state(server: s3server.S3TestServer, s3: Any, corpus: Corpus) -> None:
    # NB: moto's state is global to the process, so this wipes every bucket of
    # every in-process server (e.g. conftest's session server) -- fine between
    # tests, since each of them creates its own buckets.
    s3.create_bucket(Bucket="quiltmount-reset-me")
    server.reset()
    assert s3.list_buckets()["Buckets"] == []
    corpus.populate()  # restore for any test that runs after this one


def test_explicit_port_in_use_fails_fast(server: s3server.S3TestServer) -> None:
    other = s3server.S3TestServer(port=server.port, start_timeout=5)
    with pytest.raises(RuntimeError):
        other.start()
    assert not other.running


def test_command_line_server() -> None:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "s3server.py")
    proc = subprocess.Popen(
        [sys.executable, script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        client = boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}),
        )
        client.create_bucket(Bucket="quiltmount-cli")
        client.put_object(Bucket="quiltmount-cli", Key="k", Body=b"0123456789")
        body = client.get_object(Bucket="quiltmount-cli", Key="k", Range="bytes=3-5")["Body"]
        assert body.read() == b"345"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
