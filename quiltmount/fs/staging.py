"""The staging area: files being written, on local disk, with a journal that survives a crash.

Each staged file is `data/<id>` plus `journal/<id>.json` naming its key and state:
- `open`: a writer has it open; after a crash its bytes are never uploaded half-written: the next mount moves
  them out of the staging area (`set_aside`);
- `closed`: complete, waiting for (or in) upload; after a crash the next mount uploads it;
- `failed`: the upload kept failing; the bytes stay until an upload succeeds or the file is deleted;
- `set-aside`: a file found `open` after a crash, whose bytes a mount is moving (or has moved) out of the
  staging area (`set_aside`); the entry stays only while it names uploads to abort.
With `--posix-metadata` the entry also keeps the file's attributes (`meta`, as s3fs headers), which its
upload carries.  An entry also names each multipart upload of its bytes under way (`upload`; `uploads` when
there are two), from the moment S3 created it until it completes or is aborted: a daemon killed before
completing or aborting one leaves it invisible in S3, and the next one to take over the entry aborts it
(`abort_abandoned_uploads`).  A file can have two at once: the upload of its parts sent while it was written,
dropped and still being aborted, and the upload of it whole after close.
Journal entries are written to a temporary file, fsynced and renamed, so a crash leaves the old or the new
entry, never a torn one.  The directory and files are private (0700/0600): they hold user data.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from quiltmount.errors import StorageError, UserError
from quiltmount.files import atomic_file, remove_file
from quiltmount.paths import make_private_dir
from quiltmount.storage.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

OPEN, CLOSED, FAILED, SET_ASIDE = "open", "closed", "failed", "set-aside"
#: Bytes per ranged GET when an object's current bytes are staged for a writer (the most held in memory at
#: once).  A read size, not the multipart part size (`units.PART_SIZE`), though equal to it.
COPY_CHUNK = 8 << 20


@dataclass
class StagedFile:
    id: str
    key: str
    state: str = OPEN
    error: str | None = None
    attempts: int = 0
    #: The file's POSIX attributes as s3fs headers (`posixmeta.to_headers`), for its upload; None without
    #: `--posix-metadata`.  Its mtime and ctime are taken from the staged bytes at upload
    #: (`WritableBucketTree.upload_metadata`).
    meta: dict[str, str] | None = None
    #: [key, upload id] of each multipart upload of these bytes S3 created (while they were written, or once
    #: closed) that may be neither completed nor aborted yet, oldest first.
    uploads: list[list[str]] = field(default_factory=list)


class StagingArea:
    def __init__(self, directory: str, owner: str | None = None, former_owner: str | None = None) -> None:
        """`owner`: the store the staged keys are of (`ObjectStore.cache_name`: its endpoint and bucket).  The
        area records it, and one holding staged files of another store is refused: its journal names keys, not
        buckets, so they would be uploaded to the wrong one (one --cache-dir given to two sources, or to one
        bucket name on two endpoints).  `former_owner`: the same store as areas recorded it before they named
        the endpoint (`ObjectStore.name`): such a record is taken as this store's, as it was then."""
        self.directory = directory
        self._data = os.path.join(directory, "data")
        self._journal = os.path.join(directory, "journal")
        for path in (directory, self._data, self._journal):
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.chmod(path, 0o700)
        self._lock_file = open(os.path.join(directory, "lock"), "w")  # noqa: SIM115 (held for the mount's life)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"the staging area {directory} is in use by another mount of the same source; "
                            "use another --cache-dir") from None
        if owner is not None:
            self._claim(owner, former_owner)
        self._lock = threading.Lock()

    def _claim(self, owner: str, former_owner: str | None) -> None:
        """Record `owner` as the store of the staged files, unless the area holds files of another."""
        path = os.path.join(self.directory, "owner")
        try:
            with open(path, encoding="utf-8") as file:
                recorded = file.read()
        except FileNotFoundError:
            recorded = None
        if recorded == owner:
            return
        if recorded not in (None, former_owner) and os.listdir(self._journal):
            self._lock_file.close()
            raise UserError(f"the staging area {self.directory} holds writes not yet uploaded to {recorded}, not "
                            f"to {owner}: mount that source with this --cache-dir to upload them, or use another "
                            "--cache-dir")
        with atomic_file(path, durable=True) as file:
            file.write(owner.encode("utf-8"))

    def data_path(self, staged: StagedFile) -> str:
        return os.path.join(self._data, staged.id)

    def create(self, key: str, meta: dict[str, str] | None = None) -> StagedFile:
        """A new, empty staged file for `key` (state `open`) with attributes `meta`."""
        staged = StagedFile(uuid.uuid4().hex, key, meta=meta)
        fd = os.open(self.data_path(staged), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        self.save(staged)
        return staged

    def save(self, staged: StagedFile) -> None:
        """Journal `staged` as it is now; nothing once it has been removed (an attribute change racing with
        the end of its upload must not bring back an entry without data)."""
        with self._lock:
            self._write_entry(staged)

    def _write_entry(self, staged: StagedFile) -> None:
        """`save`, the caller holding the lock."""
        if staged.state != SET_ASIDE and not os.path.exists(self.data_path(staged)):
            return
        with atomic_file(self._entry_path(staged), durable=True) as file:
            file.write(json.dumps(_journal_entry(staged)).encode())

    def _entry_path(self, staged: StagedFile) -> str:
        return os.path.join(self._journal, staged.id + ".json")

    def set_state(self, staged: StagedFile, state: str, error: str | None = None) -> None:
        staged.state, staged.error = state, error
        self.save(staged)

    def note_upload(self, staged: StagedFile, key: str, upload_id: str) -> None:
        """S3 created multipart upload `upload_id` of `staged`'s bytes to `key`: journalled before any part."""
        with self._lock:  # (an abort of another upload of the file may be forgetting it meanwhile)
            staged.uploads = [*staged.uploads, [key, upload_id]]
            self._write_entry(staged)

    def forget_upload(self, staged: StagedFile, upload_id: str) -> None:
        """Upload `upload_id` of `staged` is aborted: nothing of it is left to clean up (nor of the file, once
        set aside with no other upload)."""
        with self._lock:
            kept = [upload for upload in staged.uploads if upload[1] != upload_id]
            if len(kept) != len(staged.uploads):
                staged.uploads = kept
                if staged.state == SET_ASIDE and not kept:
                    remove_file(self._entry_path(staged))
                else:
                    self._write_entry(staged)

    def upload_done(self, staged: StagedFile, upload_id: str) -> None:
        """Upload `upload_id` of `staged` completed: nothing of it is left to clean up.  Dropped in memory only,
        for the next save to write (most entries are removed right after; one left naming it makes the next
        daemon's abort find nothing), so that a file uploaded again and again keeps a short entry."""
        with self._lock:
            staged.uploads = [upload for upload in staged.uploads if upload[1] != upload_id]

    def remove(self, staged: StagedFile) -> None:
        with self._lock:  # ordered with `save`
            for path in (self._entry_path(staged), self.data_path(staged)):
                remove_file(path)

    def set_aside(self, staged: StagedFile, directory: str) -> str:
        """Move `staged`'s bytes out of the staging area to `directory`/KEY (`directory`/ID when KEY is not a
        plain relative path or that name is taken; nothing is replaced) and drop its journal entry, which
        stays only while it names uploads to abort (`abort_abandoned_uploads` may be at them): the file is
        never uploaded, and nothing reports it again.  Returns where the bytes are now; OSError leaves them
        staged as they were.

        For a file a killed daemon left open for writing: its bytes may be incomplete, yet they are the user's.
        The entry says `set-aside` before the move, so a crash in between leaves an entry that a next mount
        sets aside again if its bytes are still staged, and otherwise drops once its uploads are aborted."""
        make_private_dir(directory)
        parts = [part for part in staged.key.split("/") if part]
        target = os.path.join(directory, *parts) if parts and not {".", ".."} & set(parts) else None
        if target is not None:
            try:
                os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            except (FileExistsError, NotADirectoryError):  # a file of the same name is set aside there already
                target = None
        if target is None or os.path.lexists(target):
            target = os.path.join(directory, staged.id)
            if os.path.lexists(target):
                raise FileExistsError(errno.EEXIST, "already set aside", target)
        with self._lock:
            was = staged.state
            staged.state = SET_ASIDE
            try:
                self._write_entry(staged)
                os.rename(self.data_path(staged), target)
            except OSError:
                staged.state = was
                self._write_entry(staged)
                raise
            try:
                _sync_directory(os.path.dirname(target))
            except OSError as exc:  # moved all the same: only a crash in the next seconds could undo it
                log.warning("staging: could not sync %r after setting a file aside there (%s)",
                            os.path.dirname(target), exc)
            if not staged.uploads:
                remove_file(self._entry_path(staged))
        return target

    def recover(self) -> list[StagedFile]:
        """Every staged file a previous daemon left (entries whose data is gone are dropped, but those of
        files set aside that still name uploads to abort)."""
        found = []
        for staged in read_journal(self.directory):
            if not os.path.exists(self.data_path(staged)):
                if staged.state == SET_ASIDE and staged.uploads:
                    found.append(staged)
                    continue
                if staged.state != SET_ASIDE:
                    log.error("staging: %r has a journal entry but no data; dropping the entry", staged.key)
                self.remove(staged)
                continue
            found.append(staged)
        return found

    def close(self) -> None:
        self._lock_file.close()


def read_journal(directory: str) -> list[StagedFile]:
    """The journal entries of the staging area at `directory`, read without taking it over (its owner may be
    running): entries are replaced whole, so each one read is complete."""
    journal = os.path.join(directory, "journal")
    found = []
    for name in sorted(os.listdir(journal)) if os.path.isdir(journal) else ():
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(journal, name), encoding="utf-8") as file:
                found.append(_staged_file(json.load(file)))
        except (OSError, ValueError, TypeError) as exc:
            log.error("staging: unreadable journal entry %r (%s); left in place", name, exc)
    return found


