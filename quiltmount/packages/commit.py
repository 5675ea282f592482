"""Publishing a new revision of a package from a parent revision and a set of changes, as `quilt3 push` of
the browsed parent with those changes would (spec 5.2): new and changed files uploaded to `NS/NAME/<logical
key>` in the registry's bucket, the parent's other rows kept as they are, quilt3's header, entry order and top
hash, then the manifest, a timestamp pointer and `latest`, in that order.

This is the engine under package drafts: it knows registries and local files, not mounts.  Unchanged entries
are never read or re-hashed; only the files of `Changes.files` are (uploaded with S3 SHA-256 checksums by the
store, whose part checksums are quilt3's chunk hashes: one read of each file gives both).

A parent can have millions of entries, so it is never held in memory.  A commit takes two passes:

1. the parent's manifest streams by once (`_Scan`): its top hash is checked, the changes are checked against
   its keys, and the rows that stay are written, already serialized as quilt3 writes them and with their
   top-hash parts, to a spill file in tree order.  Nothing is written to the registry before this pass
   succeeded, and nothing that grows with the parent stays in memory: the changes, the rows they refer to
   (rename sources, replaced entries whose meta stays) and the directory metadata.
2. the new files are uploaded (or found already in place: `_reuse_candidate`), their hashes taken from the
   SHA-256 checksums of the bytes sent (S3; other stores: hashed after); a file whose parts were sent while it
   was written (a draft's: `NewFile.streamed`) has that multipart upload completed instead.  Then the spill is
   merged with the new entries, sorted the same way, into the new manifest, in a local file, while its top
   hash is computed.

Manifests quilt3 wrote are in tree order with their directory metadata first; any other layout is read whole
instead (`Registry.load_manifest`), which is correct but holds it in memory.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import logging
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from quiltmount.errors import NotFound, QuiltException, StorageError
from quiltmount.keep import KEEP
from quiltmount.packages.manifest import (
    CHECKSUM_CHUNK_SIZE, SHA2_256_CHUNKED, DirMeta, Entry, ManifestError, PhysicalKey, checksum_chunk_size,
    dir_meta_records, encode_record, entry_hash_part, entry_record, format_physical_key, header_hash_part,
    header_record, iter_manifest, logical_key_problem, make_hasher, package_meta, parse_physical_key,
    short_repr, tree_order, tree_sort_key,
)
from quiltmount.packages.index import RevisionChange
from quiltmount.packages.registry import LATEST, Registry, RegistryError, validate_package_name
from quiltmount.packages.workflow import Workflow, revision_entries, select_workflow
from quiltmount.storage.base import ObjectInfo, ObjectStore, PartUpload

log = logging.getLogger(__name__)

#: Files hashed and uploaded at once (each large one also sends its parts in parallel).
UPLOAD_WORKERS = 8
#: Bytes read at a time while a new file is hashed, and buffered while a manifest is read or written.
HASH_BUFFER = 1 << 20
#: New files this large or larger are not sent again when their destination already holds their bytes
#: (quilt3's `UPLOAD_ETAG_OPTIMIZATION_THRESHOLD`): below it, the HEAD would cost as much as the upload.
REUSE_MIN_SIZE = 1024
#: A row of the spill file: the lengths of its sort key, top-hash part and manifest line, then those bytes.
_SPILL_ROW = struct.Struct("<III")


class PackageConflict(QuiltException):
    """`latest` moved since the parent was read (quilt3's `QuiltConflictException`, same message)."""


@dataclass
class NewFile:
    """The bytes of a new or changed entry, in a local file; `meta` is the entry's whole `meta` object
    (KEEP: the parent entry's, or none for a new logical key).

    `streamed`, if the bytes were sent while they were written (a draft's file written in order): called with
    the entry's destination key and the chunk size of its hash when the commit uploads it, it hands over the
    multipart upload holding them there, never completed yet, for the commit to complete; or None when there
    is none that fits (then the file is sent whole).  Once called, the upload is the caller's alone.
    `upload_started`, if given, is told (destination key, upload id) of a multipart upload the commit starts
    for the file, once S3 created it (a draft journals it, so that a killed commit's upload gets aborted)."""

    path: str
    meta: Any = KEEP
    streamed: Callable[[str, int], PartUpload | None] | None = None
    upload_started: Callable[[str, str], None] | None = None


@dataclass
class Changes:
    """What a revision changes in its parent: files added or replaced, logical keys deleted, entries renamed,
    the `meta` of entries that are not new files, the header's `user_meta` (KEEP: the parent's), and the
    directories deleted as such (quilt3's `pkg.delete(dir)`), whose directory metadata goes with them and with
    the directories below them.  A directory whose files are all deleted keeps its metadata, as in quilt3.

    `renamed` maps a new logical key to a parent key: the new key gets that parent entry (same physical key,
    size, hash and meta, or `entry_meta[new key]`), as `mv` of an unchanged file in a draft does.  It takes
    nothing away: a move also lists the old key in `deleted` (quilt3's `pkg.set(new, pkg[old]);
    pkg.delete(old)`); left out, the old key keeps its entry (a copy, or a swap where another rename writes
    it).  A written key (a file or a rename's new key) cannot also be deleted.
    """

    files: dict[str, NewFile] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    renamed: dict[str, str] = field(default_factory=dict)
    entry_meta: dict[str, Any] = field(default_factory=dict)
    user_meta: Any = KEEP
    deleted_dirs: set[str] = field(default_factory=set)  # paths without the trailing "/"


@dataclass
class CommitProgress:
    """How far a commit is, for a progress bar: `phase` is "parent" while the parent's entries are read,
    "upload" while new files are hashed and sent (counted as each one finishes), then "publish"."""

    phase: str = "parent"
    parent_entries: int = 0
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0


ProgressCallback = Callable[[CommitProgress], None]


@dataclass
class Committed:
    top_hash: str
    pointer: str | None  # the new timestamp pointer; None when `dedupe` found the revision already latest
    entries: int  # file entries of the new revision
    reused: int  # new files found already in place, not sent again
    user_meta: Any = None  # the new revision's `user_meta`, as quilt3's Package.meta gives it
    #: What changed of the parent (None for a new package): the new revision's index can be made from the
    #: parent's (`index.derive_index`).
    change: RevisionChange | None = None


def commit_revision(registry: Registry, name: str, parent: str | None, changes: Changes, *,
                    message: str | None, workflow: Any = ..., force: bool = False, dedupe: bool = False,
                    clock: Callable[[], float] = time.time, temp_dir: str | None = None,
                    progress: ProgressCallback | None = None) -> Committed:
    """Publish `parent` (a full top hash, or None for a new package) with `changes` as a new revision of
    `name`; `latest` moves only if it still names `parent` (unless `force`).  `workflow` as quilt3's: `...`
    (the registry's default workflow), None (no workflow) or a workflow id.  A registry with workflows
    (`.quilt/workflows/config.yml`) validates the revision as quilt3 8.0.0 does (`workflow.py`): the message
    and name before anything else, the header's metadata and the entries once the parent has been read;
    every check comes before the first upload, and the header records the workflow as quilt3 does.

    The new manifest is assembled in `temp_dir` (default: the system's), which needs room for about twice
    the manifest.  A commit that failed half-way can be run again: new files that already landed are not
    sent again.  `progress` is called with a fresh `CommitProgress` as the work advances.
    """
    validate_package_name(name)
    if message is not None and not isinstance(message, str):
        raise RegistryError(f"the commit message must be a string, not {type(message).__name__}")
    _check_changes(changes)
    chosen = select_workflow(registry, workflow, name, message)  # message and name: before the parent is read
    latest = _latest(registry, name) if not force or dedupe else None
    if not force:
        _check_conflict(latest, parent)
    with tempfile.TemporaryDirectory(prefix="quiltmount-commit-", dir=temp_dir) as work:
        spill_path, manifest_path = os.path.join(work, "rows"), os.path.join(work, "manifest")
        report = _Reporter(progress)
        scan = _scan_parent(registry, parent, changes, spill_path, report)
        header = _new_header(scan.header, changes, message, chosen, scan, spill_path)  # validates: before uploads
        uploaded, reused = _upload(registry, name, changes, scan.rows, report)
        report.phase("publish")
        new_entries = [*uploaded, *_renamed_entries(changes, scan.rows)]
        top_hash, entries = _write_manifest_file(manifest_path, header, scan.kept_dir_meta(), spill_path,
                                                 new_entries)
        if dedupe and top_hash == latest:
            return Committed(top_hash, None, entries, reused, package_meta(header))
        if not force:  # again just before writing, as quilt3 does: the window for a lost update is the writes'
            _check_conflict(_latest(registry, name), parent)
        written = registry.store.put_file(registry.manifest_key(top_hash), manifest_path)
        change = None if parent is None else RevisionChange(
            parent, scan.removed, scan.meta_changed, new_entries, scan.kept_dir_meta(), header,
            os.path.getsize(manifest_path), entries, written.mtime, written.etag)
    pointer = str(int(clock()))
    registry.set_pointer(name, pointer, top_hash)
    registry.set_pointer(name, LATEST, top_hash)
    return Committed(top_hash, pointer, entries, reused, package_meta(header), change)


def _check_changes(changes: Changes) -> None:
    """What can be checked without the parent (its keys are checked while it streams by: `_Scan`)."""
    for logical_key in (*changes.files, *changes.renamed):
        problem = logical_key_problem(logical_key)
        if problem:
            raise RegistryError(f"invalid logical key {logical_key!r}: {problem}")
    both = changes.files.keys() & changes.renamed.keys()
    if both:
        raise RegistryError(f"{min(both)!r} cannot be both a new file and a renamed entry")
    both = changes.deleted & (changes.files.keys() | changes.renamed.keys())
    if both:
        raise RegistryError(f"{min(both)!r} cannot be both deleted and written")
    metas = [*changes.entry_meta.items(),
             *((key, new.meta) for key, new in changes.files.items() if new.meta is not KEEP)]
    for logical_key, meta in metas:
        if not isinstance(meta, dict):  # quilt3's entries hold a dict (their user meta under "user_meta")
            raise RegistryError(f"the meta of {logical_key!r} must be an object, not {type(meta).__name__}")


def _latest(registry: Registry, name: str) -> str | None:
    try:
        return registry.read_pointer(name, LATEST)
    except NotFound:
        return None


def _check_conflict(latest: str | None, parent: str | None) -> None:
    if latest is not None and latest != parent:
        raise PackageConflict(f"Package with hash {latest!r} already exists at the destination; "
                              f"expected {parent!r}. Use force=True (Python) or --force (CLI) to overwrite.")


class _Reporter:
    """Keeps a commit's `CommitProgress` and hands copies to the caller's callback (upload threads share it)."""

    #: Parent entries read between two reports.
    ENTRIES_PER_REPORT = 1 << 16

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.state = CommitProgress()
        self.lock = threading.Lock()

    def _send(self) -> None:
        if self.callback is not None:
            self.callback(dataclasses.replace(self.state))

    def parent_entry(self) -> None:
        self.state.parent_entries += 1
        if self.state.parent_entries % self.ENTRIES_PER_REPORT == 0:
            self._send()

    def restart_parent(self) -> None:
        self.state.parent_entries = 0

    def start_upload(self, sizes: dict[str, int]) -> None:
        self.state.phase = "upload"
        self.state.files_total, self.state.bytes_total = len(sizes), sum(sizes.values())
        self._send()

    def file_done(self, size: int) -> None:
        with self.lock:
            self.state.files_done += 1
            self.state.bytes_done += size
            self._send()

    def phase(self, phase: str) -> None:
        self.state.phase = phase
        self._send()


# --------------------------------------------------------------------------------------------------------
# Pass 1: the parent

class _Unordered(Exception):
    """The parent's manifest is not in quilt3's layout (entries in tree order, directory metadata first)."""


_Record = dict[str, Any] | Entry | DirMeta


class _Scan:
    """One pass over the parent's records, entries in tree order: checks them and the changes, and spills
    the rows that stay (see the module's docstring).

    The keys of the new revision are walked in order as well (the parent's rows that stay, merged with the
    keys the changes write), so a key that would be both a file and a directory is known before anything is
    uploaded.
    """

    def __init__(self, changes: Changes, spill: IO[bytes], report: _Reporter) -> None:
        self.changes = changes
        self.spill = spill
        self.report = report
        self.written = changes.files.keys() | changes.renamed.keys()
        self.pending = sorted((tree_sort_key(key), key) for key in self.written)  # written keys, in tree order
        self.next_pending = 0
        # Parent rows the changes need: rename sources, and replaced entries whose meta stays.
        self.wanted = {*changes.renamed.values(),
                       *(key for key, new in changes.files.items() if new.meta is KEEP)}
        self.must_exist = {*changes.deleted, *changes.renamed.values(),
                           *(changes.entry_meta.keys() - changes.renamed.keys())}
        self.found: set[str] = set()
        self.rows: dict[str, Entry] = {}
        self.removed: list[str] = []  # the parent's keys not carried over (`RevisionChange`)
        self.meta_changed: dict[str, Any] = {}  # the parent's keys carried over with a new meta
        self.header: dict[str, Any] = {}
        self.digest = hashlib.sha256()
        self.dir_meta: dict[str, Any] = {}
        self.dir_meta_paths: set[str] | None = None  # every directory a metadata line names, once entries start
        self.previous_row: tuple[bytes, str] | None = None  # the parent's previous entry
        self.previous_key: tuple[bytes, str] | None = None  # the new revision's previous key

    def run(self, records: Iterator[_Record]) -> str:
        """Read every record (the header first); return the parent's computed top hash."""
        self.header = next(records)
        self.digest.update(header_hash_part(self.header).encode("ascii"))
        for record in records:
            if isinstance(record, DirMeta):
                if self.dir_meta_paths is not None:
                    raise _Unordered()
                self.dir_meta[record.key] = record.meta
            else:
                self._parent_entry(record)
                self.report.parent_entry()
        self._walk_written(None)
        return self.digest.hexdigest()

    def check_found(self) -> None:
        missing = self.must_exist - self.found
        if missing:
            raise RegistryError(f"{min(missing)!r} is not in the parent revision")

    def kept_dir_meta(self) -> dict[str, Any]:
        """The parent's directory metadata, but for directories deleted as such and those below them."""
        deleted = self.changes.deleted_dirs
        return {key: meta for key, meta in self.dir_meta.items()
                if not deleted or not ({key[:-1], *_directories(key[:-1])} & deleted)}

    def _parent_entry(self, entry: Entry) -> None:
        key = entry.logical_key
        sort_key = tree_sort_key(key)
        self._check_parent_order(sort_key, key)
        part = entry_hash_part(entry)
        self.digest.update(part.encode("ascii"))
        if key in self.must_exist:
            self.found.add(key)
        if key in self.wanted:
            self.rows[key] = entry
        if key in self.changes.deleted or key in self.written:
            self.removed.append(key)
            return
        self._walk_written(sort_key)
        meta = self.changes.entry_meta.get(key, KEEP)
        if meta is not KEEP:
            entry = dataclasses.replace(entry, meta=meta)
            part = entry_hash_part(entry)
            self.meta_changed[key] = meta
        self._new_key(sort_key, key)
        self._spill(sort_key, part.encode("ascii"), encode_record(entry_record(entry)))

    def _spill(self, sort_key: bytes, part: bytes, line: bytes) -> None:
        self.spill.write(_SPILL_ROW.pack(len(sort_key), len(part), len(line)))
        self.spill.write(sort_key + part + line)

    def _check_parent_order(self, sort_key: bytes, key: str) -> None:
        """Entries strictly in tree order, no key both a file and a directory (as `parse_manifest` checks)."""
        if self.dir_meta_paths is None:  # the first entry: directory metadata is all read
            self.dir_meta_paths = {path for dir_key in self.dir_meta
                                   for path in (dir_key[:-1], *_directories(dir_key[:-1]))}
        if key in self.dir_meta_paths:
            raise ManifestError(f"logical key {short_repr(key)} is both a file and a directory in manifest")
        previous = self.previous_row
        if previous is not None:
            if sort_key <= previous[0]:
                if sort_key == previous[0]:
                    raise ManifestError(f"duplicate logical key {short_repr(key)} in manifest")
                raise _Unordered()
            if sort_key.startswith(previous[0] + b"\0"):
                raise ManifestError(f"logical key {short_repr(previous[1])} is both a file and a directory in "
                                    "manifest")
        self.previous_row = (sort_key, key)

    def _walk_written(self, before: bytes | None) -> None:
        """Walk the keys the changes write that come before the sort key `before` (all that are left for
        None): their entries are merged in later (`_merged`), but their places are known now."""
        pending = self.pending
        while self.next_pending < len(pending) and (before is None or pending[self.next_pending][0] < before):
            self._new_key(*pending[self.next_pending])
            self.next_pending += 1

    def _new_key(self, sort_key: bytes, key: str) -> None:
        """The new revision's next key, in tree order: a file must not hold a key under it."""
        previous = self.previous_key
        if previous is not None and sort_key.startswith(previous[0] + b"\0"):
            raise RegistryError(f"{key!r} cannot be in the revision: {previous[1]!r} would be both a file and "
                                "a directory")
        self.previous_key = (sort_key, key)


def _directories(key: str) -> Iterator[str]:
    """The directories holding `key`: `a/b/c` -> `a/b`, `a`."""
    directory = key.rpartition("/")[0]
    while directory:
        yield directory
        directory = directory.rpartition("/")[0]


def _scan_parent(registry: Registry, parent: str | None, changes: Changes, spill_path: str,
                 report: _Reporter) -> _Scan:
    """Pass 1 over `parent` (streamed; read whole if it is not in quilt3's layout), its rows that stay spilled
    to `spill_path`.  Raises `ManifestError` if the parent is malformed or does not hash to its name."""
    if parent is None:
        return _run_scan(changes, spill_path, report, iter([{"version": "v0"}]))
    url = registry.manifest_url(parent)
    try:
        with registry.open_manifest(parent) as stream:
            records = iter_manifest(io.BufferedReader(stream, HASH_BUFFER), max_record_size=None)
            return _run_scan(changes, spill_path, report, records, parent)
    except _Unordered:
        log.info("manifest %s is not in tree order (or has directory metadata after its entries): reading it "
                 "whole", url)
    except ManifestError as exc:
        raise ManifestError(f"{url}: {exc}") from None
    manifest = registry.load_manifest(parent)  # checked, top hash included
    records = iter([manifest.header, *(DirMeta(key, meta) for key, meta in manifest.dir_meta.items()),
                    *tree_order(manifest.entries)])
    report.restart_parent()
    return _run_scan(changes, spill_path, report, records, parent)


def _run_scan(changes: Changes, spill_path: str, report: _Reporter, records: Iterator[_Record],
              parent: str | None = None) -> _Scan:
    with open(spill_path, "wb", buffering=HASH_BUFFER) as spill:
        scan = _Scan(changes, spill, report)
        computed = scan.run(records)
    if parent is not None and computed != parent:
        raise ManifestError(f"content hashes to {computed}, not to its name {parent}")
    scan.check_found()
    return scan


# --------------------------------------------------------------------------------------------------------
# Uploads

def _upload(registry: Registry, name: str, changes: Changes, parent_rows: dict[str, Entry], report: _Reporter,
            ) -> tuple[list[Entry], int]:
    """Hash every new file and upload it to `NS/NAME/<logical key>`, unless it is there already; their
    entries, and how many were there already."""
    location = parse_physical_key(registry.url)  # s3://bucket or file:///dir

    sizes = {logical_key: os.path.getsize(new.path) for logical_key, new in changes.files.items()}

    def one(logical_key: str, new: NewFile) -> tuple[Entry, bool]:
        size = sizes[logical_key]
        key = upload_key(registry, name, logical_key)
        candidate = _reuse_candidate(registry.store, key, size)
        # Taken from here on: completed, or aborted (by whatever fails while it is ours, or here if not needed).
        streamed = None if new.streamed is None else new.streamed(key, checksum_chunk_size(size))
        hash_value = None if candidate is None else _hash_of(new.path, size, streamed)
        was_there = candidate is not None and _chunked_hash_of_checksum(candidate.checksum_sha256,
                                                                         size) == hash_value
        if was_there:
            info = candidate
            if streamed is not None:
                streamed.abort()
        elif streamed is not None:  # completed: the object appears only now, parts in flight waited for
            info = streamed.finish(size)
        else:
            started = new.upload_started
            info = registry.store.put_file(
                key, new.path, on_start=None if started is None else lambda upload_id: started(key, upload_id))
        if hash_value is None:  # the upload's checksum is of the bytes it sent: the hash without another read
            hash_value = _chunked_hash_of_checksum(info.checksum_sha256 or "", size) or _hash_file(new.path, size)
        if location.scheme == "s3":
            physical = PhysicalKey("s3", location.bucket, key, info.version_id)
        else:
            physical = PhysicalKey("file", None, os.path.join(location.path, key))
        meta = _new_file_meta(logical_key, new, parent_rows)
        entry = Entry(logical_key, format_physical_key(physical), size, SHA2_256_CHUNKED, hash_value, meta)
        report.file_done(size)
        return entry, was_there

    report.start_upload(sizes)
    with ThreadPoolExecutor(UPLOAD_WORKERS, thread_name_prefix="commit") as pool:
        futures = [pool.submit(one, key, new) for key, new in changes.files.items()]
        results = [future.result() for future in futures]
    reused = sum(1 for _, was_there in results if was_there)
    if reused:
        log.info("%d of %d new files were already in place: not sent again", reused, len(results))
    return [entry for entry, _ in results], reused


def upload_key(registry: Registry, name: str, logical_key: str) -> str:
    """The key in the registry's store a new file of package `name` is uploaded to, as quilt3's push does."""
    return f"{registry.prefix}{name}/{logical_key}"


def _hash_of(path: str, size: int, streamed: PartUpload | None) -> str:
    """The hash of a new file: from the checksums of the parts it was streamed in, else read and hashed."""
    if streamed is not None:
        hash_value = _chunked_hash_of_checksum(streamed.checksum(size), size)
        if hash_value is not None:
            return hash_value
    return _hash_file(path, size)


def _new_file_meta(logical_key: str, new: NewFile, parent_rows: dict[str, Entry]) -> Any:
    """The `meta` of a new or changed entry: its own, else the replaced parent entry's, else none."""
    if new.meta is not KEEP:
        return new.meta
    return parent_rows[logical_key].meta if logical_key in parent_rows else {}


def _hash_file(path: str, size: int) -> str:
    hasher = make_hasher(SHA2_256_CHUNKED, size)
    with open(path, "rb") as file:
        while chunk := file.read(HASH_BUFFER):
            hasher.update(chunk)
    return hasher.value()


def _reuse_candidate(store: ObjectStore, key: str, size: int) -> ObjectInfo | None:
    """The object at `key` if it may already hold the new file's bytes, as quilt3's `_reuse_remote_file`
    decides: same size and a SHA-256 checksum (compared with the file's hash by the caller), for files of
    `REUSE_MIN_SIZE` or more.  Objects without a checksum are sent again (quilt3 would compare MD5 ETags; every
    upload of ours and of quilt3's carries a checksum), and so are files of local registries, which keep none."""
    if size < REUSE_MIN_SIZE:
        return None
    try:
        info = store.head(key, checksum=True)
    except StorageError:  # missing, or not ours to read: send it (quilt3 does too)
        return None
    return info if info.size == size and info.checksum_sha256 is not None else None


def _chunked_hash_of_checksum(checksum: str, size: int) -> str | None:
    """The `sha2-256-chunked` hash of an object of `size` bytes, from S3's SHA-256 checksum of it, read as
    quilt3 reads it (spec 6.7): `<base64>-<parts>` of a multipart upload in quilt3's chunks is that hash; a
    single PUT's checksum (files under one chunk) is the SHA-256 of the bytes, the hash of a single chunk once
    hashed again.  None for an object uploaded any other way (it is then sent again)."""
    value, dash, parts = checksum.partition("-")
    if not value:
        return None
    multipart = size >= CHECKSUM_CHUNK_SIZE
    if dash:
        chunks = -(-size // checksum_chunk_size(size))
        return value if multipart and parts == str(chunks) else None
    if multipart:
        return None
    if size == 0:  # no chunks: the hash of nothing, which is the checksum itself
        return value
    try:
        digest = base64.b64decode(value, validate=True)
    except binascii.Error:
        return None
    return base64.b64encode(hashlib.sha256(digest).digest()).decode("ascii")


def _renamed_entries(changes: Changes, parent_rows: dict[str, Entry]) -> list[Entry]:
    entries = []
    for logical_key, source in changes.renamed.items():
        entry = parent_rows[source]
        entries.append(dataclasses.replace(entry, logical_key=logical_key,
                                           meta=changes.entry_meta.get(logical_key, entry.meta)))
    return entries


# --------------------------------------------------------------------------------------------------------
# Pass 2: the new manifest

def _new_header(parent_header: dict[str, Any], changes: Changes, message: str | None,
                workflow: Workflow | None = None, scan: _Scan | None = None,
                spill_path: str | None = None) -> dict[str, Any]:
    """quilt3's header: the parent's, with `user_meta`, then `workflow` (dropped without one), then `message`
    set, in that order (a key the parent has keeps its place).

    With a `workflow`, the new `user_meta` (`{}` when absent) is validated first, and, only if the workflow
    has an entries schema, the entries of the new revision (`scan` and its rows spilled at `spill_path`, and
    the changes, whose new files are not uploaded yet: their local sizes are what quilt3 validates too).
    """
    header = dict(parent_header)
    if changes.user_meta is not KEEP:
        header["user_meta"] = changes.user_meta
    if workflow is None:
        header.pop("workflow", None)
    else:
        workflow.validate_metadata(header.get("user_meta", {}))
        if workflow.checks_entries:
            assert scan is not None and spill_path is not None
            rows = scan.rows
            new = [(key, os.path.getsize(file.path), _new_file_meta(key, file, rows))
                   for key, file in changes.files.items()]
            new += [(entry.logical_key, entry.size, entry.meta) for entry in _renamed_entries(changes, rows)]
            kept = ((sort_key, line) for sort_key, _, line in _spilled_rows(spill_path))
            workflow.validate_entries(revision_entries(kept, new))
        header["workflow"] = workflow.header_value
    header["message"] = message
    return header


def _write_manifest_file(path: str, header: dict[str, Any], dir_meta: dict[str, Any], spill_path: str,
                         new_entries: list[Entry]) -> tuple[str, int]:
    """Write the new manifest at `path`: the header, directory metadata, then the spilled rows merged with
    `new_entries` in tree order.  Its top hash and entry count."""
    digest = hashlib.sha256(header_hash_part(header).encode("ascii"))
    count = 0
    with open(path, "wb", buffering=HASH_BUFFER) as out:
        out.write(encode_record(header_record(header)))
        for record in dir_meta_records(dir_meta):
            out.write(encode_record(record))
        for part, line in _merged(_spilled_rows(spill_path), new_entries):
            digest.update(part)
            out.write(line)
            count += 1
    return digest.hexdigest(), count


def _spilled_rows(path: str) -> Iterator[tuple[bytes, bytes, bytes]]:
    """(sort key, top-hash part, manifest line) of every row `_Scan` spilled, in order."""
    with open(path, "rb", buffering=HASH_BUFFER) as spill:
        while head := spill.read(_SPILL_ROW.size):
            key_size, part_size, line_size = _SPILL_ROW.unpack(head)
            row = spill.read(key_size + part_size + line_size)
            yield row[:key_size], row[key_size:key_size + part_size], row[key_size + part_size:]


def _merged(rows: Iterable[tuple[bytes, bytes, bytes]], new_entries: list[Entry]) -> Iterator[tuple[bytes, bytes]]:
    """(top-hash part, manifest line) of the parent's rows and the new entries, merged in tree order (no key
    is in both: `_Scan` left out the rows the changes replace)."""
    pending = sorted(((tree_sort_key(entry.logical_key), entry) for entry in new_entries), key=lambda item: item[0])
    index = 0
    for sort_key, part, line in rows:
        while index < len(pending) and pending[index][0] < sort_key:
            yield _new_row(pending[index][1])
            index += 1
        yield part, line
    for _, entry in pending[index:]:
        yield _new_row(entry)


def _new_row(entry: Entry) -> tuple[bytes, bytes]:
    return entry_hash_part(entry).encode("ascii"), encode_record(entry_record(entry))
