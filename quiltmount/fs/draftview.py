"""`.draft/` in a single-package mount: the mounted package's draft, beside the revision the mount shows.

The draft is the one the mount's `PackagesTree` keeps (fs/drafttree.py), under the same path it has in a
bucket mount (`NS/NAME/draft`); this view only translates paths and opens a new draft from the mounted
revision rather than from `latest`.
"""

from __future__ import annotations

from quiltmount.fs.node import FileHandle, Node, Tree
from quiltmount.fs.packagetree import DRAFT, PackagesTree


class DraftView(Tree):
    """The draft of package `name`, opened (`mkdir .draft`) from revision `top_hash`."""

    def __init__(self, packages: PackagesTree, name: str, top_hash: str) -> None:
        self.packages = packages
        self.name = name
        self.top_hash = top_hash
        self._root = f"{name}/{DRAFT}"

    def _path(self, path: str) -> str:
        return f"{self._root}/{path}" if path else self._root

    def lookup(self, path: str) -> Node:
        return self.packages.lookup(self._path(path))

    def readdir(self, path: str) -> dict[str, Node]:
        return self.packages.readdir(self._path(path))

    def xattrs(self, path: str) -> dict[str, bytes]:
        return self.packages.xattrs(self._path(path))

    def open_local(self, path: str) -> FileHandle | None:
        return self.packages.open_local(self._path(path))

    def open_write(self, path: str, *, truncate: bool, create: bool) -> FileHandle:
        return self.packages.open_write(self._path(path), truncate=truncate, create=create)

    def truncate(self, path: str, length: int) -> None:
        self.packages.truncate(self._path(path), length)

    def set_attributes(self, path: str) -> None:
        self.packages.set_attributes(self._path(path))

    def set_xattr(self, path: str, name: str, value: bytes) -> None:
        self.packages.set_xattr(self._path(path), name, value)

    def mkdir(self, path: str) -> None:
        if path:
            self.packages.mkdir(self._path(path))
        else:
            self.packages.make_draft(self.name, self._root, from_revision=self.top_hash)

    def rmdir(self, path: str) -> None:
        self.packages.rmdir(self._path(path))

    def unlink(self, path: str) -> None:
        self.packages.unlink(self._path(path))

    def rename(self, old: str, new: str) -> None:
        self.packages.rename(self._path(old), self._path(new))

    def close(self) -> None:
        self.packages.close()
