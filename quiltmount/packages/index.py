"""An immutable on-disk index of one package revision, built by streaming its manifest (no FUSE here).

A revision of a million entries is a 250 MB manifest; parsed into Python objects it took 1.5 GiB and a minute,
per mount and per revision.  The index is built once per (registry, top hash), by reading the manifest one
line at a time, and every later mount of the user opens it in milliseconds.

Why SQLite (the stdlib's `sqlite3`): a B-tree keyed by `(parent, name)` answers a lookup and an ordered
listing of one directory with indexed queries, as mountpoint-s3's manifest mode and CernVM-FS catalogs do;
its pages come from the OS page cache, so the daemon's memory is bounded by the connection's page cache
whatever the revision's size; it is one file, built under a temporary name and renamed into place, so a
reader never sees half an index and concurrent builders cannot corrupt each other; and it needs no new
dependency.  (LMDB would need one; a hand-written sorted file would need its own B-tree and checks.)

```
info(key, value)        format, top_hash, manifest (URL), stamp (the file's mtime), manifest_bytes, entries,
                        directories, header, complete, published (the manifest's LastModified, when known:
                        the revision's files show it as their mtime), manifest_etag (the manifest's ETag, when
                        known: physical keys are not in the top hash, so a push of the same content under
                        another name rewrites the manifest with other ones, and the index is then rebuilt)
nodes(id, parent, name, size, hash_type, hash_value, hash, physical_key, meta)
                        one row per file and directory; the root is id 0 and has no row; directories have
                        size NULL; `meta` is the JSON the xattr shows, `hash` too when the manifest's hash
                        object is not exactly {"type", "value"} (else NULL: one JSON encoding less per entry)
dir_meta(path, meta)    directory metadata lines (path without the trailing '/')
```

The top hash is computed while the manifest streams by (entries in tree-walk order, as quilt3 writes them);
a manifest in another order is read a second time with the hash parts spilled to a temporary table.  Only a
manifest that hashes to its name becomes an index.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from cachetools import LRUCache

from quiltmount.files import remove_file
from quiltmount.names import invalid_path_reason
from quiltmount.packages.manifest import (
    DirMeta, Entry, ManifestError, entry_hash_part, header_hash_part, iter_manifest, normalize_physical_key, short_repr,
    tree_sort_key,
)

log = logging.getLogger(__name__)

#: Bumped whenever the schema or the meaning of a column changes: an index of another format is rebuilt.
FORMAT_VERSION = 2
SUFFIX = ".sqlite"
ROOT_ID = 0
_BATCH = 5_000  # rows per executemany
_PROGRESS_EVERY = 50_000  # entries between progress reports
_SKIPPED_LOGGED = 10  # entries left out that are logged one by one
#: Page cache of a reading connection, in KiB (SQLite's negative cache_size): what one open index costs.
READ_CACHE_KIB = 2048
_BUILD_CACHE_KIB = 8 * 1024
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE info (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE nodes (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name TEXT NOT NULL, size INTEGER,
                    hash_type TEXT, hash_value TEXT, hash TEXT, physical_key TEXT, meta TEXT);
CREATE UNIQUE INDEX nodes_by_parent ON nodes (parent, name);
CREATE TABLE dir_meta (path TEXT PRIMARY KEY, meta TEXT) WITHOUT ROWID;
"""


_PLAIN_HASH_KEYS = ["type", "value"]
#: The JSON text the xattrs show (key order kept, non-ASCII as is); one encoder, not one per call.
_json = json.JSONEncoder(ensure_ascii=False).encode


class IndexUnusable(ManifestError):
    """An index file that cannot be used (truncated, foreign, older format, corrupt): it is rebuilt."""


class _Unordered(Exception):
    """The manifest's entries are not in tree-walk order: hash it in a second pass."""


@dataclass(frozen=True)
class Row:
    """One file or directory of a revision, as the index holds it."""

    name: str
    is_dir: bool
    size: int = 0
    hash: tuple[str, str] = ("", "")  # (type, value)
    raw_hash_json: str | None = None
    physical_key: str = ""
    meta_json: str = "{}"

    @property
    def hash_json(self) -> str:
        """The manifest's hash object as JSON (the xattr)."""
        if self.raw_hash_json is not None:
            return self.raw_hash_json
        return _json({"type": self.hash[0], "value": self.hash[1]})


