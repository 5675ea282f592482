"""The persistent block cache on disk, shared by every mount (and `quiltmount prefetch`) of the user.

```
ROOT/index.sqlite      one row per cached block: (key, block) -> file, size, checksum, source, last use
ROOT/blocks/xx/NAME    the block's bytes, one file each (0600; directories 0700)
ROOT/tmp/              blocks being written: fsync'd, then renamed into blocks/ and only then indexed
```

A writer reserves room for the blocks it is about to write (a row in `reservations`, counted against the cap
by every process, forgotten after RESERVATION_SECONDS if its process died) and evicts before it writes, so the
files on disk stay within the cap even while many writers of many mounts fill the cache at once.

Keys name immutable bytes (`cache/keys.py`): a package entry's content hash, or an object's version or ETag,
so a block is valid for as long as it exists and the cache needs no invalidation.  The index lives in SQLite
(WAL mode) so that concurrent daemons share one cap and one LRU order, and so that a mount costs the same
whatever the cache holds: nothing is scanned or loaded at start, memory does not grow with the cap.  The
total size is kept in the database by triggers, so every process sees the same figure.

Every read checks the file's size and checksum (XXH3-64, computed when the block was written) against its row:
a block cut short or altered on disk is dropped, never served.  XXH3 rather than CRC-32: measured here, XXH3
runs at ~48 GB/s and zlib's CRC-32 at 2-3, and both the cold read that fills the cache and every re-read pay it.
Writes are done by background threads, off the read path: a block waits in a bounded queue (dropped when the
queue is full, unless the caller asks to wait, as prefetch does).  Least recently used blocks go first once the
cap is passed; uses are recorded in memory and written in batches.  A full disk (ENOSPC) or an unusable cache
turns the disk tier off for this process, with a log line: reads go on.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import re
import secrets
import shutil
import sqlite3
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import xxhash
from cachetools import LRUCache

from quiltmount.paths import make_private_dir

log = logging.getLogger(__name__)

Bytes = bytes | memoryview

#: The cap of a new cache: the smaller of this and DEFAULT_FREE_SHARE of the free space where it is created.
DEFAULT_CAP = 10 << 30
DEFAULT_FREE_SHARE = 0.10
#: Bytes waiting to be written.  Past it, readers putting blocks wait (back-pressure: the disk keeps up with
#: the network) for up to QUEUE_WAIT seconds, then their blocks stay in memory only (a disk that stalls).
QUEUE_BYTES = 64 << 20
QUEUE_WAIT = 5.0
#: Threads writing blocks: an fsync each, so several overlap their waits.
WRITERS = 3
#: Blocks a writer takes at once: their files are written one by one, their rows in one transaction.  A batch
#: holds at most 1/BATCH_SHARE of the cap (and at least one block), so that small caps hold too.
WRITE_BATCH = 8
BATCH_SHARE = 16
#: A reservation older than this no longer counts (its writer died, or its disk stalled).
RESERVATION_SECONDS = 60.0
#: Recorded uses written to the index at least this often (seconds), or when this many are waiting.
TOUCH_SECONDS = 2.0
TOUCH_BATCH = 4096
#: (key, origin) pairs remembered as checked, for their blocks still waiting to be written.
CHECKED_MEMORY = 4096
#: Rows evicted per transaction.
EVICT_BATCH = 256
#: Block files are written with O_DIRECT where the filesystem takes it, from a buffer each writer reuses, padded
#: to this alignment and then truncated to the block's size.  Through the page cache, writing 512 block files of
#: 1 MiB (fsync'd, 3 threads) took 0.6-0.8 s of CPU here, direct 0.22-0.26 s; a cold read that fills the cache
#: shares its cores with those writers.  Reads stay buffered (a block's memory is its own, not a reused buffer).
DIRECT_ALIGNMENT = 4096

#: Names of block files (`secrets.token_hex(16)`) and of their directories under blocks/ (the first two digits).
_FILE = re.compile(r"[0-9a-f]{32}")
_PREFIX = re.compile(r"[0-9a-f]{2}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    key TEXT NOT NULL, block INTEGER NOT NULL, file TEXT NOT NULL, size INTEGER NOT NULL,
    checksum INTEGER NOT NULL, source TEXT NOT NULL, used REAL NOT NULL, pending TEXT,
    PRIMARY KEY (key, block)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_by_use ON blocks (used);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (writer TEXT PRIMARY KEY, size INTEGER NOT NULL, since REAL NOT NULL);
INSERT OR IGNORE INTO settings VALUES ('bytes', 0);
CREATE TRIGGER IF NOT EXISTS blocks_added AFTER INSERT ON blocks
    BEGIN UPDATE settings SET value = value + NEW.size WHERE name = 'bytes'; END;
CREATE TRIGGER IF NOT EXISTS blocks_removed AFTER DELETE ON blocks
    BEGIN UPDATE settings SET value = value - OLD.size WHERE name = 'bytes'; END;
"""