def _journal_entry(staged: StagedFile) -> dict:
    """`staged` as its journal entry holds it.  Its uploads in the older form (`upload`: one or none) whenever
    it fits, so that an older quiltmount can still read the entry; only a file with two uploads under way needs
    `uploads`."""
    entry = asdict(staged)
    uploads = entry.pop("uploads")
    entry["upload"] = uploads[0] if len(uploads) == 1 else None
    if len(uploads) > 1:
        entry["uploads"] = uploads
    return entry


def _staged_file(entry: dict) -> StagedFile:
    """The staged file a journal entry (either form) holds; TypeError if it is not one."""
    if not isinstance(entry, dict):
        raise TypeError(f"a JSON {type(entry).__name__}, not an object")
    upload = entry.pop("upload", None)
    uploads = entry.pop("uploads", None) or ([upload] if upload is not None else [])
    return StagedFile(**entry, uploads=uploads)


def abort_abandoned_uploads(store: ObjectStore, staging: StagingArea, recovered: Iterable[StagedFile]) -> None:
    """Abort, on a thread of its own, the multipart uploads that the daemon which staged `recovered` started and
    did not live to complete or abort: they cost storage and are invisible (parts of an upload completed since
    are no longer there: nothing to do).  Their files are uploaded anew, whole, or kept as before."""
    abandoned = [(staged, key, upload_id) for staged in recovered for key, upload_id in staged.uploads]
    if not abandoned:
        return

    def abort_all() -> None:
        for staged, key, upload_id in abandoned:
            try:
                if store.abort_upload(key, upload_id):
                    log.info("staging: aborted the multipart upload of %r that a previous daemon left unfinished",
                             key)
            except StorageError as exc:
                log.warning("staging: could not abort the multipart upload %s of %r a previous daemon left "
                            "unfinished (%s); the next mount tries again", upload_id, key, exc)
                continue
            staging.forget_upload(staged, upload_id)

    threading.Thread(target=abort_all, name="abandoned-uploads", daemon=True).start()


def _sync_directory(path: str) -> None:
    """Make the entries of directory `path` durable (a rename into it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_in(store: ObjectStore, obj: ObjectInfo, data_path: str) -> None:
    """Stage `obj`'s current bytes into `data_path` (a writer that does not truncate starts from them)."""
    with open(data_path, "r+b") as file:
        for start in range(0, obj.size, COPY_CHUNK):
            file.write(store.get_range(obj, start, min(obj.size, start + COPY_CHUNK)))