def index_name(registry_url: str, top_hash: str) -> str:
    """The file name of a revision's index.  Keyed by registry as well as top hash: the top hash does not
    cover physical keys, so the same revision pushed to two registries may name different objects."""
    registry = hashlib.sha256(registry_url.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{top_hash}-{registry}{SUFFIX}"


# --------------------------------------------------------------------------------------------------------
# Building

Progress = Callable[[int, int], None]  # (entries so far, manifest bytes so far)


class _CountingReader(io.RawIOBase):
    """A raw binary stream over `stream` that counts the bytes read through it (the manifest's size)."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__()
        self._stream = stream
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        self.count += len(data)
        return len(data)


def _left_out(logical_key: str) -> str | None:
    """Why a logical key is left out of the tree (hashed all the same), or None: the kernel could not list
    its directory.  (A key of 63 characters or fewer has no component over 255 bytes: most keys skip the check.)"""
    return invalid_path_reason(logical_key) if len(logical_key) > 63 else None


def _meta_column(meta: Any) -> str:
    """A file's `meta` column: the JSON its xattr shows."""
    return _json(meta) if meta else "{}"


def _file_row(row_id: int, parent: int, name: str, entry: Entry) -> tuple:
    """The `nodes` row of the file of `entry`."""
    raw_hash = entry.hash_object()
    return (row_id, parent, name, entry.size, entry.hash_type, entry.hash_value,
            None if list(raw_hash) == _PLAIN_HASH_KEYS else _json(raw_hash), entry.physical_key,
            _meta_column(entry.meta))


def _child(db: sqlite3.Connection, parent: int, name: str) -> tuple[int, int | None] | None:
    """(id, size: None for a directory) of `name` in directory `parent`, or None."""
    return db.execute("SELECT id, size FROM nodes WHERE parent = ? AND name = ?", (parent, name)).fetchone()


class _Builder:
    """Streams one manifest into a new SQLite file; `run()` returns the number of entries indexed."""

    def __init__(self, path: str, stream: IO[bytes], *, top_hash: str, manifest_url: str, ordered: bool,
                 progress: Progress | None) -> None:
        self.path = path
        self.reader = _CountingReader(stream)
        self.published: float | None = getattr(stream, "mtime", None)  # the manifest's LastModified, if known
        self.manifest_etag: str | None = getattr(stream, "etag", None)
        self.top_hash = top_hash
        self.manifest_url = manifest_url
        self.ordered = ordered
        self.progress = progress
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.executescript(f"PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; "
                              f"PRAGMA cache_size=-{_BUILD_CACHE_KIB}; PRAGMA temp_store=FILE;")
        self.db.executescript(_SCHEMA)  # (executescript commits first: the transaction starts after it)
        self.db.execute("BEGIN")
        if not ordered:
            self.db.execute("CREATE TEMP TABLE parts (sort_key BLOB PRIMARY KEY, part TEXT) WITHOUT ROWID")
        self.stamp = int(time.time())  # the file's mtime once built (see `_modified`)
        self.next_id = ROOT_ID + 1
        self.dir_ids: LRUCache[str, int] = LRUCache(65_536)  # path -> id of directories seen lately
        self.last_dir = ("", ROOT_ID)  # the parent of the previous entry: entries come grouped by directory
        self.files: list[tuple] = []
        self.parts: list[tuple[bytes, str]] = []
        self.digest = hashlib.sha256()
        self.previous_key = b""
        self.entries = 0
        self.directories = 0
        self.skipped = 0

    def run(self) -> int:
        try:
            # Manifests already in a registry are read whatever their line sizes (quilt3 checks only on write).
            records = iter_manifest(io.BufferedReader(self.reader, 1 << 20), max_record_size=None)
            header = next(records)
            self.digest.update(header_hash_part(header).encode("ascii"))
            for record in records:
                if isinstance(record, Entry):
                    self._add_entry(record)
                else:
                    self._add_dir_meta(record)
            self._flush()
            if self.skipped > _SKIPPED_LOGGED:
                log.warning("revision %s: %d logical keys skipped in all", self.top_hash, self.skipped)
            self._check_dir_meta()
            computed = self._top_hash()
            if computed != self.top_hash:
                raise ManifestError(f"{self.manifest_url}: content hashes to {computed}, not to its name "
                                    f"{self.top_hash}")
            info = _info(self.top_hash, self.manifest_url, self.stamp, manifest_bytes=self.reader.count,
                         entries=self.entries, directories=self.directories, header=header,
                         published=self.published, manifest_etag=self.manifest_etag)
            self.db.executemany("INSERT INTO info VALUES (?, ?)", info.items())
            self.db.execute("COMMIT")
            self.db.close()
            return self.entries
        except BaseException:
            self.db.close()
            raise

    # -- entries ----------------------------------------------------------------------------------------
    def _add_entry(self, entry: Entry) -> None:
        sort_key = tree_sort_key(entry.logical_key)
        part = entry_hash_part(entry)
        if self.ordered:
            if sort_key <= self.previous_key:
                if sort_key == self.previous_key:
                    raise ManifestError(f"duplicate logical key {short_repr(entry.logical_key)} in manifest")
                raise _Unordered()
            self.previous_key = sort_key
            self.digest.update(part.encode("ascii"))
        else:
            self.parts.append((sort_key, part))
        reason = _left_out(entry.logical_key)
        if reason:  # hashed, but left out of the tree: the kernel could not list its directory
            self.skipped += 1
            if self.skipped <= _SKIPPED_LOGGED:
                log.warning("revision %s: skipping logical key %s: %s", self.top_hash,
                            short_repr(entry.logical_key), reason)
            return
        parent_path, _, name = entry.logical_key.rpartition("/")
        if parent_path != self.last_dir[0]:
            self.last_dir = (parent_path, self._directory(parent_path) if parent_path else ROOT_ID)
        self.files.append(_file_row(self.next_id, self.last_dir[1], name, entry))
        self.next_id += 1
        self.entries += 1
        if len(self.files) >= _BATCH:
            self._flush()
            if self.progress is not None and self.entries % _PROGRESS_EVERY < _BATCH:
                self.progress(self.entries, self.reader.count)

    def _directory(self, path: str) -> int:
        """The id of directory `path`, created (with its parents) if it is new."""
        known = self.dir_ids.get(path)
        if known is not None:
            return known
        parent_path, _, name = path.rpartition("/")
        parent = self._directory(parent_path) if parent_path else ROOT_ID
        row = _child(self.db, parent, name)
        if row is not None and row[1] is not None:
            raise ManifestError(f"logical key {short_repr(path)} is both a file and a directory in manifest")
        if row is None:
            row = (self.next_id, None)
            self.next_id += 1
            self.directories += 1
            self._insert([(row[0], parent, name, None, None, None, None, None, None)])
        self.dir_ids[path] = row[0]
        return row[0]

    def _flush(self) -> None:
        if self.files:
            self._insert(self.files)
            self.files = []
        if self.parts:
            try:
                self.db.executemany("INSERT INTO temp.parts VALUES (?, ?)", self.parts)
            except sqlite3.IntegrityError:
                raise ManifestError("duplicate logical key in manifest") from None
            self.parts = []

    def _insert(self, rows: list[tuple]) -> None:
        try:
            self.db.executemany("INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError:
            raise ManifestError(self._conflict(rows)) from None

    def _conflict(self, rows: list[tuple]) -> str:
        """Why inserting `rows` failed: the first row whose name another row already has."""
        for row_id, parent, name, size, *_ in rows:
            existing = _child(self.db, parent, name)
            if existing is not None and existing[0] != row_id:
                path = self._path_of(parent, name)
                if (existing[1] is None) != (size is None):
                    return f"logical key {short_repr(path)} is both a file and a directory in manifest"
                return f"duplicate logical key {short_repr(path)} in manifest"
        return "duplicate logical key in manifest"

    def _path_of(self, parent: int, name: str) -> str:
        parts = [name]
        while parent != ROOT_ID:
            parent, name = self.db.execute("SELECT parent, name FROM nodes WHERE id = ?", (parent,)).fetchone()
            parts.append(name)
        return "/".join(reversed(parts))

    # -- directory metadata -----------------------------------------------------------------------------
    def _add_dir_meta(self, record: DirMeta) -> None:
        path = record.key[:-1]
        self.db.execute("INSERT OR REPLACE INTO dir_meta VALUES (?, ?)", (path, _json(record.meta)))

    def _check_dir_meta(self) -> None:
        """A directory-metadata key must not name a file, nor have a file as an ancestor."""
        for (path,) in self.db.execute("SELECT path FROM dir_meta").fetchall():
            parent = ROOT_ID
            walked = []
            for name in path.split("/"):
                walked.append(name)
                row = _child(self.db, parent, name)
                if row is None:
                    break
                if row[1] is not None:
                    raise ManifestError(f"logical key {short_repr('/'.join(walked))} is both a file and a "
                                        "directory in manifest")
                parent = row[0]

    def _top_hash(self) -> str:
        if not self.ordered:
            for (part,) in self.db.execute("SELECT part FROM temp.parts ORDER BY sort_key"):
                self.digest.update(part.encode("ascii"))
        return self.digest.hexdigest()


def build_index(path: str, open_manifest: Callable[[], IO[bytes]], *, top_hash: str, manifest_url: str,
                progress: Progress | None = None) -> int:
    """Build the index of the manifest `open_manifest()` streams at `path`, atomically; return its entries.

    The index is written under a temporary name in the same directory and renamed over `path` only once it is
    complete and the manifest's content hashed to `top_hash`, so a concurrent builder of the same index, or a
    crash, never leaves a partial file at `path`.  Raises `ManifestError` (nothing is written at `path`).
    """
    directory = os.path.dirname(path)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}-{threading.get_ident()}.tmp")
    for ordered in (True, False):
        try:
            with open_manifest() as stream:
                builder = _Builder(temporary, stream, top_hash=top_hash, manifest_url=manifest_url,
                                   ordered=ordered, progress=progress)
                entries = builder.run()
            _install(temporary, path, builder.stamp)
        except _Unordered:
            log.info("manifest %s is not in tree order: hashing it in a second pass", manifest_url)
            remove_file(temporary)
            continue
        except BaseException:
            remove_file(temporary)
            raise
        return entries
    raise AssertionError("unreachable")


def _info(top_hash: str, manifest_url: str, stamp: int, *, manifest_bytes: int, entries: int, directories: int,
          header: dict[str, Any], published: float | None, manifest_etag: str | None) -> dict[str, Any]:
    """The `info` rows of a finished index (`published` and `manifest_etag` only when known)."""
    info = {"format": FORMAT_VERSION, "top_hash": top_hash, "manifest": manifest_url, "stamp": stamp,
            "manifest_bytes": manifest_bytes, "entries": entries, "directories": directories,
            "header": _json(header), "complete": 1}
    if published is not None:
        info["published"] = published
    if manifest_etag is not None:
        info["manifest_etag"] = manifest_etag
    return info


def _install(temporary: str, path: str, stamp: int) -> None:
    """Put the finished index `temporary` in place at `path`: its mtime set to `stamp` (what `_modified`
    checks), private, durable, then renamed over `path` in one step."""
    os.utime(temporary, (stamp, stamp))
    os.chmod(temporary, 0o600)
    with open(temporary, "rb") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)


