"""The layers below FUSE, on real local stores: sizes, sources, tree, block cache, read-ahead."""

from __future__ import annotations

import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from quiltmount.errors import NotFound, ObjectChanged, UserError
from quiltmount.files import atomic_file
from quiltmount.cache.disk import DiskCache
from quiltmount.cache.keys import Identity
from quiltmount.fs.blockcache import Block, BlockCache
from quiltmount.fs.overlay import WritableBucketTree
from quiltmount.fs.readahead import BlockFetcher, ReadStream
from quiltmount.fs.staging import StagingArea
from quiltmount.fs.tree import BucketTree
from quiltmount.fs.verify import CorruptObjects
from quiltmount.paths import _legacy_slug, default_cache_dir, slug
from quiltmount.singleflight import SingleFlight
from quiltmount.storage import parse_source
from quiltmount.storage.counting import CountingStore
from quiltmount.storage.local import LocalStore
from quiltmount.units import format_size, parse_size, parse_ttl


def test_sizes_and_ttls():
    assert parse_size("512") == 512
    assert parse_size("64K") == 64 << 10
    assert parse_size("1.5G") == 3 << 29
    assert parse_size("256MiB") == 256 << 20
    for bad in ("", "12X", "-1", "M"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert parse_ttl("indefinite") == math.inf and parse_ttl("2.5") == 2.5
    with pytest.raises(ValueError):
        parse_ttl("-1")
    assert format_size(0) == "0 B" and format_size(1536) == "1.5 KiB"


def test_parse_source(tmp_path):
    assert parse_source("s3://b").prefix == ""
    assert parse_source("s3://b/p/q").prefix == "p/q/"
    assert parse_source(str(tmp_path)).location == str(tmp_path)
    assert parse_source(f"file://{tmp_path}").location == str(tmp_path)
    for bad in ("s3://", "http://x/y", str(tmp_path / "missing"), "file://host/x"):
        with pytest.raises(UserError):
            parse_source(bad)


def test_names_of_sources_are_cut_between_words(tmp_path, monkeypatch):
    source = "file:///tmp/pytest-of-root/pytest-7/test_demo0/quiltmount-example"
    readable = slug(source).rsplit("-", 1)[0]
    assert readable == "pytest-7_test_demo0_quiltmount-example", readable
    assert _legacy_slug(source).startswith("t_pytest-7_")  # what the old rule made of it
    assert slug("s3://bucket/" + "x" * 60).startswith("x" * 40 + "-")  # nowhere to cut: the last 40
    assert slug("/a/b") != slug("/a_b") and slug("/").startswith("root-")
    # A cache directory made under the old name is taken over, staged writes and all.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    legacy = tmp_path / "quiltmount" / _legacy_slug(source)
    (legacy / "staging").mkdir(parents=True)
    (legacy / "staging" / "kept").write_text("staged")
    path = default_cache_dir(source)
    assert os.path.basename(path) == slug(source) and not legacy.exists()
    assert open(os.path.join(path, "staging", "kept")).read() == "staged"


def test_atomic_file_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "record.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(str(target)) as file:
        file.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["record.json"]
    with atomic_file(str(target), mode=0o640, durable=True) as file:
        file.write(b"new")
    assert target.read_bytes() == b"new" and os.stat(target).st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["record.json"]


@pytest.fixture
def local_tree(tmp_path):
    root = tmp_path / "root"
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "f.txt").write_bytes(b"hello")
    (root / "top.bin").write_bytes(os.urandom(100))
    store = CountingStore(LocalStore(str(root)))
    return root, store, BucketTree(store, metadata_ttl=60)


def test_tree_answers_lookups_from_listings(local_tree):
    root, store, tree = local_tree
    assert list(tree.readdir("")) == ["d", "top.bin"]
    assert tree.lookup("d").is_dir and tree.lookup("top.bin").size == 100
    assert store.snapshot()["totals"].get("head", 0) == 0
    assert tree.lookup("d/f.txt").size == 5  # not listed yet: one targeted lookup
    assert store.snapshot()["totals"]["head"] == 1
    with pytest.raises(NotFound):
        tree.lookup("d/missing")
    with pytest.raises(NotFound):
        tree.lookup("d/missing")  # the negative cache answers the second time
    assert store.snapshot()["totals"]["head"] == 2
    with pytest.raises(NotFound):
        tree.lookup(".packages")


