"""Replacing a file so that readers see the old bytes or the new ones, never half of either; removing one that
may be gone already."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO


@contextlib.contextmanager
def atomic_file(path: str, *, mode: int = 0o600, durable: bool = False) -> Iterator[BinaryIO]:
    """A binary file to fill; when the block ends without an error it replaces `path` (rename), otherwise it
    is removed.  The temporary name is unique (mkstemp), so concurrent writers of one path never share it:
    the last rename wins whole.  `durable` fsyncs the bytes before the rename (journals, caches that must
    survive a crash); `mode` is applied before the rename, so the file is never visible with a wider one."""
    directory, name = os.path.split(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        remove_file(temporary)
        raise


def remove_file(path: str) -> None:
    """Remove the file at `path`; one already gone is no error."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def file_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file: 0666 less the umask.  Read from /proc,
    because setting the umask to learn it would race with other threads creating files."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    raise OSError("no Umask line in /proc/self/status")