@dataclass
class RevisionChange:
    """What a commit changed of its parent revision, enough to derive the new revision's index from the
    parent's (`derive_index`) instead of building it from the new manifest."""

    parent: str  # the parent's top hash
    removed: list[str]  # logical keys of the parent that the new revision does not carry over
    meta: dict[str, Any]  # logical key -> new `meta` of a parent entry carried over
    added: list[Entry]  # the new revision's entries that are not the parent's (new, changed, renamed)
    dir_meta: dict[str, Any]  # the new manifest's directory metadata (keys end in '/')
    header: dict[str, Any]  # the new manifest's header
    manifest_bytes: int
    entries: int  # the new manifest's entries: what the derived index must count
    published: float  # when the new manifest was written (what its LastModified says, near enough)
    manifest_etag: str  # the new manifest's ETag


def derive_index(path: str, parent_path: str, change: RevisionChange, *, top_hash: str,
                 manifest_url: str) -> int:
    """Make the index of revision `top_hash` at `path` from its parent's index file (`parent_path`, checked
    by the caller) and `change`: a copy of the parent's, patched.  It holds the rows a build from the new
    manifest would hold (node ids aside), without reading that manifest: after a commit of one file in a
    revision of a million entries, the new revision opens in a fraction of a second instead of being
    downloaded and indexed whole.  Atomic as `build_index`; returns the entries.  Raises `ManifestError` when
    the result would not count exactly the new manifest's entries (a parent with keys the index leaves out):
    nothing is written at `path`, and the caller builds it from the manifest."""
    directory = os.path.dirname(path)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}-{threading.get_ident()}.tmp")
    stamp = int(time.time())
    try:
        shutil.copyfile(parent_path, temporary)
        db = sqlite3.connect(temporary, isolation_level=None)
        try:
            db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;")
            db.execute("BEGIN")
            patch = _Patch(db)
            for key in change.removed:
                patch.remove(key)
            for key, meta in change.meta.items():
                patch.set_meta(key, meta)
            for entry in change.added:
                patch.add(entry)
            files, directories = patch.counts()
            if files != change.entries:
                raise ManifestError(f"revision {top_hash}: made from its parent's index it counts {files} entries, "
                                    f"its manifest {change.entries}")
            db.execute("DELETE FROM dir_meta")
            db.executemany("INSERT INTO dir_meta VALUES (?, ?)",
                           [(key[:-1], _json(meta)) for key, meta in change.dir_meta.items()])
            info = _info(top_hash, manifest_url, stamp, manifest_bytes=change.manifest_bytes, entries=files,
                         directories=directories, header=change.header, published=change.published,
                         manifest_etag=change.manifest_etag)
            db.execute("DELETE FROM info")  # the parent's, copied with the rest
            db.executemany("INSERT INTO info VALUES (?, ?)", info.items())
            db.execute("COMMIT")
        finally:
            db.close()
        _install(temporary, path, stamp)
        return files
    except BaseException:
        remove_file(temporary)
        raise


