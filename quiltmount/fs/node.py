"""What every tree hands the FUSE adapter: a node (directory, file or symlink) and its read source."""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass

from quiltmount.errors import NotFound, StorageError
from quiltmount.posixmeta import AttrChange, NewAttrs, PosixAttrs
from quiltmount.storage.base import ObjectInfo, ObjectStore


@dataclass(frozen=True)
class Node:
    """A directory, a file (with the object identity its bytes come from) or a symlink (with its target).

    `store` names the store a file is read from when it is not the tree's own (package entries live in any
    bucket).  `expected_hash` is the manifest's (type, value) for package files: reads are verified against
    it.  `attrs`: the POSIX attributes the object keeps (`--posix-metadata`), which then say what it is (a
    symlink whose target is its body, a FIFO...) and replace the mount's owner, modes and times.
    """

    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    obj: ObjectInfo | None = None
    store: ObjectStore | None = None
    target: str | None = None
    expected_hash: tuple[str, str] | None = None
    attrs: PosixAttrs | None = None

    @property
    def is_link(self) -> bool:
        return self.target is not None or (self.attrs is not None and stat.S_ISLNK(self.attrs.mode))


class PathIndex:
    """A fixed tree of nodes built from `/`-separated paths (a search's hits).

    Directories are implied by the paths.  Where a name is both a file and a directory the directory wins,
    and a path added twice keeps its first node.
    """

    def __init__(self, dir_node: Node) -> None:
        self.dir_node = dir_node
        self.dirs: dict[str, dict[str, Node]] = {"": {}}

    def add(self, path: str, node: Node) -> bool:
        """Place `node` at `path`, creating its parent directories; False if the name is already taken."""
        parts = path.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in self.dirs:
                self.dirs[directory] = {}
                self.dirs["/".join(parts[:depth - 1])][parts[depth - 1]] = self.dir_node
        entries = self.dirs["/".join(parts[:-1])]
        if parts[-1] in entries:
            return False
        entries[parts[-1]] = node
        return True

    def node(self, path: str) -> Node:
        if path == "":
            return self.dir_node
        parent, _, name = path.rpartition("/")
        node = self.dirs.get(parent, {}).get(name)
        if node is None:
            raise NotFound(path)
        return node

    def sort(self) -> None:
        """Order every directory's entries by name."""
        for directory in self.dirs.values():
            ordered = dict(sorted(directory.items()))
            directory.clear()
            directory.update(ordered)


