"""Exceptions shared by every layer.

`UserError` is what the command line prints as one line (exit 1).  `StorageError` carries the errno the
filesystem must return, decided by the layer that knows what went wrong (see docs/SEMANTICS.md).
`QuiltException` is what the quilt3-compatible control API raises where quilt3 does.
"""

from __future__ import annotations

import errno
from typing import Any


class QuiltmountError(Exception):
    """Base class of every error quiltmount raises on purpose."""


class UserError(QuiltmountError):
    """A problem the user can fix; printed as a single line, never as a traceback."""


class QuiltException(QuiltmountError):
    """quilt3's `QuiltException`: a message plus optional keyword attributes (e.g. `response`)."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        self.message = message
        for key, value in kwargs.items():
            setattr(self, key, value)
        super().__init__(message)


class StorageError(QuiltmountError):
    """A storage operation failed; `errno` is what a file system call should report."""

    def __init__(self, message: str, err: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = err


class NotFound(StorageError):
    def __init__(self, message: str) -> None:
        super().__init__(message, errno.ENOENT)


class AccessDenied(StorageError):
    def __init__(self, message: str) -> None:
        super().__init__(message, errno.EACCES)


class ObjectChanged(StorageError):
    """The object was replaced or deleted after it was opened; its old bytes are gone (EIO)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errno.EIO)
