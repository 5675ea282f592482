"""HashVerifier: pieces in any nearby order, hashed on a worker, verdict to the read that completes the file."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pytest

from quiltmount.fs import verify
from quiltmount.fs.verify import HashVerifier
from quiltmount.packages.manifest import SHA2_256_CHUNKED, SHA256, hash_bytes

DATA = random.Random(5).randbytes(3_000_000)


def pieces(data: bytes, size: int) -> list[tuple[int, bytes]]:
    return [(offset, data[offset:offset + size]) for offset in range(0, len(data), size)]


@pytest.fixture
def workers() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(2)
    yield pool
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("hash_type", [SHA2_256_CHUNKED, SHA256])
def test_reads_slightly_out_of_order_are_verified(workers, hash_type):
    order = pieces(DATA, 128 * 1024)
    rng = random.Random(1)
    for start in range(0, len(order) - 3, 4):  # reorder within groups of four, as parallel requests arrive
        group = order[start:start + 4]
        rng.shuffle(group)
        order[start:start + 4] = group
    verifier = HashVerifier(hash_type, hash_bytes(hash_type, DATA), len(DATA), workers)
    verdicts = [verifier.observe(offset, piece) for offset, piece in order]
    assert verdicts.count(True) == 1 and verdicts.count(None) == len(verdicts) - 1
    assert verifier.observe(0, DATA[:10]) is None  # a re-read after the verdict


def test_wrong_bytes_get_false_on_the_completing_read(workers):
    bad = bytearray(DATA)
    bad[2_500_000] ^= 1
    verifier = HashVerifier(SHA2_256_CHUNKED, hash_bytes(SHA2_256_CHUNKED, DATA), len(DATA), workers)
    verdicts = [verifier.observe(offset, memoryview(piece)) for offset, piece in pieces(bytes(bad), 1 << 20)]
    assert verdicts == [None, None, False]


def test_a_reader_that_jumps_around_is_not_verified(workers, monkeypatch):
    monkeypatch.setattr(verify, "MAX_PENDING_BYTES", 1 << 20)
    verifier = HashVerifier(SHA256, hash_bytes(SHA256, DATA), len(DATA), workers)
    order = pieces(DATA, 512 * 1024)
    verdicts = [verifier.observe(offset, piece) for offset, piece in reversed(order)]
    assert verdicts == [None] * len(order)


def test_hashing_happens_on_the_worker_and_only_the_last_read_waits(workers):
    gate = threading.Event()
    workers.submit(gate.wait)
    workers.submit(gate.wait)  # both workers busy: nothing can be hashed until the gate opens
    verifier = HashVerifier(SHA2_256_CHUNKED, hash_bytes(SHA2_256_CHUNKED, DATA), len(DATA), workers)
    *head, last = pieces(DATA, 1 << 20)
    assert [verifier.observe(offset, piece) for offset, piece in head] == [None, None]  # did not wait
    assert verifier._hasher.bytes_hashed == 0
    verdict: list[bool | None] = []
    completing = threading.Thread(target=lambda: verdict.append(verifier.observe(*last)))
    completing.start()
    completing.join(0.3)
    assert completing.is_alive(), "the completing read must wait for its verdict"
    gate.set()
    completing.join(10)
    assert verdict == [True] and verifier._hasher.bytes_hashed == len(DATA)


def test_readers_wait_when_too_much_is_queued(workers, monkeypatch):
    monkeypatch.setattr(verify, "MAX_QUEUED_BYTES", 1 << 20)
    gate = threading.Event()
    workers.submit(gate.wait)
    workers.submit(gate.wait)
    verifier = HashVerifier(SHA256, hash_bytes(SHA256, DATA), len(DATA), workers)
    order = pieces(DATA, 512 * 1024)
    assert verifier.observe(*order[0]) is None and verifier.observe(*order[1]) is None  # 1 MiB queued: at the bound
    blocked = threading.Thread(target=verifier.observe, args=order[2])
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive(), "a reader past the queue bound must wait for the hasher"
    gate.set()
    blocked.join(10)
    assert not blocked.is_alive()
    assert [verifier.observe(offset, piece) for offset, piece in order[3:]][-1] is True
