"""Prefetch, in the daemon: fill the shared disk cache with every file under paths of the mount.

`quiltmount prefetch PATH...` (prefetchctl.py) runs here, where the stores, the credentials and the revision
indexes are: names, sizes and identities come from the listings and indexes the tree already has (no HEAD
per file), and the bytes go straight to the disk cache with ranged GETs on a pool of threads, never through
FUSE reads nor through the memory tier (a 10 GiB prefetch must not evict the blocks a reader uses now).

The client talks to the daemon through extended attributes that every path of the mount answers without
listing them (`MountTree`), all read with getxattr, which needs only read permission and works on read-only
mounts (the kernel refuses every setxattr there with EROFS before the daemon sees it).  ID is chosen by the
client: 16 to 64 lowercase hex digits (random, so that concurrent prefetches of one mount stay apart):

```
user.quilt.prefetch.add.ID        on PATH: add PATH (file or directory, walked) to job ID, which starts at
                                  once; answers {} or {"error": ...} (e.g. the mount has no disk cache)
user.quilt.prefetch.wait.ID       anywhere: no more paths; waits until the job is done and answers its summary
                                  (answered again, unchanged, for KEEP_FINISHED seconds)
user.quilt.prefetch.progress.ID   anywhere: files and bytes found and done so far, and whether the walk goes on
user.quilt.prefetch.cancel.ID     anywhere: stop the job; its wait answers at once
```

Work: directories are listed (and revision entries looked up, for their physical keys) by LISTERS threads,
which also check which blocks the cache lacks; files with blocks missing are fetched by WORKERS threads: one
GET for a file of up to a part (8 MiB, the read-ahead's), one GET per part for larger ones, parts of one file
in parallel like those of many files.  The bytes in flight stay within a budget (`budget`, the read-ahead
budget of the mount).  Blocks are queued for the disk with `wait=True` (nothing dropped), and the job's
summary is only answered once they are on disk: a read of any prefetched file then makes no request.

Package entries are verified as they are fetched: a file of one part before any of its blocks is cached;
a larger one is hashed in order as its parts arrive, its blocks written as unchecked (`pending`, as the read
path writes them) and served only once the whole file matched.  A file whose bytes do not match its manifest
hash is reported, and none of its blocks is ever served.  Symlinks are not followed (a package directory's pointers
would fetch every revision); the paths given are resolved by the kernel, so `.../latest/` works.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quiltmount.cache.keys import Identity, object_identity
from quiltmount.errors import StorageError
from quiltmount.fs.node import Node, Tree
from quiltmount.storage.base import ObjectInfo, ObjectStore
from quiltmount.units import format_size

if TYPE_CHECKING:  # the command line imports the names below, and starts fast without these
    from quiltmount.fs.blockcache import BlockCache
    from quiltmount.packages.manifest import EntryHasher

log = logging.getLogger(__name__)

PREFIX = "user.quilt.prefetch."
ADD, WAIT, PROGRESS, CANCEL = "add", "wait", "progress", "cancel"
_NAME = re.compile(r"user\.quilt\.prefetch\.(add|wait|progress|cancel)\.([0-9a-f]{16,64})")
#: The error of a prefetch on a mount without the disk cache.
DISK_CACHE_OFF = "the disk cache is off for this mount (--disk-cache-size 0)"

#: Threads sending GETs: many small files are latency-bound, so more than the mount's read workers.
WORKERS = 32
#: Threads listing directories, looking up revision entries and checking the cache.
LISTERS = 8
#: What a GET counts against the byte budget at least: also bounds the small files queued for the workers.
MIN_COST = 64 << 10
#: Seconds a finished job's summary is kept for its client (and an abandoned idle job before it is dropped).
KEEP_FINISHED = 600.0
#: Failures a summary names (the count covers all of them).
MAX_FAILURES = 20


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


class _Budget:
    """Bytes fetched and not yet handed to the disk cache (or, for a large package file, not yet hashed).

    Waiters are woken once a quarter of the budget is free again, not at every release: thousands of small
    files go through it per second, and waking every waiting thread each time costs more CPU than the GETs."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting = 0
        self._changed = threading.Condition()

    def take(self, amount: int) -> int:
        """Wait for `amount` bytes (a request larger than the whole budget runs alone); what was taken."""
        amount = min(amount, self.limit)
        with self._changed:
            while self.used and self.used + amount > self.limit:
                self._waiting += 1
                try:
                    self._changed.wait()
                finally:
                    self._waiting -= 1
            self.used += amount
        return amount

    def give(self, amount: int) -> None:
        with self._changed:
            self.used -= amount
            if self._waiting and (self.used <= self.limit * 3 // 4 or not self.used):
                self._changed.notify_all()


class _InOrder:
    """Hashes a large file's parts in order while they arrive in any order: a part ahead of the hashed
    position waits here, keeping its share of the budget until it is hashed (so memory stays bounded)."""

    def __init__(self, hasher: EntryHasher, budget: _Budget) -> None:
        self._hasher = hasher
        self._budget = budget
        self._next = 0
        self._parked: dict[int, tuple[bytes, int]] = {}
        self._abandoned = False
        self._lock = threading.Lock()

    def add(self, number: int, data: bytes, cost: int) -> None:
        with self._lock:  # one thread hashes a file at a time, in order
            if self._abandoned:
                self._budget.give(cost)
                return
            self._parked[number] = (data, cost)
            while self._next in self._parked:
                data, cost = self._parked.pop(self._next)
                self._hasher.update(data)
                self._budget.give(cost)
                self._next += 1

    def abandon(self) -> None:
        """A part failed: the hash will never be complete; let go of the parts waiting."""
        with self._lock:
            self._abandoned = True
            parked, self._parked = self._parked, {}
        for _, cost in parked.values():
            self._budget.give(cost)

    def value(self) -> str | None:
        with self._lock:
            return None if self._abandoned or self._parked else self._hasher.value()


@dataclass(eq=False)
class _File:
    """A file being fetched: the GETs still to finish, and its hash in order (large package files)."""

    path: str
    store: ObjectStore
    obj: ObjectInfo
    ident: Identity
    missing: frozenset[int]
    expected_hash: tuple[str, str] | None
    #: Fetched whole in one GET and checked against `expected_hash` before any block is cached.
    check_whole: bool = False
    tasks: int = 0
    fetched_bytes: int = 0
    failed: bool = False
    in_order: _InOrder | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class PrefetchJob:
    """One client's prefetch: the paths it added, what was found and done, and its summary once done."""

    def __init__(self, job_id: str, tree: Tree) -> None:
        self.id = job_id
        self.tree = tree
        self.started = time.monotonic()
        self.touched = self.started
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.finishing = threading.Lock()
        self.paths: set[str] = set()
        self.sealed = False
        self.cancelled = False
        self.fatal: str | None = None
        self.pending = 0  # listings and GETs submitted and not finished
        self.listing = 0  # listings among them
        self.files = self.bytes = self.files_done = self.bytes_done = 0
        self.cached = self.cached_bytes = self.fetched = self.fetched_bytes = 0
        self.skipped = self.errors = self.requests = 0
        self.failures: list[dict[str, str]] = []
        self.summary: dict[str, Any] | None = None
        self.finished: float | None = None

    def begin(self, *, listing: bool = False) -> None:
        with self.lock:
            self.pending += 1
            self.listing += listing

    def end(self, *, listing: bool = False) -> None:
        with self.lock:
            self.pending -= 1
            self.listing -= listing
            if not self.pending:
                self.idle.notify_all()

    @property
    def stopped(self) -> bool:
        return self.cancelled or self.fatal is not None

    def found(self, size: int) -> None:
        with self.lock:
            self.files += 1
            self.bytes += size

    def progressed(self, num_bytes: int) -> None:
        with self.lock:
            self.bytes_done += num_bytes

    def file_done(self, size: int, *, cached: bool = False, fetched: int | None = None,
                  skipped: bool = False, progressed: int = 0) -> None:
        """A file is done: already cached, fetched (`fetched` bytes downloaded) or skipped (not cacheable).
        `progressed`: its bytes not yet counted as done."""
        with self.lock:
            self.files_done += 1
            self.bytes_done += progressed
            if cached:
                self.cached += 1
                self.cached_bytes += size
            elif skipped:
                self.skipped += 1
            elif fetched is not None:
                self.fetched += 1
                self.fetched_bytes += fetched

    def failed(self, path: str, error: str, *, file: bool = True) -> None:
        log.warning("prefetch %s: %r: %s", self.id, path, error)
        with self.lock:
            self.errors += 1
            self.files_done += file
            if len(self.failures) < MAX_FAILURES:
                self.failures.append({"path": path, "error": error})

    def progress(self) -> dict[str, Any]:
        with self.lock:
            return {"files": self.files, "bytes": self.bytes, "files_done": self.files_done,
                    "bytes_done": self.bytes_done, "listing": self.listing > 0 or not self.sealed,
                    "errors": self.errors, "done": self.summary is not None}

    def make_summary(self, disk_limit: int) -> dict[str, Any]:
        with self.lock:
            return {"files": self.files, "bytes": self.bytes, "cached": self.cached,
                    "cached_bytes": self.cached_bytes, "fetched": self.fetched, "fetched_bytes": self.fetched_bytes,
                    "skipped": self.skipped, "errors": self.errors, "failures": list(self.failures),
                    "requests": self.requests, "seconds": round(time.monotonic() - self.started, 3),
                    "cancelled": self.cancelled, "error": self.fatal, "disk_limit": disk_limit}


class Prefetcher:
    """The prefetch jobs of one mount, and the extended attributes that drive them (`MountTree.control`)."""

    def __init__(self, cache: BlockCache, *, block_size: int, part_size: int, budget: int,
                 workers: int = WORKERS, listers: int = LISTERS) -> None:
        self.cache = cache
        self.disk = cache.disk
        self.block_size = block_size
        self.blocks_per_part = max(1, part_size // block_size)
        self._budget = _Budget(max(budget, MIN_COST))
        self._workers = workers
        self._listers = listers
        self._jobs: dict[str, PrefetchJob] = {}
        self._lock = threading.Lock()
        self._fetch_pool: ThreadPoolExecutor | None = None
        self._list_pool: ThreadPoolExecutor | None = None
        self._closed = False

    # -- the extended attributes ----------------------------------------------------------------------
    def answers(self, name: str) -> bool:
        return name.startswith(PREFIX)

    def answer(self, tree: Tree, path: str, name: str) -> bytes:
        """The value of control attribute `name` read on `path` of `tree` (the whole mount)."""
        match = _NAME.fullmatch(name)
        if match is None:
            raise StorageError(f"{name}: not a prefetch request ({PREFIX}add|wait|progress|cancel.ID)", errno.EINVAL)
        verb, job_id = match.groups()
        if verb == ADD:
            return _json(self._add(tree, job_id, path))
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return _json({"error": f"no prefetch {job_id} in this mount (finished over {KEEP_FINISHED:.0f} s ago?)"})
        job.touched = time.monotonic()
        if verb == PROGRESS:
            return _json(job.progress())
        if verb == CANCEL:
            self._cancel(job)
            return _json({})
        return _json(self._wait(job))

    def _add(self, tree: Tree, job_id: str, path: str) -> dict[str, Any]:
        if self.disk is None:
            return {"error": DISK_CACHE_OFF}
        if not self.disk.enabled:
            return {"error": "the disk cache was turned off for this mount after a failure (the disk is full, or "
                             "see the daemon's log)"}
        with self._lock:
            if self._closed:
                return {"error": "the mount is being unmounted"}
            self._reap()
            job = self._jobs.get(job_id)
            if job is None:
                job = self._jobs[job_id] = PrefetchJob(job_id, tree)
                log.info("prefetch %s started", job_id)
            pools = self._pools()
        with job.lock:
            job.touched = time.monotonic()
            if job.sealed:
                return {"error": f"prefetch {job_id} is already being waited for: paths cannot be added"}
            if path in job.paths:
                return {}
            job.paths.add(path)
        self._submit(job, pools[1], self._walk, job, path, listing=True)
        return {}

    def _cancel(self, job: PrefetchJob) -> None:
        with job.lock:
            if job.summary is None and not job.cancelled:
                job.cancelled = True
                log.info("prefetch %s cancelled", job.id)

    def _wait(self, job: PrefetchJob) -> dict[str, Any]:
        with job.lock:
            job.sealed = True
            while job.pending:
                job.idle.wait()
        with job.finishing:  # the client asks twice when the summary is too long for its first buffer
            if job.summary is None:
                self._finish(job)
            job.touched = time.monotonic()
            assert job.summary is not None
            return job.summary

    def _finish(self, job: PrefetchJob) -> None:
        """Every GET is done: once their blocks are on disk (and large files that matched are marked so), the
        summary."""
        disk = self.disk
        assert disk is not None
        disk.flush()
        summary = job.make_summary(disk.capacity)
        with job.lock:
            job.summary = summary
            job.finished = time.monotonic()
        shown = sorted(job.paths)
        paths = ", ".join(repr(path) for path in shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
        log.info("prefetch %s of %s: %d files (%d bytes) in %.1f s: %d fetched (%d bytes, %d requests), %d already "
                 "cached, %d not cacheable, %d failed%s", job.id, paths,
                 summary["files"], summary["bytes"], summary["seconds"], summary["fetched"], summary["fetched_bytes"],
                 summary["requests"], summary["cached"], summary["skipped"], summary["errors"],
                 " (cancelled)" if job.cancelled else "")

    def _reap(self) -> None:
        """Drop jobs done and left alone for KEEP_FINISHED seconds (the caller holds the lock)."""
        now = time.monotonic()
        for job_id, job in list(self._jobs.items()):
            if now - job.touched > KEEP_FINISHED and (job.summary is not None or not job.pending):
                del self._jobs[job_id]

    @staticmethod
    def _submit(job: PrefetchJob, pool: ThreadPoolExecutor, task: Any, *args: Any, listing: bool = False) -> None:
        """Run `task(*args)` on `pool` as part of `job` (which waits for it); the task calls `job.end`."""
        job.begin(listing=listing)
        try:
            pool.submit(task, *args)
        except BaseException:  # the mount is being unmounted
            job.end(listing=listing)
            raise

    def _pools(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        """(GETs, listings), started with the first prefetch (the caller holds the lock)."""
        if self._fetch_pool is None or self._list_pool is None:
            self._fetch_pool = ThreadPoolExecutor(self._workers, thread_name_prefix="prefetch")
            self._list_pool = ThreadPoolExecutor(self._listers, thread_name_prefix="prefetch-list")
        return self._fetch_pool, self._list_pool

    # -- walking --------------------------------------------------------------------------------------
    def _walk(self, job: PrefetchJob, path: str, is_dir: bool | None = None) -> None:
        """A path the client added (a file, or a directory), or a directory found while listing one."""
        try:
            if not job.stopped:
                node = None if is_dir else job.tree.lookup(path)
                if node is None or node.is_dir:
                    self._list(job, path)
                elif not node.is_link:
                    self._found_file(job, path, node)
        except Exception as exc:
            job.failed(path, _reason(exc), file=False)
        finally:
            job.end(listing=True)

    def _list(self, job: PrefetchJob, directory: str) -> None:
        """Submit listings of the subdirectories, and handle the files here (symlinks are not followed)."""
        entries = job.tree.readdir(directory)
        for name, node in entries.items():
            if job.stopped:
                return
            path = f"{directory}/{name}" if directory else name
            if node.is_dir:
                self._submit(job, self._pools()[1], self._walk, job, path, True, listing=True)
            elif not node.is_link:
                self._found_file(job, path, node)

    def _found_file(self, job: PrefetchJob, path: str, node: Node) -> None:
        """Count a file found and submit its GETs; its failure is the file's alone."""
        job.found(node.size)
        try:
            if node.obj is None:  # revision listings give sizes only: the entry has its physical key
                node = job.tree.lookup(path)
            self._file(job, path, node)
        except Exception as exc:
            job.failed(path, _reason(exc))

    def _file(self, job: PrefetchJob, path: str, node: Node) -> None:
        """Submit GETs for the blocks of a file (counted by `job.found`) that the disk cache lacks."""
        disk = self.disk
        assert disk is not None
        obj, store = node.obj, node.store
        if obj is None or store is None:  # staged in this mount, or a local file a bucket's manifest names
            job.file_done(node.size, skipped=True, progressed=node.size)
            return
        ident = object_identity(store, obj)
        if ident.disk_key is None:  # a local directory's files, an object without ETag: never cached on disk
            job.file_done(obj.size, skipped=True, progressed=obj.size)
            return
        bs = self.block_size
        blocks = range((obj.size + bs - 1) // bs)
        missing = frozenset(index for index in blocks if not disk.contains(ident.disk_key, index))
        cached_bytes = obj.size - sum(self._block_length(obj, index) for index in missing)
        if not missing:
            job.file_done(obj.size, cached=True, progressed=obj.size)
            return
        job.progressed(cached_bytes)
        per_part = self.blocks_per_part
        if len(blocks) > per_part and ident.origin is None and node.expected_hash:
            # Its blocks wait on disk for its hash, tagged with the ETag its parts are read under (one HEAD).
            obj = store.pinned(obj)
            ident = object_identity(store, obj)
        file = _File(path, store, obj, ident, missing, node.expected_hash)
        if len(blocks) <= per_part:  # one GET: the whole file to verify it first, else what is missing
            file.check_whole = file.expected_hash is not None
            spans = [(0, len(blocks) - 1) if file.check_whole else (min(missing), max(missing))]
        elif file.expected_hash:  # every part, cached ones read from the disk, to hash the file in order
            spans = [(first, min(first + per_part - 1, len(blocks) - 1)) for first in range(0, len(blocks), per_part)]
            from quiltmount.packages.manifest import make_hasher

            file.in_order = _InOrder(make_hasher(file.expected_hash[0], obj.size), self._budget)
        else:
            spans = []
            for first in range(0, len(blocks), per_part):
                wanted = [index for index in range(first, min(first + per_part, len(blocks))) if index in missing]
                if wanted:
                    spans.append((wanted[0], wanted[-1]))
        file.tasks = len(spans)
        fetch_pool = self._pools()[0]
        for number, (first, last) in enumerate(spans):
            if job.stopped or file.failed:
                self._task_done(job, file, len(spans) - number)
                return
            cost = self._budget.take(max(MIN_COST, (last - first + 1) * bs))
            try:
                self._submit(job, fetch_pool, self._fetch, job, file, number, first, last, cost)
            except BaseException:
                self._budget.give(cost)
                with file.lock:
                    file.failed = True
                self._task_done(job, file, len(spans) - number)
                raise

    def _block_length(self, obj: ObjectInfo, index: int) -> int:
        return min(self.block_size, obj.size - index * self.block_size)

    # -- fetching -------------------------------------------------------------------------------------
    def _fetch(self, job: PrefetchJob, file: _File, number: int, first: int, last: int, cost: int) -> None:
        """Blocks first..last of `file` (part `number` of it): fetched (or read from the disk, for a large
        package file's hash), checked, and queued for the disk."""
        held = cost
        try:
            if job.stopped or file.failed:
                return
            data, fetched = self._bytes_of(job, file, first, last)
            obj = file.obj
            if file.check_whole:
                self._check_whole(file, data)
            self._store(job, file, first, last, data)
            with file.lock:
                file.fetched_bytes += fetched
            job.progressed(sum(self._block_length(obj, index) for index in range(first, last + 1)
                               if index in file.missing))
            if file.in_order is not None:
                held = 0
                file.in_order.add(number, data, cost)  # gives the budget back once hashed
        except Exception as exc:
            with file.lock:
                first_failure, file.failed = not file.failed, True
            if file.in_order is not None:
                file.in_order.abandon()
            if first_failure:
                job.failed(file.path, _reason(exc))
        finally:
            if held:
                self._budget.give(held)
            self._task_done(job, file, 1)
            job.end()

    def _bytes_of(self, job: PrefetchJob, file: _File, first: int, last: int) -> tuple[bytes, int]:
        """(bytes of blocks first..last, how many of them were downloaded): from the disk cache when it has
        them all (a large package file's cached parts, for its hash), else one ranged GET."""
        disk = self.disk
        assert disk is not None
        obj = file.obj
        if not any(index in file.missing for index in range(first, last + 1)):
            cached = [disk.get(file.ident.disk_key, index) for index in range(first, last + 1)]
            if all(block is not None for block in cached):
                return b"".join(cached), 0  # type: ignore[arg-type]
        start, end = first * self.block_size, min((last + 1) * self.block_size, obj.size)
        with job.lock:
            job.requests += 1
        data = file.store.get_range(obj, start, end)
        if len(data) != end - start:
            raise StorageError(f"read {len(data)} of {end - start} bytes at {start}")
        return data, len(data)

    def _check_whole(self, file: _File, data: bytes) -> None:
        """A file fetched whole in one GET: its bytes must match its manifest hash before any is cached."""
        from quiltmount.packages.manifest import hash_bytes

        assert file.expected_hash is not None
        hash_type, expected = file.expected_hash
        if hash_bytes(hash_type, data) != expected:
            raise StorageError(f"content does not match the manifest hash ({hash_type} {expected}): not cached")

    def _store(self, job: PrefetchJob, file: _File, first: int, last: int, data: bytes) -> None:
        """Queue the missing blocks among first..last for the disk, waiting for room (nothing is dropped).
        Blocks of a large package file are not served until the whole file has matched its hash."""
        disk = self.disk
        assert disk is not None
        bs = self.block_size
        ident = file.ident
        pending = ident.origin if ident.checked_on_disk and not file.check_whole else None
        for index in range(first, last + 1):
            if index not in file.missing:
                continue
            offset = (index - first) * bs
            block = data if offset == 0 and len(data) <= bs else data[offset:offset + bs]
            if not disk.put(ident.disk_key, index, block, ident.source, wait=True, pending=pending):
                raise self._not_taken(job, len(block))

    def _not_taken(self, job: PrefetchJob, size: int) -> StorageError:
        """The error of a block of `size` bytes the disk cache did not take: one larger than the cache's whole
        cap fails its file only; otherwise the disk tier was turned off (full, or failed), which stops the job."""
        disk = self.disk
        assert disk is not None
        capacity = disk.capacity
        if disk.enabled and size > capacity:
            return StorageError(f"not cached: its blocks ({format_size(size)}) are larger than the disk cache's cap "
                                f"({format_size(capacity)}; quiltmount mount --disk-cache-size SIZE sets it)")
        with job.lock:
            if job.fatal is None:
                job.fatal = ("the disk cache stopped taking blocks (the disk is full, or it failed: see the "
                             "daemon's log)")
        return StorageError("not cached: the disk cache stopped taking blocks")

    def _task_done(self, job: PrefetchJob, file: _File, tasks: int) -> None:
        """`tasks` GETs of `file` are over; after its last one, the file is done (and its hash checked)."""
        with file.lock:
            file.tasks -= tasks
            if file.tasks:
                return
            failed, fetched = file.failed, file.fetched_bytes
        obj = file.obj
        if failed:  # reported; what was fetched of it stays cached, unchecked, as a reader's blocks would
            return
        if job.stopped:
            with job.lock:
                job.files_done += 1
            return
        if file.in_order is not None:
            assert file.expected_hash is not None
            hash_type, expected = file.expected_hash
            if file.in_order.value() != expected:  # its blocks stay unchecked: never served
                job.failed(file.path, f"content does not match the manifest hash ({hash_type} {expected}): not "
                                      "cached")
                return
            self.cache.checked(file.ident)  # its blocks may be served, those still queued too
        job.file_done(obj.size, fetched=fetched)

    # -- life -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Cancel every job and stop the threads (at unmount)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
            pools = [pool for pool in (self._list_pool, self._fetch_pool) if pool is not None]
        for job in jobs:
            self._cancel(job)
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=False)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, StorageError):
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return f"{type(exc).__name__}: {exc}"
