"""One staged file being written: its writers, whether its bytes changed, a failed write, its journal state.

The file's handles (`WriteHandle`) tell it of their writes, truncates and closes: it turns its journal entry
`open` while bytes change and `closed` once a descriptor is closed, and tells the part streams of each write
and truncate.  When its last writer releases it, it hands itself to its owner (`on_last_release`), which
decides what becomes of the bytes: upload, discard, or nothing.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from quiltmount.fs.partstream import PartStreams
from quiltmount.fs.staging import CLOSED, OPEN, StagedFile, StagingArea


class DirtyFile:
    """A staged file over a path: open writers, and whether an upload is pending."""

    def __init__(self, path: str, staged: StagedFile, staging: StagingArea, streams: PartStreams | None,
                 lock: threading.Lock, on_last_release: Callable[[DirtyFile], None], *, writers: int = 0,
                 modified: bool = True) -> None:
        """`lock` is the owner's: the one under which it finds the file by its path and counts a new writer,
        so a writer opening the file and the last one releasing it are ordered.  `streams` None: nothing is
        sent while the file is written (a draft's files wait for a commit)."""
        self.path = path
        self.staged = staged
        self.data_path = staging.data_path(staged)
        self.writers = writers  # changed under the owner's `lock`
        self.write_error: str | None = None  # a write failed (e.g. ENOSPC): these bytes must never be uploaded
        self.modified = modified  # bytes changed since the last upload (fsync, or flush with --sync-on-close)
        self._lock = lock
        self._staging = staging
        self._streams = streams
        self._on_last_release = on_last_release

    def size(self) -> int:
        try:
            return os.stat(self.data_path).st_size
        except FileNotFoundError:
            return 0

    def mtime(self) -> float:
        try:
            return os.stat(self.data_path).st_mtime
        except FileNotFoundError:
            return time.time()

    def changing(self) -> None:
        """Before a write or a truncate: the bytes differ from any upload, and are incomplete until closed."""
        self.modified = True
        if self.staged.state != OPEN:
            self._staging.set_state(self.staged, OPEN)

    def wrote(self, offset: int, length: int) -> None:
        if self._streams is not None:
            self._streams.wrote(self.staged, offset, length, sole_writer=self.writers == 1)

    def truncating(self, length: int) -> None:
        if self._streams is not None:
            self._streams.truncated(self.staged, length)

    def closed(self) -> None:
        """close(2) of a descriptor: the bytes so far are complete (and durable: the caller synced them)."""
        if self.staged.state == OPEN:
            self._staging.set_state(self.staged, CLOSED)

    def release(self) -> None:
        """A writer's last descriptor is closed: once no writer is left, the owner takes the file over."""
        with self._lock:
            self.writers -= 1
            if self.writers > 0:
                return
        self._on_last_release(self)
