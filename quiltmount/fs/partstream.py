"""Parts sent while a file is written: the multipart uploads of staged files written in order from their start.

Parts are the store's size (`PartUpload.part_size`).  A stream stops taking parts at S3's limit of parts
(MAX_PARTS): a longer sequential write is uploaded after close instead.  A bucket's file finishes its stream
when it is uploaded after close (`finish`); a package draft's file keeps its stream, never completed, until a
commit takes it (`take`) and completes it: nothing appears at the key before.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from quiltmount.fs.staging import StagedFile, StagingArea
from quiltmount.storage.base import ObjectInfo, ObjectStore, PartUpload
from quiltmount.units import MAX_PARTS


@dataclass
class _Stream:
    """A file written sequentially from its start: its complete parts go to S3 while the writer writes, so
    the upload after close has only the tail left.  Any other write pattern drops it (see `wrote`)."""

    staged: StagedFile
    upload: PartUpload
    upload_id: str | None = None  # once S3 created it (journalled in the staged file's entry)
    end: int = 0  # bytes written so far, all in order from 0
    parts: int = 0  # parts handed to the upload: bytes [0, parts * upload.part_size) must not change
    lock: threading.Lock = field(default_factory=threading.Lock)


class PartStreams:
    """The streams of the staged files being written in order, by staged file."""

    def __init__(self, store: ObjectStore, staging: StagingArea) -> None:
        """`staging` holds the files and journals each stream's upload (`StagingArea.note_upload`)."""
        self.store = store
        self.staging = staging
        self._streams: dict[str, _Stream] = {}  # staged id -> parts sent while a sequential writer writes
        self._aborting: set[threading.Thread] = set()  # `_abort_soon`'s, until done: `close` waits for them
        self._lock = threading.Lock()

    def start(self, staged: StagedFile, data_path: str, key: str | None = None) -> None:
        """A file (new, or truncated to nothing) whose parts can go while it is written, if the store can, to
        `key` (default: the staged file's)."""
        destination = staged.key if key is None else key
        stream: _Stream | None = None

        def started(upload_id: str) -> None:
            assert stream is not None  # the upload is created with its first part, after `start` returned
            stream.upload_id = upload_id
            self.staging.note_upload(staged, destination, upload_id)

        upload = self.store.part_upload(destination, data_path, on_start=started)
        if upload is not None:
            stream = _Stream(staged, upload)
            with self._lock:
                self._streams[staged.id] = stream

    def wrote(self, staged: StagedFile, offset: int, length: int, *, sole_writer: bool) -> None:
        """After a write: the next complete part of an in-order file goes to S3; anything else (or a second
        writer: not `sole_writer`) drops it."""
        with self._lock:
            stream = self._streams.get(staged.id)
        if stream is None:
            return
        with stream.lock:
            in_order = offset == stream.end and sole_writer
            if in_order:
                stream.end += length
                while stream.parts < min(stream.end // stream.upload.part_size, MAX_PARTS):
                    stream.parts += 1
                    stream.upload.add_part(stream.parts)
        if not in_order:
            self.drop(staged)

    def truncated(self, staged: StagedFile, length: int) -> None:
        with self._lock:
            stream = self._streams.get(staged.id)
        if stream is not None and length != stream.end:
            self.drop(staged)

    def drop(self, staged: StagedFile) -> None:
        """The file will be uploaded whole after all (or not at all): abort what was sent."""
        with self._lock:
            stream = self._streams.pop(staged.id, None)
        if stream is not None:
            self._abort_soon(stream)

    def finish(self, staged: StagedFile, data_path: str) -> ObjectInfo | None:
        """Upload a closed staged file by finishing its stream, if every byte of it went in order; None if it
        has to be sent whole (its stream, if any, is dropped)."""
        stream = self._take(staged, data_path, staged.key, None)
        if stream is None:
            return None
        info = stream.upload.finish(os.path.getsize(data_path))
        if stream.upload_id is not None:
            self.staging.upload_done(staged, stream.upload_id)
        return info

    def take(self, staged: StagedFile, data_path: str, key: str, *, part_size: int | None = None,
             ) -> PartUpload | None:
        """The upload of a closed staged file, taken out of its stream for the caller to finish, if every byte
        of it went in order to `key` (in parts of `part_size`, when given); None if it has to be sent whole
        (its stream, if any, is dropped)."""
        stream = self._take(staged, data_path, key, part_size)
        return None if stream is None else stream.upload

    def _take(self, staged: StagedFile, data_path: str, key: str, part_size: int | None) -> _Stream | None:
        """`take`, the stream itself."""
        with self._lock:
            stream = self._streams.pop(staged.id, None)
        if stream is None:
            return None
        upload = stream.upload
        fits = upload.key == key and part_size in (None, upload.part_size)
        if stream.parts and fits and os.path.getsize(data_path) == stream.end:
            return stream
        self._abort_soon(stream)
        return None

    def close(self) -> None:
        """Unmounting: files still open keep their staged bytes, their parts go, and so do those of streams
        dropped just before (an upload whose file has landed since is no longer journalled: no later mount
        would abort it)."""
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            if stream.parts:
                self._abort(stream)
        with self._lock:
            aborting = list(self._aborting)
        for thread in aborting:
            thread.join()

    def _abort(self, stream: _Stream) -> None:
        """Abort a stream's upload (waiting for its parts in flight): its file's journal no longer names it (if
        S3 could not be told, it still does: the next daemon to recover the file tries again)."""
        if stream.upload.abort() and stream.upload_id is not None:
            self.staging.forget_upload(stream.staged, stream.upload_id)

    def _abort_soon(self, stream: _Stream) -> None:
        """`_abort` in the background."""
        if not stream.parts:
            return

        def abort() -> None:
            try:
                self._abort(stream)
            finally:
                with self._lock:
                    self._aborting.discard(thread)

        thread = threading.Thread(target=abort, name="abort-upload", daemon=True)
        with self._lock:
            self._aborting.add(thread)
        thread.start()
