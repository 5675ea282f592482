"""Faults between the mount and S3, injected by tests/faultproxy.py.

Under each fault, reads (`cat`, Python, `dd`) retry with backoff and return the right bytes, or fail with EIO
within the bound docs/SEMANTICS.md ("Faults") gives, never with wrong bytes and never hanging; writes stay
staged and are uploaded once the fault clears; other files are served meanwhile.  The mount runs with
`--s3-timeout 1` so that stalls are detected in a second instead of ten: the code paths are the real ones.
"""

from __future__ import annotations

import errno
import os
import random
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from faultproxy import Fault, FaultProxy
from mounthelpers import force_unmount, fresh_record, on_terminal, run_cli
from quiltmount.errors import AccessDenied, ObjectChanged, StorageError
from quiltmount.fs.blockcache import BlockCache
from quiltmount.fs.readahead import BlockFetcher
from quiltmount.fs.staging import StagingArea
from quiltmount.fs.uploads import Uploader
from quiltmount.storage.base import ObjectInfo
from quiltmount.storage.local import LocalStore
from quiltmount.storage.s3 import ATTEMPTS, READ_BACKOFF, S3Store

BUCKET = "fault-bucket"
TIMEOUT = 1  # --s3-timeout of the mount under test
SIZE = (3 << 20) + 1234  # past the 2 MiB of random reads, so block reads and read-ahead run too
#: The documented bound on one read(2): a round of ATTEMPTS tries with backoff, then one more try when the
#: kernel re-reads the failed page (docs/SEMANTICS.md); plus slack for starting a process on a busy machine.
READ_BOUND = (ATTEMPTS + 1) * TIMEOUT + READ_BACKOFF * (2 ** (ATTEMPTS - 1) - 1) + 3.0
HUNG = 60.0  # a read still running after this long is hung: the test fails instead of waiting forever


def payload(name: str, size: int = SIZE) -> bytes:
    return random.Random(name).randbytes(size)


def key_path(key: str) -> str:
    """A fault `path` matching exactly one key of the bucket."""
    return re.escape(f"/{BUCKET}/{key}") + "$"


def reads_of(key: str) -> dict[str, object]:
    """Fault criteria selecting the data reads of one key (ranged GETs), not its HEADs."""
    return {"method": "GET", "path": key_path(key), "ranged": True}


@dataclass
class Read:
    data: bytes
    errno: int | None
    seconds: float


def _run_tool(command: list[str]) -> Read:
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, timeout=HUNG)
    seconds = time.monotonic() - started
    if result.returncode == 0:
        return Read(result.stdout, None, seconds)
    return Read(result.stdout, errno.EIO if b"Input/output error" in result.stderr else -1, seconds)


def cat(path: Path) -> Read:
    return _run_tool(["cat", str(path)])


def dd(path: Path) -> Read:
    return _run_tool(["dd", f"if={path}", "bs=1M", "status=none"])


def python_read(path: Path) -> Read:
    """`open().read()` in 1 MiB pieces, in a thread: a hung read fails the test instead of hanging it."""
    result: Future[Read] = Future()

    def read() -> None:
        started, data = time.monotonic(), bytearray()
        try:
            with open(path, "rb") as file:
                while chunk := file.read(1 << 20):
                    data += chunk
        except OSError as exc:
            result.set_result(Read(bytes(data), exc.errno, time.monotonic() - started))
            return
        result.set_result(Read(bytes(data), None, time.monotonic() - started))

    threading.Thread(target=read, daemon=True).start()
    return result.result(timeout=HUNG)


READERS: dict[str, Callable[[Path], Read]] = {"cat": cat, "python": python_read, "dd": dd}