#: The index's format (`PRAGMA user_version`).  A cache of an older one is emptied when first opened by this
#: version: 0, before checksums were XXH3-64 (CRC-32 then), its blocks could not be checked; 2, before a pending
#: block's origin pinned the bytes it was read from (an unversioned bucket's package entry had one origin for
#: all its versions), some of its checked blocks may hold bytes that never matched their hash.
FORMAT = 3


def block_checksum(data: Bytes) -> int:
    """The checksum a block is kept with: XXH3-64 of its bytes, as a signed 64-bit integer (SQLite's INTEGER)."""
    value = xxhash.xxh3_64_intdigest(data)
    return value - (1 << 64) if value >= 1 << 63 else value


class ContentChecker(Protocol):
    """Checks a key's whole content (`DiskCache.verify`): fed every block in order, then asked for a result."""

    def update(self, data: bytes) -> None: ...

    def result(self) -> bool | None: ...


#: `content_check(key, [(block, size), ...])` of `DiskCache.verify`: a checker for that key's content, or None.
ContentCheck = Callable[[str, list[tuple[int, int]]], ContentChecker | None]


def default_capacity(root: str) -> int:
    """The cap of a cache created at `root`: the smaller of 10 GiB and 10% of the free space there."""
    free = shutil.disk_usage(root).free
    return max(0, min(DEFAULT_CAP, int(free * DEFAULT_FREE_SHARE)))