def test_tree_ttl_expiry_sees_changes(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    now = [0.0]
    tree = BucketTree(LocalStore(str(root)), metadata_ttl=5, clock=lambda: now[0])
    assert tree.readdir("") == {}
    (root / "new.txt").write_bytes(b"n")
    assert tree.readdir("") == {}
    now[0] = 6.0
    assert list(tree.readdir("")) == ["new.txt"]


def test_concurrent_listings_are_shared(local_tree):
    _, store, tree = local_tree
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: tree.readdir("d"), range(16)))
    assert all(result == results[0] for result in results)
    assert store.snapshot()["totals"]["list"] == 1


def test_single_flight_shares_one_run_and_its_failure():
    flight: SingleFlight[int] = SingleFlight()
    started, release = threading.Event(), threading.Event()
    runs = []

    def work(value: int) -> int:
        runs.append(value)
        started.set()
        release.wait(5)
        if value < 0:
            raise ValueError("listing failed")
        return value

    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(flight.run, "k", lambda: work(1))
        started.wait(5)
        waiters = [pool.submit(flight.run, "k", lambda: work(2)) for _ in range(6)]
        other = pool.submit(flight.run, "other", lambda: 3)  # another key is not held up
        assert other.result(5) == 3
        deadline = time.monotonic() + 5
        while not all(w.running() for w in waiters) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # from running() to waiting inside run(): a few bytecodes
        release.set()
        assert first.result(5) == 1 and [w.result(5) for w in waiters] == [1] * 6
    assert runs == [1]  # the waiters shared the first run
    started.clear()
    release.clear()
    with ThreadPoolExecutor(4) as pool:
        failing = pool.submit(flight.run, "k", lambda: work(-1))
        started.wait(5)
        sharing = pool.submit(flight.run, "k", lambda: work(4))
        release.set()
        for future in (failing, sharing):
            with pytest.raises(ValueError, match="listing failed"):
                future.result(5)
    assert flight.run("k", lambda: 5) == 5  # a finished run is not remembered


def test_corrupt_objects_are_remembered_within_a_bound():
    corrupt = CorruptObjects(capacity=3)
    for ident in ("a", "b", "c"):
        corrupt.add(ident)
    assert corrupt.contains("a") and corrupt.contains("c")
    corrupt.add("d")
    assert corrupt.contains("d") and not corrupt.contains("a")


def test_a_writer_reopening_during_the_last_release_keeps_its_bytes(tmp_path):
    """The last writer's release lets go of the tree's lock between counting itself out and deciding what
    becomes of the staged bytes; a writer opening the file in that gap must keep them."""
    root = tmp_path / "root"
    root.mkdir()
    store = LocalStore(str(root))
    tree = WritableBucketTree(BucketTree(store, metadata_ttl=60), StagingArea(str(tmp_path / "staging")),
                              str(tmp_path / "stranded"))
    try:
        first = tree.open_write("f.txt", truncate=True, create=True)
        first.write(b"one", 0)
        first.flush()
        first.fsync()  # uploaded: nothing is left to upload when this writer goes
        dirty = first.dirty
        os.close(first.fd)
        with tree._lock:  # the first half of DirtyFile.release
            dirty.writers -= 1
        second = tree.open_write("f.txt", truncate=False, create=False)  # in the gap
        tree._last_writer_released(dirty)  # the second half, late
        second.write(b"two", 0)
        second.flush()
        second.release()
        assert tree.uploader.drain(timeout=30) == []
        assert (root / "f.txt").read_bytes() == b"two"
    finally:
        tree.close()


def test_landed_uploads_join_the_cached_listing_in_place(local_tree):
    """Many files uploaded into one directory: each joins the cached listing without a new LIST and without
    copying the listing (a copy per file made such a writer quadratic), while listings handed out before
    stay as they were."""
    root, store, tree = local_tree
    before = tree.readdir("d")
    cached = tree._listings["d"][0]
    for number in range(200):
        name = f"d/new{number:03d}.txt"
        (root / name).write_bytes(b"x")
        tree.remember(name, store.head(name))
    assert tree._listings["d"][0] is cached
    assert sorted(before) == ["e", "f.txt"]
    after = tree.readdir("d")
    assert len(after) == 202 and after["new199.txt"].size == 1 and after["e"].is_dir
    after.clear()  # the caller's own dict
    assert len(tree.readdir("d")) == 202
    assert tree.lookup("d/new007.txt").size == 1
    assert store.snapshot()["totals"]["list"] == 1 and store.snapshot()["totals"].get("head", 0) == 200