#: Faults that hit the first GETs of a key and then let the rest through: reads must recover.  Three
#: failures are fewer than one read's ATTEMPTS, and more than the kernel absorbs by re-reading a failed page
#: by itself; cuts come after 1,000 bytes, so that the kernel's 4 KiB re-read is cut too.
TRANSIENT: dict[str, Callable[[str], Fault]] = {
    "503-slowdown": lambda key: Fault.error(503, "SlowDown", **reads_of(key), times=3),
    "500-internal-error": lambda key: Fault.error(500, "InternalError", **reads_of(key), times=3),
    "reset-before-answer": lambda key: Fault.reset(after=None, **reads_of(key), times=3),
    "reset-mid-body": lambda key: Fault.reset(after=1000, **reads_of(key), times=3),
    "truncated-body": lambda key: Fault.truncate(after=1000, **reads_of(key), times=3),
    "short-answer": lambda key: Fault.truncate(after=1000, honest=True, **reads_of(key), times=3),
    "stall-before-answer": lambda key: Fault.stall(**reads_of(key), times=1),
    "stall-mid-body": lambda key: Fault.stall(after=1000, **reads_of(key), times=1),
    "latency": lambda key: Fault.latency(0.2, **reads_of(key)),
}
#: Faults that last: every read of the key must end in EIO, in time.
PERSISTENT: dict[str, Callable[[str], Fault]] = {
    "503-slowdown": lambda key: Fault.error(503, "SlowDown", **reads_of(key)),
    "500-internal-error": lambda key: Fault.error(500, "InternalError", **reads_of(key)),
    "reset-mid-body": lambda key: Fault.reset(after=1000, **reads_of(key)),
    "truncated-body": lambda key: Fault.truncate(after=1000, **reads_of(key)),
    "short-answer": lambda key: Fault.truncate(after=1000, honest=True, **reads_of(key)),
    "stall-before-answer": lambda key: Fault.stall(**reads_of(key)),
    "stall-mid-body": lambda key: Fault.stall(after=1000, **reads_of(key)),
}
OTHER_KEYS = ["serve-stalled.bin", "serve-other.bin", "store.bin", "meta/a.txt", "meta/b.txt", "meta2/c.txt"]
READ_AHEAD_KEY, READ_AHEAD_SIZE = "read-ahead.bin", 32 << 20


def all_keys() -> dict[str, int]:
    keys = {f"ok-{case}-{reader}.bin": SIZE for case in TRANSIENT for reader in READERS}
    keys.update({f"eio-{case}.bin": SIZE for case in PERSISTENT})
    keys.update({key: SIZE for key in OTHER_KEYS})
    keys[READ_AHEAD_KEY] = READ_AHEAD_SIZE
    return keys


@dataclass
class FaultyMount:
    mnt: Path
    proxy: FaultProxy


@pytest.fixture(scope="module")
def proxy(s3_server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.endpoint_url) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def faulty(s3, proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyMount]:
    """One mount through the proxy for the whole module (each test uses keys of its own)."""
    s3.create_bucket(Bucket=BUCKET)
    for key, size in all_keys().items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=payload(key, size))
    mnt = tmp_path_factory.mktemp("faults") / "mnt"
    mnt.mkdir()
    result = run_cli("mount", f"s3://{BUCKET}", str(mnt), "--endpoint-url", proxy.endpoint_url,
                     "--s3-timeout", str(TIMEOUT), "--upload-attempts", "1")
    assert result.returncode == 0, result.stderr
    try:
        yield FaultyMount(mnt, proxy)
    finally:
        proxy.clear()
        force_unmount(mnt)


@pytest.fixture(autouse=True)
def no_fault_outlives_its_test(proxy: FaultProxy) -> Iterator[None]:
    yield
    proxy.clear()


# -- the proxy itself -------------------------------------------------------------------------------------
def test_the_proxy_injects_each_fault_on_the_requests_it_selects(faulty: FaultyMount):
    config = Config(retries={"total_max_attempts": 1}, read_timeout=TIMEOUT, s3={"addressing_style": "path"})
    client = boto3.client("s3", endpoint_url=faulty.proxy.endpoint_url, config=config)  # no retries
    key = "store.bin"
    proxy = faulty.proxy

    def get(byte_range: str | None = "bytes=0-199999") -> bytes:
        extra = {"Range": byte_range} if byte_range else {}
        return client.get_object(Bucket=BUCKET, Key=key, **extra)["Body"].read()

    with proxy.inject(Fault.error(503, "SlowDown", path=key_path(key), ranged=True)) as fault:
        with pytest.raises(botocore.exceptions.ClientError, match="SlowDown"):
            get()
        assert len(get(None)) == SIZE and fault.hits == 1  # not ranged: not selected
    with proxy.inject(Fault.truncate(after=1000, path=key_path(key))):
        with pytest.raises(botocore.exceptions.ResponseStreamingError):
            get()
    with proxy.inject(Fault.truncate(after=1000, honest=True, path=key_path(key))):
        assert get() == payload(key)[:1000]
    with proxy.inject(Fault.reset(after=1000, path=key_path(key))):
        # A reset drops what the client had not read yet: on a busy machine, the headers too.
        with pytest.raises((botocore.exceptions.ResponseStreamingError, botocore.exceptions.ConnectionClosedError)):
            get()
    with proxy.inject(Fault.stall(path=key_path(key))):
        with pytest.raises(botocore.exceptions.ReadTimeoutError):
            get()
    with proxy.inject(Fault.latency(0.5, path=key_path(key), min_range=1 << 20)) as fault:
        started = time.monotonic()
        get()  # 200,000 bytes: below min_range
        get("bytes=0-1048575")
        assert fault.hits == 1 and time.monotonic() - started >= 0.5
    assert get() == payload(key)[:200_000]  # every fault removed: requests pass unchanged


