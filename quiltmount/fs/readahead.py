"""Reading objects through the block cache: in-flight de-duplication, read-ahead and its memory budget.

`BlockFetcher` is shared by every open file: a block is fetched once however many readers want it, and
prefetches run in a bounded thread pool within a byte budget (back-pressure: when the budget is used up,
read-ahead waits for the next read instead of queueing more); blocks the disk cache holds are loaded by a few
threads of their own, a block each.  `ReadStream` is one open file handle: it
detects sequential access and grows its read-ahead window geometrically, like mountpoint-s3's prefetcher.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from quiltmount.cache.keys import Identity, object_identity
from quiltmount.errors import StorageError
from quiltmount.fs.blockcache import Block, BlockCache
from quiltmount.storage.base import ObjectInfo, ObjectStore
from quiltmount.units import BLOCK_SIZE

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = BLOCK_SIZE
#: Read-ahead fetches whole parts of this size on multiples of it, one GET each: few large requests (see
#: README, "Why presigned URLs for reads").  A tuning of the read path, not the multipart part size
#: (`units.PART_SIZE`), though equal to it: objects are read whatever part size they were uploaded in.
DEFAULT_PART_SIZE = 8 << 20
#: Threads loading read-ahead blocks from the disk cache, a block each: a few keep the disk busy (block files
#: read side by side), and every one more is another thread taking the GIL from the FUSE threads for the
#: CRC-32 check of the next block (measured on 2 cores: 4 faster than 2, 8 or 16).
DISK_READERS = 4


class BlockFetcher:
    def __init__(self, cache: BlockCache, *, block_size: int = DEFAULT_BLOCK_SIZE,
                 part_size: int = DEFAULT_PART_SIZE, workers: int = 16, prefetch_budget: int = 128 << 20) -> None:
        self.cache = cache
        self.block_size = block_size
        self.blocks_per_part = max(1, part_size // block_size)
        self.prefetch_budget = max(prefetch_budget, block_size * self.blocks_per_part)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch")
        self._disk_pool = ThreadPoolExecutor(max_workers=DISK_READERS, thread_name_prefix="disk-read")
        self._lock = threading.Lock()
        self._in_flight: dict[tuple[Identity, int], Future] = {}
        self._prefetch_bytes = 0

    # -- fetching -----------------------------------------------------------------------------------------
    def _claim(self, ident: Identity, first: int, last: int) -> tuple[list[int], dict[int, Future]]:
        """Register futures for blocks neither in memory nor being fetched; return (claimed, others' futures).
        (Blocks on disk are claimed too: `_fetch_run` loads them, on the read-ahead's threads.)"""
        claimed: list[int] = []
        waiting: dict[int, Future] = {}
        with self._lock:
            for index in range(first, last + 1):
                key = (ident, index)
                pending = self._in_flight.get(key)
                if pending is not None:
                    waiting[index] = pending
                elif not self.cache.in_memory(key):
                    self._in_flight[key] = Future()
                    claimed.append(index)
        return claimed, waiting

    def _fetch_run(self, store: ObjectStore, obj: ObjectInfo, ident: Identity, first: int, last: int) -> list[Block]:
        """Get blocks first..last (claimed by the caller): from the disk cache those it has, the others with
        one ranged GET per run of them; resolve their futures."""
        bs = self.block_size
        blocks: dict[int, Block] = {}
        try:
            for index in sorted(self.cache.on_disk(ident, first, last)):
                block = self.cache.from_disk((ident, index))
                if block is not None:  # (None: evicted meanwhile, fetched below)
                    blocks[index] = block
            for run_first, run_last in _runs([index for index in range(first, last + 1) if index not in blocks]):
                start, end = run_first * bs, min((run_last + 1) * bs, obj.size)
                data = store.get_range(obj, start, end)
                if len(data) != end - start:  # never cache a short answer as whole blocks
                    raise StorageError(f"{store.name}/{obj.key}: read {len(data)} of {end - start} bytes at {start}")
                for index, offset in zip(range(run_first, run_last + 1), range(0, len(data), bs)):
                    blocks[index] = Block(data, offset, min(bs, len(data) - offset))
                    self.cache.put((ident, index), blocks[index])
        except BaseException as exc:
            self._fail_claims(ident, first, last, exc)
            raise
        with self._lock:
            futures = [self._in_flight.pop((ident, index)) for index in range(first, last + 1)]
        ordered = [blocks[index] for index in range(first, last + 1)]
        for future, block in zip(futures, ordered):
            future.set_result(block)
        return ordered

    def _fail_claims(self, ident: Identity, first: int, last: int, exc: BaseException) -> None:
        """Blocks first..last will not be fetched: their waiters get `exc`, and later reads fetch them anew."""
        with self._lock:
            futures = [self._in_flight.pop((ident, index)) for index in range(first, last + 1)]
        for future in futures:
            future.set_exception(exc)

    def read(self, store: ObjectStore, obj: ObjectInfo, offset: int, size: int,
             whole_parts: bool = False) -> bytes | ctypes.Array:
        """Bytes [offset, offset+size) of `obj`, clipped at its end (a zero-copy window within one block).

        `whole_parts`: blocks missing from the cache are fetched with the rest of their part (a sequential
        reader that caught up with its read-ahead wants those next: one part-sized GET, not eight).
        """
        end = min(offset + size, obj.size)
        if offset >= end:
            return b""
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        ident = object_identity(store, obj)
        blocks: dict[int, Block] = {}
        for index in range(first, last + 1):  # those on disk are claimed and loaded below, by `_fetch_run`
            data = self.cache.get_memory((ident, index))
            if data is not None:
                blocks[index] = data
        if len(blocks) <= last - first:
            missing = [index for index in range(first, last + 1) if index not in blocks]
            claim_first, claim_last = missing[0], missing[-1]
            if whole_parts:
                claim_first, claim_last = self._part_span(claim_first, claim_last, obj)
            claimed, waiting = self._claim(ident, claim_first, claim_last)
            if whole_parts:
                claimed = self._load_ahead(store, obj, ident, claimed, first, last)
            runs = _runs(claimed)
            for number, (run_first, run_last) in enumerate(runs):
                try:
                    fetched = self._fetch_run(store, obj, ident, run_first, run_last)
                except BaseException as exc:
                    for later_first, later_last in runs[number + 1:]:  # claimed by us: nobody else will
                        self._fail_claims(ident, later_first, later_last, exc)
                    raise
                blocks.update(zip(range(run_first, run_last + 1), fetched))
            for index, future in waiting.items():
                blocks[index] = future.result()
            for index in missing:  # cached between our lookup and our claim
                if index not in blocks:
                    blocks[index] = self.cache.get((ident, index)) or self._fetch_one(store, obj, ident, index)
        start = offset - first * bs
        if first == last:
            return blocks[first].view(start, end - offset)
        joined = b"".join(blocks[index].tobytes() for index in range(first, last + 1))
        return joined[start:start + end - offset]

    def _load_ahead(self, store: ObjectStore, obj: ObjectInfo, ident: Identity, claimed: list[int], first: int,
                    last: int) -> list[int]:
        """Of the blocks a reader claimed with the rest of their part, hand those the disk cache holds, but for
        the ones it reads now (first..last), to the read-ahead's threads: they load side by side while the
        reader goes on, instead of one after the other before it returns.  The claimed blocks left to it."""
        ahead = [index for index in claimed if not first <= index <= last]
        on_disk = self.cache.on_disk(ident, ahead[0], ahead[-1]).intersection(ahead) if ahead else set()
        for index in sorted(on_disk):
            with self._lock:
                self._prefetch_bytes += self.block_size  # released by `_prefetch_run`
            self._disk_pool.submit(self._prefetch_run, store, obj, ident, index, index)
        return [index for index in claimed if index not in on_disk]

    def read_exact(self, store: ObjectStore, obj: ObjectInfo, offset: int, size: int) -> bytes:
        """A random read: from cached blocks if they are all there, else one GET of exactly these bytes (a
        random reader rarely comes back, and the kernel keeps the pages it got); the whole blocks among them
        are cached all the same (the kernel's first reads of a file, out of order, are often whole blocks)."""
        end = min(offset + size, obj.size)
        if offset >= end:
            return b""
        bs = self.block_size
        ident = object_identity(store, obj)
        first, last = offset // bs, (end - 1) // bs
        if all(self.cache.contains((ident, index)) for index in range(first, last + 1)):
            return self.read(store, obj, offset, size)
        data = store.get_range(obj, offset, end)
        for index in range(-(-offset // bs), last + 1):
            block_end = min((index + 1) * bs, obj.size)
            if block_end <= end:
                self.cache.put((ident, index), Block(data, index * bs - offset, block_end - index * bs))
        return data

    def _fetch_one(self, store: ObjectStore, obj: ObjectInfo, ident: Identity, index: int) -> Block:
        """Fallback for a block that was evicted right after another reader fetched it."""
        bs = self.block_size
        return Block(store.get_range(obj, index * bs, min((index + 1) * bs, obj.size)))

    # -- read-ahead ---------------------------------------------------------------------------------------
    def prefetch(self, store: ObjectStore, obj: ObjectInfo, first: int, last: int) -> int:
        """Start background fetches of blocks first..last; return the last block scheduled (or first-1).

        Stops early when the prefetch byte budget is used up (back-pressure).
        """
        last = min(last, self.last_block(obj))
        ident = object_identity(store, obj)
        scheduled = first - 1
        part_first = first
        while part_first <= last:  # parts aligned to multiples of blocks_per_part, like the reader's fetches
            part_last = min(self._part_span(part_first, part_first, obj)[1], last)
            part_bytes = (part_last - part_first + 1) * self.block_size
            with self._lock:
                if self._prefetch_bytes + part_bytes > self.prefetch_budget:
                    return scheduled
                self._prefetch_bytes += part_bytes
            claimed, _ = self._claim(ident, part_first, part_last)
            self._release_budget(part_bytes - len(claimed) * self.block_size)
            for pool, run_first, run_last in self._prefetch_tasks(ident, claimed):
                pool.submit(self._prefetch_run, store, obj, ident, run_first, run_last)
            scheduled = part_last
            part_first = part_last + 1
        return scheduled

    def _prefetch_tasks(self, ident: Identity, claimed: list[int]) -> list[tuple[ThreadPoolExecutor, int, int]]:
        """The claimed blocks split into tasks (pool, first, last): one per block the disk cache holds, for the
        disk readers, so that a part's blocks are read side by side (one thread reading them one after the
        other keeps the disk waiting), and one per run of the others (a ranged GET each) for the fetchers."""
        if not claimed:
            return []
        on_disk = self.cache.on_disk(ident, claimed[0], claimed[-1])
        return ([(self._disk_pool, index, index) for index in claimed if index in on_disk]
                + [(self._pool, *run) for run in _runs([index for index in claimed if index not in on_disk])])

    def _part_span(self, first: int, last: int, obj: ObjectInfo) -> tuple[int, int]:
        """The blocks of the aligned parts that hold blocks first..last (clipped at the object's end)."""
        per_part = self.blocks_per_part
        return (first // per_part * per_part,
                min((last // per_part + 1) * per_part - 1, self.last_block(obj)))

    def last_block(self, obj: ObjectInfo) -> int:
        """The index of the object's last block (0 for an empty object)."""
        return max(0, (obj.size - 1) // self.block_size)

    def _release_budget(self, part_bytes: int) -> None:
        with self._lock:
            self._prefetch_bytes -= part_bytes

    def _prefetch_run(self, store: ObjectStore, obj: ObjectInfo, ident: Identity, first: int, last: int) -> None:
        try:
            self._fetch_run(store, obj, ident, first, last)
        except Exception as exc:  # readers waiting for these blocks got the error; later ones fetch them anew
            log.info("read-ahead of %r blocks %d-%d failed: %s", obj.key, first, last, exc)
        finally:
            self._release_budget((last - first + 1) * self.block_size)

    def stats(self) -> dict:
        with self._lock:
            return {"blocks_in_flight": len(self._in_flight), "prefetch_bytes": self._prefetch_bytes,
                    "prefetch_budget": self.prefetch_budget}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._disk_pool.shutdown(wait=False, cancel_futures=True)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs in a sorted list: [1,2,3,7,8] -> [(1,3),(7,8)]."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][1] == index - 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


class ReadStream:
    """One open file: random reads fetch exactly what they need; sequential reads drive read-ahead.

    Access counts as sequential once a streak of contiguous reads (small reordering by the kernel's
    parallel requests tolerated) has covered `SEQUENTIAL_TRIGGER` bytes in at least `SEQUENTIAL_READS` reads
    (two large random reads that happen to land side by side are not a stream).  Read-ahead then keeps a window of
    blocks in flight ahead of the reader, refilled in whole parts so every GET is part-sized, and the window
    doubles with each read up to `max_window`.  Before that, a read starting exactly where the previous one
    ended reads whole cached blocks: the reader is coming back for the next bytes (the kernel, for one, re-reads
    a file page by page after a failed read, and would otherwise cost a GET per 4 KiB page).  So do small reads
    close to the previous one: the kernel filling the holes in its cache of a file (pages reclaimed since it
    read them), several per block.
    """

    SEQUENTIAL_TRIGGER = 2 << 20
    SEQUENTIAL_READS = 3
    BACKWARD_TOLERANCE = 1 << 20
    FORWARD_TOLERANCE = 2 << 20

    def __init__(self, fetcher: BlockFetcher, store: ObjectStore, obj: ObjectInfo, *, max_window: int) -> None:
        self.fetcher = fetcher
        self.store = store
        self.obj = obj
        self.identity = object_identity(store, obj)
        bs = fetcher.block_size
        self._part = fetcher.blocks_per_part
        self._max_window = max(self._part, max_window // bs)
        self._last_block = fetcher.last_block(obj)
        self._window = self._part
        self._next_offset = 0
        self._streak = 0
        self._streak_reads = 0
        self._prefetched_until = -1  # last block index already scheduled
        self._lock = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        bs = self.fetcher.block_size
        prefetch: tuple[int, int] | None = None
        with self._lock:
            contiguous = offset == self._next_offset and self._streak > 0
            near = self._next_offset - self.BACKWARD_TOLERANCE <= offset <= self._next_offset + self.FORWARD_TOLERANCE
            # Small reads next to the previous one: the kernel filling holes in its cache of a file it mostly
            # has (pages reclaimed since it read them), several per block: whole blocks through the cache.
            hole = near and self._streak > 0 and size < bs
            if near:
                self._streak += size
                self._streak_reads += 1
                self._next_offset = max(self._next_offset, offset + size)
            else:
                self._streak = size
                self._streak_reads = 1
                self._next_offset = offset + size
                self._window = self._part
                self._prefetched_until = -1
            sequential = self._streak >= self.SEQUENTIAL_TRIGGER and self._streak_reads >= self.SEQUENTIAL_READS
            if sequential:
                current = (offset + size - 1) // bs
                self._window = min(self._window * 2, self._max_window)
                part = self._part  # the window ends where a part ends: every read-ahead GET is a whole part
                target = min((current + self._window) // part * part + part - 1, self._last_block)
                start = max(self._prefetched_until + 1, current + 1)
                if target - start + 1 >= self._part or (target == self._last_block and start <= target):
                    prefetch = (start, target)
        if sequential or contiguous or hole or self.obj.size <= bs:  # a small file is one block: cache it whole
            # Whole parts only for a reader strictly continuing a sequential run: random reads that happen to
            # land close together must not wait for 8 MiB each.
            data = self.fetcher.read(self.store, self.obj, offset, size, whole_parts=sequential and contiguous)
        else:
            data = self.fetcher.read_exact(self.store, self.obj, offset, size)
        if prefetch is not None:
            scheduled = self.fetcher.prefetch(self.store, self.obj, *prefetch)
            with self._lock:
                self._prefetched_until = max(self._prefetched_until, scheduled)
        return data