class DiskCache:
    """Blocks of immutable bytes under `root`, shared with every other process that opens the same root."""

    def __init__(self, root: str, capacity: int | None = None, *, writers: int = WRITERS,
                 queue_bytes: int = QUEUE_BYTES) -> None:
        """Open (or create) the cache at `root`.  `capacity`: set the shared cap to this many bytes (kept for
        the other mounts too); None keeps the cap the cache has, or gives a new cache `default_capacity`."""
        self.root = root
        for directory in (root, os.path.join(root, "blocks"), os.path.join(root, "tmp")):
            make_private_dir(directory)
        self._db_path = os.path.join(root, "index.sqlite")
        os.close(os.open(self._db_path, os.O_WRONLY | os.O_CREAT, 0o600))  # 0600 from the start (its -wal too)
        self._reader = self._connect()
        self._writer = self._connect()
        self._reader_lock = threading.Lock()
        self._writer_lock = threading.Lock()
        self._upgrade()
        with self._writer_lock:
            self._writer.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {FORMAT}; COMMIT;")
        with self._writing() as db:
            if capacity is not None:
                db.execute("INSERT OR REPLACE INTO settings VALUES ('capacity', ?)", (capacity,))
            else:
                db.execute("INSERT OR IGNORE INTO settings VALUES ('capacity', ?)", (default_capacity(root),))
        self._capacity = self.capacity  # for `put`; refreshed whenever the cap is enforced
        self.enabled = True
        self.hits = 0
        self.misses = 0
        self.dropped = 0
        self._counts = threading.Lock()
        self._checked: LRUCache[tuple[str, str], bool] = LRUCache(CHECKED_MEMORY)
        self._touched: dict[tuple[str, int], float] = {}
        self._last_touch_flush = time.monotonic()
        self._queue: deque[tuple[str, int, Bytes, str, str | None]] = deque()
        self._queued_bytes = 0
        self._queue_limit = queue_bytes
        queue_lock = threading.Lock()
        self._work = threading.Condition(queue_lock)  # writers wait for blocks
        self._room = threading.Condition(queue_lock)  # putters wait for room, `flush` for an empty queue
        self._made_dirs: set[str] = set()
        self._direct = hasattr(os, "O_DIRECT")  # until the filesystem refuses it
        self._buffers = threading.local()  # each writer's aligned buffer for O_DIRECT writes
        self._closing = False
        self._busy = 0
        self._threads = [threading.Thread(target=self._write_loop, name=f"disk-cache-{number}", daemon=True)
                         for number in range(writers)]
        for thread in self._threads:
            thread.start()

    # -- database ---------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._db_path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on this process's writing connection (other processes wait for it)."""
        with self._writer_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    def _upgrade(self) -> None:
        """Empty a cache an older format of the index describes (its rows cannot be trusted: `FORMAT`): its
        block files are removed, and the schema is then created afresh."""
        with self._writing() as db:
            old_format = db.execute("PRAGMA user_version").fetchone()[0]
            if old_format >= FORMAT or not db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'blocks'").fetchone():
                return
            files = [file for (file,) in db.execute("SELECT file FROM blocks")]
            db.execute("DROP TABLE blocks")
            db.execute("DELETE FROM reservations")
            db.execute("UPDATE settings SET value = 0 WHERE name = 'bytes'")
        self._unlink(files)
        log.warning("disk cache at %r was written by an older quiltmount (format %d, now %d): its %d blocks were "
                    "removed", self.root, old_format, FORMAT, len(files))

    def _setting(self, name: str) -> int:
        with self._reader_lock:
            row = self._reader.execute("SELECT value FROM settings WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    @property
    def capacity(self) -> int:
        return self._setting("capacity")

    @property
    def used(self) -> int:
        return self._setting("bytes")

    def _path(self, file: str) -> str:
        return os.path.join(self.root, "blocks", file[:2], file)

    # -- reading ----------------------------------------------------------------------------------------
    def _row(self, key: str, block: int) -> tuple[str, int, int] | None:
        """The block's file, size and checksum, if it is cached and may be served (not pending a check)."""
        with self._reader_lock:
            return self._reader.execute("SELECT file, size, checksum FROM blocks WHERE key = ? AND block = ? AND "
                                        "pending IS NULL", (key, block)).fetchone()

    def contains(self, key: str, block: int) -> bool:
        return self.enabled and self._row(key, block) is not None

    def cached_blocks(self, key: str, first: int, last: int) -> set[int]:
        """Which of blocks first..last `get` would find (one query for the run, not one per block)."""
        if not self.enabled:
            return set()
        with self._reader_lock:
            rows = self._reader.execute("SELECT block FROM blocks WHERE key = ? AND block BETWEEN ? AND ? AND "
                                        "pending IS NULL", (key, first, last)).fetchall()
        return {block for (block,) in rows}

    def get(self, key: str, block: int) -> bytes | None:
        """The block's bytes, checked against their size and checksum; None if not cached (or damaged)."""
        row = self._row(key, block) if self.enabled else None
        data = None if row is None else self._read_checked(key, block, *row)
        if data is not None:  # (a miss is counted when the block, read from the source instead, is `put`)
            with self._counts:
                self.hits += 1
                self._touched[(key, block)] = time.time()
        return data

    def _read_file(self, file: str, size: int) -> bytes:
        """A block file's bytes (one more than `size`, if it has more: grown files are damaged too)."""
        with open(self._path(file), "rb") as handle:
            return handle.read(size + 1)

    def _read_checked(self, key: str, block: int, file: str, size: int, checksum: int) -> bytes | None:
        path = self._path(file)
        try:
            data = self._read_file(file, size)
        except FileNotFoundError:  # evicted by another process meanwhile, or removed by hand
            self._forget(key, block, file)
            return None
        except OSError as exc:
            log.warning("disk cache: cannot read %r (%s); reading from the source", path, exc)
            return None
        if len(data) != size or block_checksum(data) != checksum:
            log.warning("disk cache: %r is damaged (%d bytes of %d, or altered); dropped and read again from "
                        "the source", path, len(data), size)
            self._forget(key, block, file)
            return None
        return data

    def _forget(self, key: str, block: int, file: str) -> None:
        """Drop one row (if it still names `file`) and its file."""
        try:
            with self._writing() as db:
                db.execute("DELETE FROM blocks WHERE key = ? AND block = ? AND file = ?", (key, block, file))
        except sqlite3.Error as exc:
            log.warning("disk cache: cannot update the index (%s)", exc)
        self._unlink([file])

    def evict(self, key: str) -> int:
        """Drop every block of `key` (bytes that failed their content check); how many there were."""
        with self._counts:
            for checked in [checked for checked in self._checked if checked[0] == key]:
                del self._checked[checked]
        try:
            with self._writing() as db:
                rows = db.execute("DELETE FROM blocks WHERE key = ? RETURNING file", (key,)).fetchall()
        except sqlite3.Error as exc:
            log.warning("disk cache: cannot update the index (%s)", exc)
            return 0
        self._unlink(file for (file,) in rows)
        return len(rows)

    def mark_checked(self, key: str, origin: str) -> None:
        """The bytes `origin` gave for `key` were checked whole (they match the content hash in `key`): its
        blocks, written and still to be written, may be served from now on."""
        with self._counts:
            self._checked[(key, origin)] = True
        try:
            with self._writing() as db:
                db.execute("UPDATE blocks SET pending = NULL WHERE key = ? AND pending = ?", (key, origin))
        except sqlite3.Error as exc:
            log.warning("disk cache: cannot update the index (%s)", exc)

    # -- writing ----------------------------------------------------------------------------------------
    def put(self, key: str, block: int, data: Bytes, source: str, *, wait: bool = False,
            pending: str | None = None) -> bool:
        """Queue the block for writing; False if it was not: the disk tier is off, or the queue stayed full
        for QUEUE_WAIT seconds (`wait`: for as long as it takes).  `data` is kept, not copied, until written.

        `pending`: the block is not served until `mark_checked(key, pending)` says the whole content it is
        part of was checked (a package entry is checked against its hash once read whole; until then its
        bytes are only what one source said, and a wrong source must not spoil the entry for every other)."""
        if not self.enabled:
            return False
        with self._counts:  # read from the source, not from here: every way blocks are read comes here
            self.misses += 1
        if len(data) > self._capacity:
            return False
        deadline = None if wait else time.monotonic() + QUEUE_WAIT
        with self._room:
            while self._queued_bytes + len(data) > self._queue_limit and self._queue:
                left = None if deadline is None else deadline - time.monotonic()
                if self._closing or (left is not None and left <= 0):
                    self.dropped += 1
                    return False
                self._room.wait(left)
            self._queue.append((key, block, data, source, pending))
            self._queued_bytes += len(data)
            self._work.notify()
        return True

    def flush(self) -> None:
        """Wait until every queued block is written (and recorded uses are in the index)."""
        with self._room:
            while self._queue or self._busy:
                self._room.wait()
        self._flush_touches()

    def _write_loop(self) -> None:
        while True:
            with self._work:
                while not self._queue and not self._closing:
                    if not self._work.wait(TOUCH_SECONDS):
                        break
                if not self._queue and self._closing:
                    return
                batch, size = [], 0
                while self._queue and len(batch) < WRITE_BATCH and (
                        not batch or size + len(self._queue[0][2]) <= self._capacity // BATCH_SHARE):
                    batch.append(self._queue.popleft())
                    size += len(batch[-1][2])
                self._busy += bool(batch)
            if batch:
                try:
                    self._write_batch(batch)
                except Exception:  # never let one batch stop the writer
                    log.exception("disk cache: writing blocks failed")
                finally:
                    with self._room:
                        self._busy -= 1
                        self._queued_bytes -= sum(len(item[2]) for item in batch)
                        self._room.notify_all()
            self._flush_touches_if_due()

    def _write_batch(self, batch: list[tuple[str, int, Bytes, str, str | None]]) -> None:
        """Reserve room for the blocks, write their files (fsync'd, renamed into place), then index them and
        drop the reservation in one transaction."""
        wanted = []
        for item in batch:
            key, block, _, _, pending = item
            with self._reader_lock:
                row = self._reader.execute("SELECT pending FROM blocks WHERE key = ? AND block = ?",
                                           (key, block)).fetchone()
            if row is None or (row[0] is not None and row[0] != pending):
                wanted.append(item)  # (else cached already: a checked copy, or an unchecked one of this origin)
        if not wanted or not self.enabled:
            return
        writer = f"{os.getpid()}:{threading.get_ident()}"
        try:
            self._shrink(None, reserve=(writer, sum(len(item[2]) for item in wanted)))
        except sqlite3.Error as exc:
            self._write_failed(exc)
            return
        written = []
        for key, block, data, source, pending in wanted:
            if not self.enabled:
                break
            checksum = block_checksum(data)  # (before the transaction: other processes wait on it)
            file = self._write_file(data)
            if file is not None:
                written.append((key, block, data, source, pending, checksum, file))
        unused, replaced = [], []
        try:
            with self._writing() as db:
                db.execute("DELETE FROM reservations WHERE writer = ?", (writer,))
                for key, block, data, source, pending, checksum, file in written:
                    with self._counts:  # in the transaction: a check recorded before it is seen here
                        if pending is not None and (key, pending) in self._checked:
                            pending = None
                    replaced += db.execute("DELETE FROM blocks WHERE key = ? AND block = ? AND pending IS NOT NULL "
                                           "AND pending IS NOT ? RETURNING file", (key, block, pending)).fetchall()
                    if not db.execute("INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                                      (key, block, file, len(data), checksum, source, time.time(),
                                       pending)).rowcount:
                        unused.append(file)  # another process cached it meanwhile
        except sqlite3.Error as exc:
            self._write_failed(exc)
            unused, replaced = [item[-1] for item in written], []
        # (replaced: unchecked copies of another origin, a checked copy or one of another origin came)
        self._unlink(unused + [old for (old,) in replaced])
        self._shrink(None)

    def _write_file(self, data: Bytes) -> str | None:
        """A new block file holding `data`, durable before it gets its name; None if the disk refused."""
        file = secrets.token_hex(16)
        temp = os.path.join(self.root, "tmp", file)
        try:
            direct = self._direct
            try:
                self._create(temp, data, direct=direct)
            except OSError as exc:
                if not direct or exc.errno != errno.EINVAL:
                    raise
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                self._direct = False
                log.info("disk cache at %r: the filesystem refuses O_DIRECT (%s); block files are written through "
                         "the page cache", self.root, exc)
                self._create(temp, data, direct=False)
            path = self._path(file)
            directory = os.path.dirname(path)
            if directory not in self._made_dirs:
                make_private_dir(directory)
                self._made_dirs.add(directory)
            try:
                os.rename(temp, path)
            except FileNotFoundError:  # its directory was removed meanwhile (by hand)
                make_private_dir(directory)
                os.rename(temp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            self._write_failed(exc)
            return None
        return file

    def _create(self, temp: str, data: Bytes, *, direct: bool) -> None:
        """Write `data` to the new file `temp` and fsync it (`direct`: with O_DIRECT)."""
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | (os.O_DIRECT if direct else 0), 0o600)
        try:
            if direct:
                self._write_aligned(descriptor, data)
            else:
                view = memoryview(data)
                while view:
                    view = view[os.write(descriptor, view):]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def _write_aligned(self, descriptor: int, data: Bytes) -> None:
        """Write `data` through this thread's aligned buffer, padded to DIRECT_ALIGNMENT, then cut the file to
        its size (O_DIRECT takes only aligned addresses, lengths and offsets)."""
        size = len(data)
        padded = -(-size // DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT
        buffer = getattr(self._buffers, "buffer", None)
        if buffer is None or len(buffer) < padded:
            buffer = self._buffers.buffer = mmap.mmap(-1, max(padded, DIRECT_ALIGNMENT))  # page-aligned
        buffer[:size] = data
        with memoryview(buffer) as whole, whole[:padded] as view:
            offset = 0
            while offset < padded:
                offset += os.pwrite(descriptor, view[offset:], offset)
        if padded != size:
            os.ftruncate(descriptor, size)

    def _write_failed(self, exc: Exception) -> None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = "the disk is full"
        elif isinstance(exc, (OSError, sqlite3.Error)):
            reason = str(exc)
        else:
            raise exc
        if self.enabled:
            self.enabled = False
            log.warning("disk cache at %r turned off for this mount (%s): blocks are cached in memory only",
                        self.root, reason)

    def _shrink(self, to: int | None, *, reserve: tuple[str, int] | None = None) -> tuple[int, int]:
        """Remove least recently used blocks (of any mount) until at most `to` bytes are cached (None: the
        cap, read afresh in each transaction, less the room other writers reserved): (blocks, bytes) removed.
        `reserve` (writer, size): make room for `size` more bytes and reserve it for that writer, in the
        transaction that finds the room (or, if the cap is too small for it, once nothing is left to evict)."""
        writer, room = reserve if reserve else ("", 0)
        removed = freed = 0
        while True:
            with self._writing() as db:
                settings = dict(db.execute("SELECT name, value FROM settings").fetchall())
                if to is None:
                    self._capacity = settings["capacity"]
                    limit = self._capacity - db.execute(
                        "SELECT coalesce(sum(size), 0) FROM reservations WHERE since > ? AND writer != ?",
                        (time.time() - RESERVATION_SECONDS, writer)).fetchone()[0]
                else:
                    limit = to
                excess = settings["bytes"] + room - limit
                files = self._delete_oldest(db, excess) if excess > 0 else []
                cached = db.execute("SELECT value FROM settings WHERE name = 'bytes'").fetchone()[0]
                freed += settings["bytes"] - cached
                done = cached + room <= limit or not files
                if done and reserve:
                    db.execute("INSERT OR REPLACE INTO reservations VALUES (?, ?, ?)", (writer, room, time.time()))
            self._unlink(files)
            removed += len(files)
            if done:
                return removed, freed

    def _unlink(self, files: Iterable[str]) -> None:
        """Remove block files whose rows are gone (one already gone is no error)."""
        for file in files:
            with contextlib.suppress(OSError):
                os.unlink(self._path(file))

    @staticmethod
    def _delete_oldest(db: sqlite3.Connection, excess: int) -> list[str]:
        """Delete least recently used rows (at most EVICT_BATCH) until `excess` bytes are freed; their files
        (to unlink once committed)."""
        oldest = db.execute("SELECT key, block, file, size FROM blocks ORDER BY used LIMIT ?",
                            (EVICT_BATCH,)).fetchall()
        files = []
        for key, block, file, size in oldest:
            if excess <= 0:
                break
            db.execute("DELETE FROM blocks WHERE key = ? AND block = ?", (key, block))
            files.append(file)
            excess -= size
        return files

    # -- uses -------------------------------------------------------------------------------------------
    def _flush_touches_if_due(self) -> None:
        with self._counts:
            due = (len(self._touched) >= TOUCH_BATCH
                   or (self._touched and time.monotonic() - self._last_touch_flush >= TOUCH_SECONDS))
        if due:
            self._flush_touches()

    def _flush_touches(self) -> None:
        with self._counts:
            touched, self._touched = self._touched, {}
            self._last_touch_flush = time.monotonic()
        if not touched or not self.enabled:
            return
        try:
            with self._writing() as db:
                db.executemany("UPDATE blocks SET used = ? WHERE key = ? AND block = ?",
                               [(used, key, block) for (key, block), used in touched.items()])
        except sqlite3.Error as exc:
            log.warning("disk cache: cannot record uses (%s)", exc)

    # -- administration (`quiltmount cache`) ------------------------------------------------------------
    def usage(self) -> list[dict[str, int | str]]:
        """Blocks and bytes cached per source and kind (`package` entries by hash, bucket `object`s)."""
        with self._reader_lock:
            rows = self._reader.execute(
                "SELECT source, CASE WHEN key LIKE 'hash:%' THEN 'package' ELSE 'object' END AS kind, "
                "count(*), sum(size), count(DISTINCT key) FROM blocks GROUP BY source, kind ORDER BY source, kind"
            ).fetchall()
        return [{"source": source, "kind": kind, "blocks": blocks, "bytes": size, "files": files}
                for source, kind, blocks, size, files in rows]

    def counts(self) -> tuple[int, int]:
        """(blocks, distinct keys) cached: a key is one file's bytes, whichever sources its blocks came from."""
        with self._reader_lock:
            blocks, keys = self._reader.execute("SELECT count(*), count(DISTINCT key) FROM blocks").fetchone()
        return blocks, keys

    def prune(self, to: int) -> tuple[int, int]:
        """Remove least recently used blocks until at most `to` bytes are cached: (blocks, bytes) removed."""
        self._flush_touches()
        return self._shrink(to)

    def clear(self) -> tuple[int, int]:
        """Remove every block: (blocks, bytes) removed."""
        return self.prune(0)

    def remove_orphans(self, *, orphan_age: float = 60.0) -> int:
        """Remove block files no row names (left by a crash between a block's rename and its row, or by a
        hand) and unfinished temporary files, once `orphan_age` seconds old: younger ones may be a daemon's
        block in the middle of being written.  Only files named as this cache names them are considered
        (`blocks/xx/xx...` and `tmp/...`, 32 hex digits), whatever else the directory holds.  How many."""
        now = time.time()
        tmp, blocks = os.path.join(self.root, "tmp"), os.path.join(self.root, "blocks")
        places = [tmp]
        with contextlib.suppress(OSError):
            places += [os.path.join(blocks, name) for name in sorted(os.listdir(blocks)) if _PREFIX.fullmatch(name)]
        candidates: list[tuple[str, str, bool]] = []  # (path, file name, in tmp/)
        for directory in places:
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            for name in names:
                path = os.path.join(directory, name)
                if not _FILE.fullmatch(name) or (directory != tmp and path != self._path(name)):
                    continue
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode) and now - info.st_mtime > orphan_age:
                    candidates.append((path, name, directory == tmp))
        # The rows are read after the files were listed: a block renamed into place and then indexed while
        # this ran is among them.
        wanted = {name for _, name, in_tmp in candidates if not in_tmp}
        named = set()
        if wanted:
            with self._reader_lock:
                named = {file for (file,) in self._reader.execute("SELECT file FROM blocks") if file in wanted}
        removed = 0
        for path, name, in_tmp in candidates:
            if not in_tmp and name in named:
                continue
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed += 1
        return removed

    def verify(self, *, orphan_age: float = 60.0, content_check: ContentCheck | None = None,
               progress: Callable[[int, int], object] | None = None) -> dict[str, int]:
        """Check every cached block against its size and checksum (damaged ones are removed), and remove
        orphan files (`remove_orphans`).

        `content_check(key, [(block, size), ...])`, if given, is asked for each key (its blocks in order)
        for a checker of the whole content: an object with `update(data)`, fed every block in order, and
        `result()`: True (the bytes are right), False (they are not: every block of the key is removed) or
        None (cannot tell, e.g. blocks missing).  `progress(done, total)` is called as blocks are checked.

        Blocks a daemon evicts or adds while this runs are skipped, never reported damaged.  Returns counts:
        `checked` blocks (`bytes` in them), `damaged` (removed), `hashed` keys whose content was checked,
        `failed` ones of those (removed, `failed_blocks` blocks), `orphans` removed."""
        counts = dict.fromkeys(("checked", "bytes", "damaged", "hashed", "failed", "failed_blocks", "orphans"), 0)
        with self._reader_lock:
            total = self._reader.execute("SELECT count(*) FROM blocks").fetchone()[0]
        done = 0

        def advance() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, max(total, done))

        group: list[tuple[str, int, str, int, int]] = []
        for row in self._rows_in_order():
            if group and row[0] != group[0][0]:
                self._verify_key(group, content_check, counts, advance)
                group = []
            group.append(row)
        if group:
            self._verify_key(group, content_check, counts, advance)
        counts["orphans"] = self.remove_orphans(orphan_age=orphan_age)
        return counts

    def _rows_in_order(self, page: int = 1000) -> Iterator[tuple[str, int, str, int, int]]:
        """Every row, by key and block, a page per read transaction (a long check never pins an old snapshot
        of the index, which would keep the daemons' WAL growing)."""
        after: tuple[str, int] = ("", -1)
        while True:
            with self._reader_lock:
                rows = self._reader.execute(
                    "SELECT key, block, file, size, checksum FROM blocks WHERE (key, block) > (?, ?) "
                    "ORDER BY key, block LIMIT ?", (*after, page)).fetchall()
            yield from rows
            if len(rows) < page:
                return
            after = (rows[-1][0], rows[-1][1])

    def _verify_key(self, rows: list[tuple[str, int, str, int, int]], content_check: ContentCheck | None,
                    counts: dict[str, int], advance: Callable[[], None]) -> None:
        """Check the blocks of one key (`rows`, in block order), and its whole content if asked."""
        key = rows[0][0]
        checker = None if content_check is None else content_check(key, [(row[1], row[3]) for row in rows])
        for _, block, file, size, checksum in rows:
            state, data = self._check_block(key, block, file, size, checksum)
            advance()
            if state == "gone":  # evicted (or replaced) by another process meanwhile
                checker = None
                continue
            counts["checked"] += 1
            if state == "damaged":
                counts["damaged"] += 1
                checker = None
                continue
            counts["bytes"] += size
            if checker is not None:
                checker.update(data)
        result = None if checker is None else checker.result()
        if result is not None:
            counts["hashed"] += 1
        if result is False:
            log.info("disk cache: the cached bytes of %r do not hash to it; removed", key)
            counts["failed"] += 1
            counts["failed_blocks"] += self.evict(key)

    def _check_block(self, key: str, block: int, file: str, size: int, checksum: int) -> tuple[str, bytes]:
        """("ok", bytes), ("damaged", b"") once dropped, or ("gone", b"") if the row went meanwhile."""
        try:
            data = self._read_file(file, size)
        except FileNotFoundError:
            row = self._row(key, block)
            if row is None or row[0] != file:
                return "gone", b""
            data = b""
        except OSError:
            data = b""
        if len(data) == size and block_checksum(data) == checksum:
            return "ok", data
        self._forget(key, block, file)
        return "damaged", b""

    # -- life -------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, int | bool | str]:
        with self._counts:
            counts = {"disk_hits": self.hits, "disk_misses": self.misses, "disk_dropped": self.dropped}
        return {"disk_used": self.used, "disk_limit": self.capacity, "disk_dir": self.root,
                "disk_enabled": self.enabled, **counts}

    def close(self) -> None:
        """Write what is queued, then stop the writers and close the index."""
        self.flush()
        with self._work:
            self._closing = True
            self._work.notify_all()
            self._room.notify_all()
        for thread in self._threads:
            thread.join()
        for db in (self._reader, self._writer):
            db.close()