# -- the layers below FUSE --------------------------------------------------------------------------------
def test_store_reads_retry_with_backoff_a_bounded_number_of_times(faulty: FaultyMount):
    store = S3Store(BUCKET, endpoint_url=faulty.proxy.endpoint_url, timeout=TIMEOUT)
    key, proxy = "store.bin", faulty.proxy
    obj = store.head(key)
    expected = payload(key)[:100_000]

    with proxy.inject(Fault.truncate(after=10, honest=True, path=key_path(key), times=ATTEMPTS - 1)) as fault:
        assert store.get_range(obj, 0, 100_000) == expected
        assert fault.hits == ATTEMPTS - 1
    with proxy.inject(Fault.error(503, "SlowDown", path=key_path(key))) as fault:
        started = time.monotonic()
        with pytest.raises(StorageError) as failure:
            store.get_range(obj, 0, 100_000)
        assert failure.value.errno == errno.EIO and fault.hits == ATTEMPTS
        # the pauses before retries 1..3 are at least half of 0.2, 0.4 and 0.8 s
        assert time.monotonic() - started >= READ_BACKOFF / 2 * (2 ** (ATTEMPTS - 1) - 1)
        with pytest.raises(StorageError):  # a key that just failed gets one try, not a round
            store.get_range(obj, 0, 100_000)
        assert fault.hits == ATTEMPTS + 1
    assert store.get_range(obj, 0, 100_000) == expected  # fault gone: served again at once
    with proxy.inject(Fault.error(412, "PreconditionFailed", path=key_path(key))) as fault:
        with pytest.raises(ObjectChanged):  # the object changed: retrying cannot help
            store.get_range(obj, 0, 100_000)
        assert fault.hits == 1
    store.close()


class _ShortStore(LocalStore):
    """Answers one byte short, once `release` is set: a cut body that went unnoticed below."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.release = threading.Event()

    def get_range(self, obj: ObjectInfo, start: int, end: int) -> bytes:
        self.release.wait(10)
        return super().get_range(obj, start, end)[:-1]


def test_a_short_answer_fails_every_waiting_reader_and_caches_nothing(tmp_path):
    (tmp_path / "o").write_bytes(payload("short", 3 << 20))
    store = _ShortStore(str(tmp_path))
    obj = store.head("o")
    cache = BlockCache(64 << 20)
    fetcher = BlockFetcher(cache, block_size=1 << 20)
    outcomes: list[BaseException | None] = []

    def read(offset: int, size: int) -> None:
        try:
            fetcher.read(store, obj, offset, size)
            outcomes.append(None)
        except BaseException as exc:
            outcomes.append(exc)

    def start(offset: int, size: int, blocks_in_flight: int) -> threading.Thread:
        thread = threading.Thread(target=read, args=(offset, size))
        thread.start()
        deadline = time.monotonic() + 10
        while fetcher.stats()["blocks_in_flight"] < blocks_in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        return thread

    # A claims block 1; B waits for it and claims blocks 0 and 2 (two GETs); C waits for B's block 2.
    readers = [start(1 << 20, 1, 1), start(0, 3 << 20, 3), start(2 << 20, 1, 3)]
    time.sleep(0.1)  # let C start waiting (the outcome is the same if it fetches block 2 itself)
    store.release.set()
    for reader in readers:
        reader.join(10)
        assert not reader.is_alive(), "a reader waits forever for a block whose fetch failed"
    assert len(outcomes) == 3 and all(isinstance(outcome, StorageError) for outcome in outcomes), outcomes
    assert cache.stats()["memory_used"] == 0 and fetcher.stats()["blocks_in_flight"] == 0


class _FlakyStore(LocalStore):
    """Uploads fail while `broken` is set; counts the tries."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.broken = True
        self.tries = 0

    def put_file(self, key: str, path: str) -> ObjectInfo:
        self.tries += 1
        if self.broken:
            raise StorageError(f"upload {key}: 503 SlowDown (injected)")
        return super().put_file(key, path)


