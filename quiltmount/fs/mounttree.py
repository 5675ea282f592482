"""The root of a mount: the bucket's own tree (or a package revision's), with quiltmount's views under
reserved names."""

from __future__ import annotations

import errno
import logging
from typing import Protocol

from quiltmount.errors import NotFound, StorageError
from quiltmount.fs.node import Node, Tree
from quiltmount.fs.tree import RESERVED_ROOT_NAMES
from quiltmount.fs.versions import VersionsTree, versions_path
from quiltmount.posixmeta import AttrChange, NewAttrs

log = logging.getLogger(__name__)


class MountControl(Protocol):
    """Requests to the daemon as extended attributes that every path of the mount answers and none lists
    (`fs/prefetch.py`): read with getxattr, which read-only mounts allow too."""

    def answers(self, name: str) -> bool: ...

    def answer(self, tree: Tree, path: str, name: str) -> bytes: ...


class _Attributes(dict):
    """A path's extended attributes, plus the control's names, answered on request but never listed."""

    def __init__(self, found: dict[str, bytes], tree: Tree, path: str, control: MountControl) -> None:
        super().__init__(found)
        self._tree, self._path, self._control = tree, path, control

    def get(self, name: str, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        if self._control.answers(name):
            return self._control.answer(self._tree, self._path, name)
        return super().get(name, default)


class _Reserved(Tree):
    """A reserved name with no view yet: nothing to see, nothing to write (EROFS)."""

    def lookup(self, path: str) -> Node:
        raise NotFound(path)

    def readdir(self, path: str) -> dict[str, Node]:
        raise NotFound(path)


class MountTree(Tree):
    """Routes the reserved names (`.packages/...` and `.search/...` in a bucket mount, `.draft/...` in a
    package's) to their views, bucket paths through a `.versions` directory to `versions` (when given), and
    everything else to the bucket.

    The reserved names answer lookups but are never listed, so `find`, `du` and `rsync` see only the bucket;
    an entry of the root's own tree under a reserved name (a package's `.draft/`) is hidden, with a log line:
    a lookup of that name reaches the view, so listing it would show what cannot be opened.
    A `control` (set by `with_control`) answers its extended attributes on every path.
    """

    def __init__(self, bucket: Tree, views: dict[str, Tree], reserved: frozenset[str] = RESERVED_ROOT_NAMES,
                 versions: VersionsTree | None = None) -> None:
        assert set(views) <= reserved
        self.bucket = bucket
        self.views = {name: views.get(name) or _Reserved() for name in reserved}
        self.versions = versions
        self.control: MountControl | None = None
        self._reported_hidden: set[str] = set()

    def _route(self, path: str) -> tuple[Tree, str]:
        first, _, rest = path.partition("/")
        view = self.views.get(first)
        if view is not None:
            return view, rest
        if self.versions is not None and versions_path(path) is not None:
            return self.versions, path
        return self.bucket, path

    def lookup(self, path: str) -> Node:
        tree, inner = self._route(path)
        return tree.lookup(inner)

    def refresh(self, path: str) -> Node:
        tree, inner = self._route(path)
        return tree.refresh(inner)

    def readdir(self, path: str) -> dict[str, Node]:
        tree, inner = self._route(path)
        entries = tree.readdir(inner)
        if tree is self.bucket and self.versions is not None:
            self.versions.hide(inner, entries)
        if path == "":
            self._hide_reserved(entries)
        return entries

    def _hide_reserved(self, entries: dict[str, Node]) -> None:
        """Drop the root's entries named as a view, logged once per name (a race may log it twice)."""
        for name in self.views.keys() & entries.keys():
            del entries[name]
            if name not in self._reported_hidden:
                self._reported_hidden.add(name)
                log.warning("%r at the root of the mounted tree is hidden: the mount reserves that name for its "
                            "own view (a single-package mount: its draft; --read-only has none)", name)

    def holds_objects(self, path: str) -> bool:
        return self._route(path)[0] is self.bucket

    def readlink(self, path: str) -> str:
        tree, inner = self._route(path)
        return tree.readlink(inner)

    def xattrs(self, path: str) -> dict[str, bytes]:
        tree, inner = self._route(path)
        found = tree.xattrs(inner)
        return found if self.control is None else _Attributes(found, self, path, self.control)

    def unlink(self, path: str) -> None:
        tree, inner = self._route(path)
        tree.unlink(inner)

    def rmdir(self, path: str) -> None:
        tree, inner = self._route(path)
        tree.rmdir(inner)

    def make_symlink(self, path: str, target: str, new: NewAttrs) -> None:
        tree, inner = self._route(path)
        tree.make_symlink(inner, target, new)

    def link(self, path: str, target: str) -> None:
        tree, inner = self._route(path)
        target_tree, target_inner = self._route(target)
        if tree is not target_tree:
            self._refuse_between(path, target, (tree, target_tree), "link")
        tree.link(inner, target_inner)

    def make_node(self, path: str, new: NewAttrs) -> None:
        tree, inner = self._route(path)
        tree.make_node(inner, new)

    def rename(self, old: str, new: str) -> None:
        old_tree, old_inner = self._route(old)
        new_tree, new_inner = self._route(new)
        if old_tree is not new_tree:
            self._refuse_between(old, new, (old_tree, new_tree), "move")
        old_tree.rename(old_inner, new_inner)

    def _refuse_between(self, one: str, other: str, trees: tuple[Tree, Tree], verb: str) -> None:
        """A link or rename across two of the mount's trees: EROFS when one is `.versions` (read-only, as every
        change there), else EXDEV."""
        if self.versions is not None and self.versions in trees:
            raise StorageError(f"{one} -> {other}: object versions are read-only", errno.EROFS)
        raise StorageError(f"{one} -> {other}: cannot {verb} between the bucket and a view", errno.EXDEV)

    def open_write(self, path: str, *, truncate: bool, create: bool):
        tree, inner = self._route(path)
        return tree.open_write(inner, truncate=truncate, create=create)

    def open_local(self, path: str):
        tree, inner = self._route(path)
        return tree.open_local(inner)

    def truncate(self, path: str, length: int) -> None:
        tree, inner = self._route(path)
        tree.truncate(inner, length)

    def make_dir(self, path: str, new: NewAttrs) -> None:
        tree, inner = self._route(path)
        tree.make_dir(inner, new)

    def created(self, path: str, new: NewAttrs) -> None:
        tree, inner = self._route(path)
        tree.created(inner, new)

    def change_attributes(self, path: str, change: AttrChange) -> None:
        tree, inner = self._route(path)
        tree.change_attributes(inner, change)

    def with_attributes(self, path: str, node: Node) -> Node:
        tree, inner = self._route(path)
        return tree.with_attributes(inner, node)

    def set_xattr(self, path: str, name: str, value: bytes) -> None:
        tree, inner = self._route(path)
        tree.set_xattr(inner, name, value)

    def remove_xattr(self, path: str, name: str) -> None:
        tree, inner = self._route(path)
        tree.remove_xattr(inner, name)

    def close(self) -> None:
        self.bucket.close()
        for view in self.views.values():
            view.close()


def with_control(tree: Tree, control: MountControl) -> MountTree:
    """The mount's tree answering `control`'s attributes (whose owner closes it): its own `MountTree`, or one
    around a tree without reserved names (a read-only package mount)."""
    mount = tree if isinstance(tree, MountTree) else MountTree(tree, {}, reserved=frozenset())
    mount.control = control
    return mount