class _Patch:
    """Changes to an index's nodes, by logical key, as `_Builder` would have made them."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.next_id = db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM nodes").fetchone()[0]

    def _file(self, key: str) -> tuple[int, int] | None:
        """(id, parent id) of the file at `key`, or None (no such key, or a key the index left out)."""
        parent = ROOT_ID
        *directories, name = key.split("/")
        for part in directories:
            found = _child(self.db, parent, part)
            if found is None or found[1] is not None:
                return None
            parent = found[0]
        found = _child(self.db, parent, name)
        return None if found is None or found[1] is None else (found[0], parent)

    def remove(self, key: str) -> None:
        """The file at `key` goes, and the directories it leaves empty (a revision has no empty directory)."""
        found = self._file(key)
        if found is None:
            return
        node, parent = found
        self.db.execute("DELETE FROM nodes WHERE id = ?", (node,))
        while parent != ROOT_ID and self.db.execute("SELECT 1 FROM nodes WHERE parent = ? LIMIT 1",
                                                     (parent,)).fetchone() is None:
            (above,) = self.db.execute("SELECT parent FROM nodes WHERE id = ?", (parent,)).fetchone()
            self.db.execute("DELETE FROM nodes WHERE id = ?", (parent,))
            parent = above

    def set_meta(self, key: str, meta: Any) -> None:
        found = self._file(key)
        if found is None:
            raise ManifestError(f"logical key {short_repr(key)}: not in the parent's index")
        self.db.execute("UPDATE nodes SET meta = ? WHERE id = ?", (_meta_column(meta), found[0]))

    def add(self, entry: Entry) -> None:
        """The file of `entry`, replacing one at its key, in directories made as needed."""
        key = entry.logical_key
        if _left_out(key):  # as `_Builder` leaves it out (the count then differs)
            return
        *directories, name = key.split("/")
        parent = ROOT_ID
        for part in directories:
            found = _child(self.db, parent, part)
            if found is not None and found[1] is not None:
                raise ManifestError(f"logical key {short_repr(key)}: a file is in its path")
            if found is None:
                found = (self.next_id, None)
                self.db.execute("INSERT INTO nodes VALUES (?, ?, ?, NULL, NULL, NULL, NULL, NULL, NULL)",
                                (self.next_id, parent, part))
                self.next_id += 1
            parent = found[0]
        # The physical key as a manifest's line is read (normalized).
        entry = dataclasses.replace(entry, physical_key=normalize_physical_key(entry.physical_key))
        found = _child(self.db, parent, name)
        if found is not None and found[1] is None:
            raise ManifestError(f"logical key {short_repr(key)} is both a file and a directory")
        if found is None:
            self.db.execute("INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            _file_row(self.next_id, parent, name, entry))
            self.next_id += 1
        else:
            self.db.execute("UPDATE nodes SET size = ?, hash_type = ?, hash_value = ?, hash = ?, physical_key = ?, "
                            "meta = ? WHERE id = ?", (*_file_row(found[0], parent, name, entry)[3:], found[0]))

    def counts(self) -> tuple[int, int]:
        """(files, directories) the index holds now."""
        return self.db.execute("SELECT COUNT(size), COUNT(*) - COUNT(size) FROM nodes").fetchone()


def _return_freed_memory() -> None:
    """A build allocates and frees millions of small objects and its SQLite page cache; glibc keeps freed
    heap pages for reuse unless asked to give them back (measured: +35-45 MiB of RSS left per build)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# --------------------------------------------------------------------------------------------------------