class _StalledStore(LocalStore):
    """Uploads wait until `release` is set."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.release = threading.Event()

    def put_file(self, key: str, path: str, **kwargs: object) -> ObjectInfo:
        self.release.wait(30)
        return super().put_file(key, path)


def test_a_drain_cut_short_names_the_uploads_still_running(tmp_path):
    (tmp_path / "bucket").mkdir()
    store = _StalledStore(str(tmp_path / "bucket"))
    staging = StagingArea(str(tmp_path / "staging"))
    uploader = Uploader(store, staging)
    try:
        staged = staging.create("slow.txt")
        uploader.submit(staged)
        assert uploader.drain(0.2) == [staged]  # what a stop signal's --stop-timeout leaves staged
        store.release.set()
        assert uploader.drain(30) == [] and (tmp_path / "bucket" / "slow.txt").exists()
    finally:
        store.release.set()
        uploader.close()


def test_failed_uploads_are_tried_again_until_the_fault_clears(tmp_path):
    (tmp_path / "bucket").mkdir()
    store = _FlakyStore(str(tmp_path / "bucket"))
    staging = StagingArea(str(tmp_path / "staging"))
    uploader = Uploader(store, staging, attempts=2, backoff=0.05)  # rounds after 0.2, 0.4, 0.8 s...
    try:
        staged = staging.create("a.txt")
        with open(staging.data_path(staged), "wb") as file:
            file.write(b"precious")
        first = uploader.submit(staged)
        with pytest.raises(StorageError):
            first.result(10)
        assert uploader.failures() == [staged] and store.tries == 2
        deadline = time.monotonic() + 10
        while store.tries < 4:  # two more rounds, one try each
            assert time.monotonic() < deadline, "a failed upload was not tried again"
            time.sleep(0.05)
        assert uploader.failures() == [staged]  # still reported failed between rounds
        store.broken = False
        while (tmp_path / "bucket" / "a.txt").exists() is False or uploader.failures():
            assert time.monotonic() < deadline, "the upload did not land after the fault cleared"
            time.sleep(0.05)
        assert (tmp_path / "bucket" / "a.txt").read_bytes() == b"precious" and uploader.uploaded == 1

        store.broken = True  # unmounting stops the rounds: what failed is reported, not tried forever
        other = staging.create("b.txt")
        uploader.submit(other)
        assert uploader.drain(10) == [other]
        tries = store.tries
        time.sleep(0.5)  # longer than the next round's pause: no round may start after drain
        assert store.tries == tries
    finally:
        uploader.close()
        staging.close()


def test_a_completion_whose_answer_was_lost_is_confirmed_not_failed(faulty: FaultyMount, tmp_path):
    """CompleteMultipartUpload assembles the object, then the connection is reset before the answer:
    botocore retries and S3 says NoSuchUpload.  The upload is done, and must be reported done (recognised by
    the ETag S3 gives exactly these parts), not failed and retried."""
    store = S3Store(BUCKET, endpoint_url=faulty.proxy.endpoint_url, timeout=TIMEOUT)
    key, data = "lost-completion.bin", payload("lost-completion.bin", (16 << 20) + 5)
    (tmp_path / "source").write_bytes(data)
    try:
        upload = store.part_upload(key, str(tmp_path / "source"))
        upload.add_part(1)
        upload._parts[1].result(60)  # the multipart upload exists: the next POST on the key is the completion
        with faulty.proxy.inject(Fault.reset(after=0, method="POST", path=key_path(key), times=1)) as fault:
            info = upload.finish(len(data))
        assert fault.hits == 1
        assert info.size == len(data) and info.etag.endswith('-3"')
        assert store.get_range(store.head(key), 0, len(data)) == data
    finally:
        store.close()


def test_objects_over_the_copy_limit_are_copied_in_parallel_parts(faulty: FaultyMount, tmp_path, s3):
    """`mv` of a file above CopyObject's 5 GiB is a multipart copy; its code path, with small limits."""
    store = S3Store(BUCKET, endpoint_url=faulty.proxy.endpoint_url, timeout=TIMEOUT)
    store.max_single_copy, store.copy_part_size = 6 << 20, 5 << 20
    data = payload("copy-source.bin", (12 << 20) + 7)
    s3.put_object(Bucket=BUCKET, Key="copy-source.bin", Body=data)
    try:
        copied = store.copy_object("copy-source.bin", "copy-target.bin")
        assert copied.size == len(data) and copied.etag.endswith('-3"')  # three parts: 5 + 5 + 2 MiB
        assert s3.get_object(Bucket=BUCKET, Key="copy-target.bin")["Body"].read() == data
        assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    finally:
        store.close()


