"""What every tree hands the FUSE adapter: a node (directory, file or symlink) and its read source."""

from __future__ import annotations

import errno
from dataclasses import dataclass

from quiltmount.errors import StorageError
from quiltmount.storage.base import ObjectInfo, ObjectStore


@dataclass(frozen=True)
class Node:
    """A directory, a file (with the object identity its bytes come from) or a symlink (with its target).

    `store` names the store a file is read from when it is not the tree's own (package entries live in any
    bucket).  `expected_hash` is the manifest's (type, value) for package files: reads are verified against
    it.  `immutable` nodes (package revisions) never change, so their cached attributes never expire.
    """

    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    obj: ObjectInfo | None = None
    store: ObjectStore | None = None
    target: str | None = None
    expected_hash: tuple[str, str] | None = None
    immutable: bool = False
    staged_path: str | None = None  # a file written through the mount and not yet uploaded

    @property
    def is_link(self) -> bool:
        return self.target is not None


class MemoryFile:
    """A read-only open file over bytes in memory (a file quiltmount generates, e.g. search results)."""

    def __init__(self, content: bytes) -> None:
        self.content = content

    def read(self, offset: int, size: int) -> bytes:
        return self.content[offset:offset + size]


class Tree:
    """What the FUSE adapter asks of a tree; paths are relative to the tree's root ('' is the root).

    The defaults describe a read-only tree without symlinks or extended attributes.
    """

    def lookup(self, path: str) -> Node:
        raise NotImplementedError

    def readdir(self, path: str) -> dict[str, Node]:
        raise NotImplementedError

    def readlink(self, path: str) -> str:
        node = self.lookup(path)
        if node.target is None:
            raise StorageError(f"{path}: not a symlink", errno.EINVAL)
        return node.target

    def xattrs(self, path: str) -> dict[str, bytes]:
        """The extended attributes of `path` (name -> value)."""
        self.lookup(path)
        return {}

    def unlink(self, path: str) -> None:
        raise StorageError(f"{path}: read-only", errno.EROFS)

    def rmdir(self, path: str) -> None:
        raise StorageError(f"{path}: read-only", errno.EROFS)

    def symlink(self, path: str, target: str) -> None:
        raise StorageError(f"{path}: read-only", errno.EROFS)

    def rename(self, old: str, new: str) -> None:
        raise StorageError(f"{old}: read-only", errno.EROFS)

    def open_write(self, path: str, *, truncate: bool, create: bool):  # -> WriteHandle
        raise StorageError(f"{path}: read-only", errno.EROFS)

    def open_local(self, path: str):  # -> WriteHandle | MemoryFile | None
        """A handle on bytes of `path` the tree holds itself (staged writes, generated files), if any."""
        return None

    def truncate(self, path: str, length: int) -> None:
        raise StorageError(f"{path}: read-only", errno.EROFS)

    def mkdir(self, path: str) -> None:
        raise StorageError(f"{path}: read-only", errno.EROFS)

    def set_attributes(self, path: str) -> None:
        raise StorageError(f"{path}: read-only", errno.EROFS)

    def close(self) -> None:
        """Release threads and connections."""