# Reading

class RevisionIndex:
    """A finished index, opened read-only.  Thread-safe: one connection, queries under a lock (each takes
    microseconds; the lock keeps one page cache per index instead of one per FUSE thread)."""

    def __init__(self, path: str, *, top_hash: str, manifest_url: str) -> None:
        self.path = path
        _check_file(path)
        uri = "file:" + _uri_path(path) + "?mode=ro&immutable=1"
        try:
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            self._db.execute(f"PRAGMA cache_size=-{READ_CACHE_KIB}")
            info = dict(self._db.execute("SELECT key, value FROM info").fetchall())
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise IndexUnusable(f"index {path} is unreadable: {exc}") from None
        problem = _info_problem(info, top_hash, manifest_url) or _modified(path, info)
        if problem:
            self._close_quietly()
            raise IndexUnusable(f"index {path}: {problem}")
        self.top_hash = top_hash
        self.entries = int(info["entries"])
        self.directories = int(info["directories"])
        self.manifest_bytes = int(info["manifest_bytes"])
        self.header: dict[str, Any] = json.loads(info["header"])
        published = info.get("published")  # (not in indexes made before it was recorded)
        self.published: float | None = float(published) if isinstance(published, (int, float)) else None
        self.manifest_etag: str | None = info.get("manifest_etag")  # (the same)
        self._lock = threading.Lock()

    def _close_quietly(self) -> None:
        try:
            self._db.close()
        except (AttributeError, sqlite3.Error):
            pass

    @property
    def disk_bytes(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def _query(self, sql: str, params: tuple) -> list[tuple]:
        try:
            with self._lock:
                return self._db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:  # pages damaged after the checks at open
            raise IndexUnusable(f"index {self.path} is corrupt: {exc}") from None

    def child(self, parent: int, name: str) -> tuple[int, Row] | None:
        """(id, row) of `name` in directory `parent`, or None."""
        rows = self._query("SELECT id, size, hash_type, hash_value, hash, physical_key, meta FROM nodes "
                           "WHERE parent = ? AND name = ?", (parent, name))
        if not rows:
            return None
        row_id, size, hash_type, hash_value, raw_hash_json, physical_key, meta_json = rows[0]
        if size is None:
            return row_id, Row(name, True)
        return row_id, Row(name, False, size, (hash_type, hash_value), raw_hash_json, physical_key, meta_json)

    def children(self, parent: int) -> Iterator[tuple[str, int | None]]:
        """(name, size or None for a directory) of every entry of directory `parent`, by name.

        Fetched in pages keyed by the last name, so a directory of any size is listed in bounded memory.
        """
        sql = "SELECT name, size FROM nodes WHERE parent = ? ORDER BY name LIMIT ?"
        params: tuple = (parent, _BATCH)
        while True:
            rows = self._query(sql, params)
            yield from rows
            if len(rows) < _BATCH:
                return
            sql = "SELECT name, size FROM nodes WHERE parent = ? AND name > ? ORDER BY name LIMIT ?"
            params = (parent, rows[-1][0], _BATCH)

    def dir_meta(self, path: str) -> str | None:
        rows = self._query("SELECT meta FROM dir_meta WHERE path = ?", (path,))
        return rows[0][0] if rows else None

    def discard(self) -> None:
        """Delete the index file (it was found corrupt): the next open builds it again."""
        remove_file(self.path)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(os.path.abspath(path))


def _check_file(path: str) -> None:
    """Cheap checks before SQLite reads the file: its magic, and a size that matches the page count its header
    records (a file cut short would otherwise answer queries from the pages it still has)."""
    try:
        with open(path, "rb") as file:
            header = file.read(100)
            size = os.fstat(file.fileno()).st_size
    except OSError as exc:
        raise IndexUnusable(f"index {path} cannot be read: {exc}") from None
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise IndexUnusable(f"index {path} is not an SQLite file")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if pages * page_size != size:
        raise IndexUnusable(f"index {path} is {size} bytes, but its header says {pages} pages of {page_size}")


def _info_problem(info: dict[str, Any], top_hash: str, manifest_url: str) -> str | None:
    if info.get("format") != FORMAT_VERSION:
        return f"format {info.get('format')!r}, not {FORMAT_VERSION}"
    if info.get("complete") != 1:
        return "incomplete"
    if info.get("top_hash") != top_hash or info.get("manifest") != manifest_url:
        return f"built from {info.get('manifest')!r} ({info.get('top_hash')!r}), not {manifest_url!r}"
    for key in ("entries", "directories", "manifest_bytes", "header"):
        if key not in info:
            return f"no {key!r} recorded"
    return None


def _modified(path: str, info: dict[str, Any]) -> str | None:
    """An index is never written once built, and its builder set its mtime to the `stamp` it records: any
    later write (a disk tool, a user, a half-copied file) shows as another mtime, without reading the file."""
    try:
        mtime_ns = os.stat(path).st_mtime_ns
    except OSError as exc:
        return f"cannot stat: {exc}"
    if not isinstance(info.get("stamp"), int) or mtime_ns != info["stamp"] * 1_000_000_000:
        return "modified after it was built"
    return None


def open_or_build(path: str, open_manifest: Callable[[], IO[bytes]], *, top_hash: str, manifest_url: str,
                  progress: Progress | None = None,
                  manifest_etag: Callable[[], str | None] | None = None) -> RevisionIndex:
    """The index at `path`, built first if it is missing or cannot be trusted: also when `manifest_etag()`
    (the manifest's ETag now) is not the one it was built from (an index that recorded none is trusted)."""
    if os.path.exists(path):
        try:
            index = RevisionIndex(path, top_hash=top_hash, manifest_url=manifest_url)
        except IndexUnusable as exc:
            log.warning("%s: rebuilding it", exc)
        else:
            if index.manifest_etag is None or manifest_etag is None or manifest_etag() == index.manifest_etag:
                return index
            index.close()
            log.warning("index %s: the manifest %s was rewritten since (another ETag; physical keys and directory "
                        "metadata can change without changing the top hash): rebuilding it", path, manifest_url)
    started = time.monotonic()
    try:
        entries = build_index(path, open_manifest, top_hash=top_hash, manifest_url=manifest_url,
                              progress=progress)
    finally:
        _return_freed_memory()
    elapsed = time.monotonic() - started
    log.info("indexed revision %s: %d entries in %.1f s (%.0f entries/s)", top_hash, entries, elapsed,
             entries / elapsed if elapsed > 0 else 0.0)
    return RevisionIndex(path, top_hash=top_hash, manifest_url=manifest_url)