def test_a_failed_multipart_copy_reports_its_own_error_when_its_abort_fails_too(faulty: FaultyMount, s3, caplog):
    """A part of a multipart copy is refused, then so is the abort of the upload: the error raised is the
    copy's, and the upload left in S3 is logged."""
    store = S3Store(BUCKET, endpoint_url=faulty.proxy.endpoint_url, timeout=TIMEOUT)
    store.max_single_copy, store.copy_part_size = 6 << 20, 5 << 20
    source, target = "copy-refused-source.bin", "copy-refused-target.bin"
    s3.put_object(Bucket=BUCKET, Key=source, Body=payload(source, (12 << 20) + 7))
    try:
        with faulty.proxy.inject(Fault.error(400, "InvalidRequest", method="PUT", path=key_path(target))), \
                faulty.proxy.inject(Fault.deny(method="DELETE", path=key_path(target))) as refused_abort, \
                pytest.raises(StorageError) as raised:
            store.copy_object(source, target)
        assert refused_abort.hits == 1
        assert not isinstance(raised.value, AccessDenied) and "UploadPartCopy" in str(raised.value), raised.value
        left = [upload["Key"] for upload in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]
        assert left == [target]
        assert f"could not abort the multipart copy to {target!r}" in caplog.text
    finally:
        for upload in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
        store.close()


# -- reads through the mount ------------------------------------------------------------------------------
@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("case", list(TRANSIENT))
def test_reads_recover_from_transient_faults(faulty: FaultyMount, case: str, reader: str):
    key = f"ok-{case}-{reader}.bin"
    fault = faulty.proxy.add(TRANSIENT[case](key))
    result = READERS[reader](faulty.mnt / key)
    assert result.errno is None and result.data == payload(key)
    assert fault.hits >= (fault.times or 1)  # the fault did happen


@pytest.mark.parametrize("case", list(PERSISTENT))
def test_reads_fail_with_eio_in_bounded_time_under_lasting_faults(faulty: FaultyMount, case: str):
    key = f"eio-{case}.bin"
    fault = faulty.proxy.add(PERSISTENT[case](key))
    expected = payload(key)
    for name, reader in READERS.items():
        result = reader(faulty.mnt / key)
        assert result.errno == errno.EIO, name
        assert expected.startswith(result.data), f"{name} got wrong bytes"
        assert result.seconds < READ_BOUND, f"{name} got EIO after {result.seconds:.1f} s"
        if name == "cat":
            assert fault.hits >= ATTEMPTS  # a full round of retries before EIO
    faulty.proxy.remove(fault)
    # The fault cleared: the file reads at once, in a few GETs, although the kernel re-reads the pages whose
    # read failed one 4 KiB page at a time (a GET each would be about 500).
    counter = faulty.proxy.add(Fault.latency(0, **reads_of(key)))
    assert cat(faulty.mnt / key).data == expected
    assert counter.hits <= 16


def test_listings_and_lookups_recover_from_transient_faults(faulty: FaultyMount):
    listing = faulty.proxy.add(Fault.error(503, "SlowDown", method="GET", path=f"^/{BUCKET}/?$", times=2))
    assert sorted(os.listdir(faulty.mnt / "meta")) == ["a.txt", "b.txt"]
    head = faulty.proxy.add(Fault.reset(after=None, method="HEAD", path=key_path("meta2/c.txt"), times=2))
    assert (faulty.mnt / "meta2" / "c.txt").stat().st_size == SIZE
    assert listing.hits == 2 and head.hits == 2


