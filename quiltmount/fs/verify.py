"""Hash-verified reads: a package file's bytes are hashed as they are read, and checked at the end.

Reads reach the daemon slightly out of order (the kernel sends read-ahead requests in parallel), so pieces
ahead of the hashed position wait in a bounded buffer; a reader that jumps around more than that is not
verified (documented: only files read from start to end are).
"""

from __future__ import annotations

import threading

from quiltmount.packages.manifest import make_hasher

MAX_PENDING_BYTES = 64 << 20


class HashVerifier:
    def __init__(self, hash_type: str, hash_value: str, size: int) -> None:
        self.expected = hash_value
        self.size = size
        self._hasher = make_hasher(hash_type, size)
        self._next = 0
        self._pending: dict[int, bytes] = {}
        self._pending_bytes = 0
        self._abandoned = False
        self._lock = threading.Lock()

    def observe(self, offset: int, data: bytes) -> bool | None:
        """Account for bytes [offset, offset+len(data)) just read.

        Returns True or False once the whole file has been hashed (match or mismatch), None before that, and
        None forever once the reader has strayed too far for verification.
        """
        with self._lock:
            if self._abandoned or self._next >= self.size and self.size:
                return None
            end = offset + len(data)
            if end <= self._next or not data:
                return None
            if offset > self._next:
                if offset not in self._pending:
                    self._pending[offset] = data
                    self._pending_bytes += len(data)
                    if self._pending_bytes > MAX_PENDING_BYTES:
                        self._abandoned = True
                        self._pending.clear()
                return None
            self._feed(memoryview(data)[self._next - offset:])
            while self._pending:
                ready = [start for start in self._pending if start <= self._next]
                if not ready:
                    break
                for start in ready:
                    piece = self._pending.pop(start)
                    self._pending_bytes -= len(piece)
                    if start + len(piece) > self._next:
                        self._feed(memoryview(piece)[self._next - start:])
            if self._next >= self.size:
                return self._hasher.value() == self.expected
            return None

    def _feed(self, data: memoryview) -> None:  # a view: the bytes (often a cached block's) are not copied
        self._hasher.update(data)
        self._next += len(data)