def test_the_disk_cache_keeps_its_cap_and_backs_the_memory_tier(tmp_path):
    disk = DiskCache(str(tmp_path / "disk"), capacity=10_000)
    try:
        for i in range(50):
            disk.put("hash:obj", i, bytes([i]) * 1000, "s3://b")
            disk.flush()
            on_disk = sum(len(files) * 1000 for _, _, files in os.walk(tmp_path / "disk" / "blocks"))
            assert disk.used <= 10_000 and on_disk <= 10_000
        assert disk.get("hash:obj", 49) == bytes([49]) * 1000
        assert disk.get("hash:obj", 0) is None
        cache = BlockCache(2000, disk)
        durable, memory_only = Identity("x", "s3://b", disk_key="object:x"), Identity("local", "file:///d")
        cache.put((durable, 0), Block(b"a" * 1500))
        cache.put((durable, 1), Block(b"b" * 1500))  # evicts block 0 from memory; the disk still has it
        cache.put((memory_only, 0), Block(b"c" * 100))
        disk.flush()
        assert cache.get((durable, 0)).tobytes() == b"a" * 1500
        assert disk.get("local", 0) is None  # no disk key: never on disk
        entry = Identity("at-one-place", "s3://b", disk_key="hash:sha2-256-chunked:y", checked_on_disk=True,
                         origin="at-one-place")
        cache.put((entry, 0), Block(b"d" * 100))
        disk.flush()
        assert disk.get("hash:sha2-256-chunked:y", 0) is None  # written, but not served before the check
        cache.checked(entry)
        assert disk.get("hash:sha2-256-chunked:y", 0) == b"d" * 100
        assert cache.stats()["memory_used"] <= 2000
    finally:
        disk.close()


def test_blocks_loaded_from_disk_pass_through_their_own_share_of_memory(tmp_path):
    """Blocks loaded from the disk tier live in an LRU of their own (`loaded_capacity`): reading many of them
    keeps memory within that share and never evicts the blocks fetched from the source, which stay hits."""
    disk = DiskCache(str(tmp_path / "disk"), capacity=1 << 20)
    try:
        cache = BlockCache(4000, disk, loaded_capacity=1000)
        fetched = Identity("fetched", "s3://b", disk_key="object:fetched")
        for index in range(3):
            cache.put((fetched, index), Block(bytes([index]) * 1000))
        on_disk = Identity("on-disk", "s3://b", disk_key="object:on-disk")
        for index in range(20):
            disk.put("object:on-disk", index, bytes([index]) * 500, "s3://b", wait=True)
        disk.flush()
        for index in range(20):
            assert cache.get((on_disk, index)).tobytes() == bytes([index]) * 500
            assert cache.stats()["memory_used"] <= 3000 + 1000
        assert all(cache.in_memory((fetched, index)) for index in range(3))  # not pushed out by the loads
        assert [cache.in_memory((on_disk, index)) for index in range(20)] == [False] * 18 + [True, True]
        hits = cache.stats()["memory_hits"]
        assert cache.get_memory((on_disk, 19)).tobytes() == bytes([19]) * 500
        assert cache.stats()["memory_hits"] == hits + 1
        cache.forget(on_disk)
        assert not cache.in_memory((on_disk, 19)) and disk.get("object:on-disk", 19) is None
        without_disk = BlockCache(4000)  # no disk tier: the whole budget for fetched blocks
        for index in range(4):
            without_disk.put((fetched, index), Block(bytes([index]) * 1000))
        assert all(without_disk.in_memory((fetched, index)) for index in range(4))
    finally:
        disk.close()


def test_fetcher_reads_exact_ranges_and_fetches_each_block_once(tmp_path):
    data = random.Random(3).randbytes(5 * 1024 * 1024 + 17)
    (tmp_path / "o").write_bytes(data)
    store = CountingStore(LocalStore(str(tmp_path)))
    obj = store.head("o")
    fetcher = BlockFetcher(BlockCache(64 << 20), block_size=1 << 20, part_size=2 << 20)
    rng = random.Random(4)
    for _ in range(200):
        offset = rng.randrange(0, len(data) + 10)
        size = rng.randrange(1, 3 << 20)
        assert bytes(fetcher.read(store, obj, offset, size)) == data[offset:offset + size]
    assert store.snapshot()["totals"]["get"] <= 6  # 6 blocks, each fetched at most once

    barrier = threading.Barrier(8)
    fresh = BlockFetcher(BlockCache(64 << 20))
    counting = CountingStore(LocalStore(str(tmp_path)))

    def read_start(_: int) -> bytes:
        barrier.wait()
        return bytes(fresh.read(counting, obj, 0, 4096))

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(read_start, range(8))) == {data[:4096]}
    assert counting.snapshot()["totals"]["get"] == 1