def test_cut_read_ahead_parts_are_fetched_again(faulty: FaultyMount):
    key = READ_AHEAD_KEY
    parts = {"min_range": 4 << 20, "times": 1, **reads_of(key)}  # read-ahead parts only
    faults = [faulty.proxy.add(Fault.truncate(after=1 << 20, honest=True, **parts)),
              faulty.proxy.add(Fault.reset(after=1 << 20, **parts))]
    result = cat(faulty.mnt / key)
    assert result.errno is None and result.data == payload(key, READ_AHEAD_SIZE)
    assert [fault.hits for fault in faults] == [1, 1]


def test_other_files_are_served_while_one_stalls(faulty: FaultyMount):
    stalled, other = faulty.mnt / "serve-stalled.bin", faulty.mnt / "serve-other.bin"
    fault = faulty.proxy.add(Fault.stall(**reads_of(stalled.name)))
    reader = subprocess.Popen(["cat", str(stalled)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        faulty.proxy.wait_for_hits(fault)
        assert cat(other).data == payload(other.name)
        assert sorted(os.listdir(faulty.mnt / "meta")) == ["a.txt", "b.txt"]
        (faulty.mnt / "serve-new.txt").write_bytes(b"written meanwhile")
        assert (faulty.mnt / "serve-new.txt").read_bytes() == b"written meanwhile"
        assert reader.poll() is None, "the stalled read should still be retrying"
        output, errors = reader.communicate(timeout=HUNG)
    finally:
        reader.kill()
        reader.wait()
    assert reader.returncode != 0 and b"Input/output error" in errors and output == b""
    faulty.proxy.remove(fault)
    assert cat(stalled).data == payload(stalled.name)


# -- writes -----------------------------------------------------------------------------------------------
def test_writes_stay_staged_and_are_uploaded_once_the_fault_clears(s3, faulty: FaultyMount):
    files = {"w-small.txt": payload("w-small", 5000), "w-multipart.bin": payload("w-big", (10 << 20) + 5)}
    fault = faulty.proxy.add(Fault.error(503, "SlowDown", method="PUT", path=r"/w-"))  # PutObject, UploadPart
    for name, data in files.items():
        (faulty.mnt / name).write_bytes(data)
    deadline = time.monotonic() + HUNG
    while {failed["key"] for failed in fresh_record(faulty.mnt)["failed_uploads"]} != set(files):
        assert time.monotonic() < deadline, "the uploads were not reported failed"
    for name, data in files.items():
        assert (faulty.mnt / name).read_bytes() == data  # the staged bytes are what the mount shows
        assert not s3.list_objects_v2(Bucket=BUCKET, Prefix=name).get("Contents")
    failed_puts = fault.hits
    faulty.proxy.remove(fault)
    while any(s3.list_objects_v2(Bucket=BUCKET, Prefix=name).get("KeyCount", 0) == 0 for name in files):
        assert time.monotonic() < deadline, "the staged files were not uploaded after the fault cleared"
        time.sleep(0.2)
    for name, data in files.items():
        assert s3.get_object(Bucket=BUCKET, Key=name)["Body"].read() == data
    record = fresh_record(faulty.mnt)
    assert record["failed_uploads"] == [] and record["upload_retries"] >= 2 and failed_puts >= 2 * ATTEMPTS


def test_umount_shows_upload_progress_on_a_terminal(s3, faulty: FaultyMount, proxy: FaultProxy, tmp_path):
    """Uploads slowed down at S3 are still pending when `umount` runs on a terminal: it shows a progress bar
    that ends at every file, waits for them, and they are in S3 when it returns."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = run_cli("mount", f"s3://{BUCKET}", str(mnt), "--endpoint-url", proxy.endpoint_url,
                     "--cache-dir", str(tmp_path / "cache"))  # the module's mount holds the default one
    assert result.returncode == 0, result.stderr
    files = {f"umount-progress/{i}.txt": payload(f"umount-progress-{i}", 2000) for i in range(3)}
    try:
        (mnt / "umount-progress").mkdir()
        with proxy.inject(Fault.latency(3.0, method="PUT", path=r"/umount-progress/\d")) as fault:
            for key, data in files.items():
                (mnt / key).write_bytes(data)
            proxy.wait_for_hits(fault, len(files))
            status, screen = on_terminal("quiltmount.cli:main", "umount", str(mnt), env=dict(os.environ))
    finally:
        force_unmount(mnt)
    assert status == 0, screen
    assert "uploading" in screen and "3/3" in screen and f"unmounted {mnt}" in screen, screen
    for key, data in files.items():
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data