class FileHandle:
    """An open file, as the FUSE adapter uses it (`fs/handles.py` has the kinds and the opener).

    The defaults describe a read-only handle whose attributes are those of its path.
    """

    #: False: the kernel reads this handle's bytes from it every time, past its page cache of the file (which
    #: descriptors of other handles may read from).
    kernel_cached = True

    def read(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def write(self, data: bytes, offset: int) -> int:
        raise StorageError("file not open for writing", errno.EBADF)

    def truncate(self, length: int) -> bool:
        """Truncate through this handle; False when it is not open for writing (the tree then truncates the
        file by its path, as truncate(2) does)."""
        return False

    def append_only(self) -> None:
        """Opened with O_APPEND: every write goes to the end of the file.  FUSE leaves that to the file system
        (without writeback caching, the kernel sends the offset of the end as it last knew it)."""

    def flush(self) -> None:
        """close(2) of a descriptor of this handle."""

    def fsync(self) -> None:
        """fsync(2)."""

    def release(self) -> None:
        """The last descriptor is closed."""

    def attributes(self) -> Node | None:
        """The node `fstat` reports, or None for the node of the path."""
        return None


class MemoryFile(FileHandle):
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

    def refresh(self, path: str) -> Node:
        """The node at `path` as its store holds it now, past (and into) every cache: an open found that the
        object it was given had been replaced.  The default, for trees whose files never change: `lookup`."""
        return self.lookup(path)

    def readdir(self, path: str) -> dict[str, Node]:
        raise NotImplementedError

    def holds_objects(self, path: str) -> bool:
        """Whether `path` (and the entries of it, if a directory) is one of the mount's own objects or
        directories rather than a view: it then shows the object modes (`AttrPolicy`)."""
        return False

    def readlink(self, path: str) -> str:
        node = self.lookup(path)
        if node.target is None:
            raise StorageError(f"{path}: not a symlink", errno.EINVAL)
        return node.target

    def xattrs(self, path: str) -> dict[str, bytes]:
        """The extended attributes of `path` (name -> value)."""
        self.lookup(path)
        return {}

    def check_parent_dir(self, path: str) -> None:
        """Before creating `path`: its parent must be a directory here (NotFound, or ENOTDIR)."""
        parent = path.rpartition("/")[0]
        if parent and not self.lookup(parent).is_dir:
            raise StorageError(f"{parent}: not a directory", errno.ENOTDIR)

    def replaced_by_write(self, path: str, *, create: bool) -> Node | None:
        """Before opening `path` for writing: the file it holds now, or None when it is to be created
        (NotFound unless `create`; EISDIR for a directory)."""
        try:
            node = self.lookup(path)
        except NotFound:
            if not create:
                raise
            self.check_parent_dir(path)
            return None
        if node.is_dir:
            raise StorageError(f"{path}: is a directory", errno.EISDIR)
        return node

    def check_file_rename(self, old: str, new: str) -> None:
        """Before `rename(old, new)` of a file: EXDEV for a directory (objects and package entries are files:
        moving a directory is a copy of each, which mv(1) does on EXDEV, not atomic, as documented), EISDIR
        onto a directory, and the new parent must be a directory."""
        if self.lookup(old).is_dir:
            raise StorageError(f"{old}: directories cannot be renamed in place", errno.EXDEV)
        try:
            if self.lookup(new).is_dir:
                raise StorageError(f"{new}: is a directory", errno.EISDIR)
        except NotFound:
            self.check_parent_dir(new)

    def check_absent(self, path: str) -> None:
        """Before `mkdir path`: EEXIST if something is there."""
        try:
            self.lookup(path)
        except NotFound:
            return
        raise StorageError(f"{path}: exists", errno.EEXIST)

    def set_xattr(self, path: str, name: str, value: bytes) -> None:
        """Set an extended attribute; ENOTSUP where none can be set (cp -p and rsync -X carry on)."""
        raise StorageError(f"{path}: extended attributes are not stored here", errno.ENOTSUP)

    def remove_xattr(self, path: str, name: str) -> None:
        raise StorageError(f"{path}: extended attributes are not stored here", errno.ENOTSUP)

    def unlink(self, path: str) -> None:
        raise StorageError(f"{path}: read-only", errno.EROFS)

    def rmdir(self, path: str) -> None:
        raise StorageError(f"{path}: read-only", errno.EROFS)

    def symlink(self, path: str, target: str) -> None:
        raise StorageError(f"{path}: read-only", errno.EROFS)

    def link(self, path: str, target: str) -> None:
        """A hard link `path` to the file `target`."""
        raise StorageError(f"{path}: read-only", errno.EROFS)

    def make_node(self, path: str, new: NewAttrs) -> None:
        """mknod(2): a FIFO, socket or device (the type in `new.mode`)."""
        raise StorageError(f"{path}: read-only", errno.EROFS)

    def rename(self, old: str, new: str) -> None:
        raise StorageError(f"{old}: read-only", errno.EROFS)

    def open_write(self, path: str, *, truncate: bool, create: bool) -> FileHandle:
        raise StorageError(f"{path}: read-only", errno.EROFS)

    def open_local(self, path: str) -> FileHandle | None:
        """A handle on bytes of `path` the tree holds itself (staged writes, generated files), if any."""
        return None

    def truncate(self, path: str, length: int) -> None:
        """truncate(2) without an open descriptor: through a write handle (EROFS where there is none)."""
        handle = self.open_write(path, truncate=length == 0, create=False)
        try:
            handle.truncate(length)
            handle.flush()  # complete, as after a close: nothing holds the file open any more
        finally:
            handle.release()

    def mkdir(self, path: str) -> None:
        raise StorageError(f"{path}: read-only", errno.EROFS)

    def set_attributes(self, path: str) -> None:
        raise StorageError(f"{path}: read-only", errno.EROFS)

    # -- attributes a tree may keep (`--posix-metadata`); the defaults keep none ------------------------
    def make_dir(self, path: str, new: NewAttrs) -> None:
        """mkdir(2) with the caller's mode and owner."""
        self.mkdir(path)

    def make_symlink(self, path: str, target: str, new: NewAttrs) -> None:
        """symlink(2) by the caller `new` names."""
        self.symlink(path, target)

    def created(self, path: str, new: NewAttrs) -> None:
        """creat(2) has just opened the new file `path` (`open_write`): its mode and owner."""

    def change_attributes(self, path: str, change: AttrChange) -> None:
        """chmod(2), chown(2), utimensat(2)."""
        self.set_attributes(path)

    def with_attributes(self, path: str, node: Node) -> Node:
        """The node an open file's handle reports (fstat), with the attributes `path` has."""
        return node

    def close(self) -> None:
        """Release threads and connections."""