def test_sequential_stream_prefetches_and_detects_change(tmp_path):
    data = os.urandom(24 << 20)
    (tmp_path / "o").write_bytes(data)
    store = CountingStore(LocalStore(str(tmp_path)))
    obj = store.head("o")
    fetcher = BlockFetcher(BlockCache(64 << 20), prefetch_budget=32 << 20)
    stream = ReadStream(fetcher, store, obj, max_window=16 << 20)
    out = bytearray()
    for offset in range(0, len(data), 128 << 10):
        out += stream.read(offset, 128 << 10)
    assert bytes(out) == data
    assert store.snapshot()["totals"]["get"] < 24  # large parts, not one GET per block

    (tmp_path / "o").write_bytes(b"changed")
    with pytest.raises(ObjectChanged):
        BlockFetcher(BlockCache(1 << 20)).read(store, obj, 0, 10)


class _RecordingStore(LocalStore):
    """A local store that remembers every range it was asked for."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.ranges: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def get_range(self, obj, start: int, end: int) -> bytes:
        with self._lock:
            self.ranges.append((start, end))
        return super().get_range(obj, start, end)


def _recorded_stream(tmp_path, size: int, **fetcher_options) -> tuple[bytes, _RecordingStore, ReadStream]:
    """(random bytes of `size`, the recording store holding them as object "o", a read stream of it)."""
    data = os.urandom(size)
    (tmp_path / "o").write_bytes(data)
    store = _RecordingStore(str(tmp_path))
    fetcher = BlockFetcher(BlockCache(128 << 20), **fetcher_options)
    return data, store, ReadStream(fetcher, store, store.head("o"), max_window=16 << 20)


def test_sequential_reads_fetch_whole_aligned_parts(tmp_path):
    part = 8 << 20
    data, store, stream = _recorded_stream(tmp_path, 64 << 20, prefetch_budget=32 << 20)
    out = bytearray()
    for offset in range(0, len(data), 1 << 20):
        out += stream.read(offset, 1 << 20)
    assert bytes(out) == data
    # Before the stream counts as sequential its reads fetch single blocks; from then on every GET is one
    # whole part on a part boundary (a GET of a part's remainder at the start aside).
    parts = [(start, end) for start, end in store.ranges if end - start > 1 << 20]
    assert len(store.ranges) <= len(data) // part + 4, store.ranges
    assert all(end % part == 0 or end == len(data) for _, end in parts), parts
    assert sum(1 for start, end in parts if start % part == 0 and end - start == part) >= len(data) // part - 1


def test_random_reads_side_by_side_do_not_start_read_ahead(tmp_path):
    data, store, stream = _recorded_stream(tmp_path, 64 << 20)
    # Two large reads that happen to land next to each other (2 MiB together) are still random reads: each
    # fetches exactly its bytes.
    assert bytes(stream.read(10 << 20, 1 << 20)) == data[10 << 20:11 << 20]
    assert bytes(stream.read(11 << 20, 1 << 20)) == data[11 << 20:12 << 20]
    assert store.ranges == [(10 << 20, 11 << 20), (11 << 20, 12 << 20)]


def test_small_reads_filling_holes_fetch_whole_blocks_once(tmp_path):
    """The kernel re-reads pages it lost from its cache as small reads, several per block: each block is
    fetched whole, once; a small read far from the previous one still fetches only its bytes."""
    data, store, stream = _recorded_stream(tmp_path, 16 << 20)
    holes = [(offset, 8192) for offset in range(100_000, 3 << 20, 300_000)]  # ~4 per 1 MiB block
    stream.read(0, 4096)
    for offset, size in holes:
        assert bytes(stream.read(offset, size)) == data[offset:offset + size]
    blocks = {offset // (1 << 20) for offset, _ in holes}
    assert len(store.ranges) == 1 + len(blocks), store.ranges
    store.ranges.clear()
    assert bytes(stream.read(12 << 20, 8192)) == data[12 << 20:(12 << 20) + 8192]  # far away: exact bytes
    assert store.ranges == [(12 << 20, (12 << 20) + 8192)]
