"""The thin fusepy `Operations` adapter: translate calls, attributes and errnos; no business logic.

Every error comes with its errno from the layer that knows it (`StorageError.errno`); this module passes it
on and writes the log line.  Unexpected exceptions become EIO, never a crashed mount.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from mfusepy import ENOATTR, FuseOSError, Operations, fuse_get_context

from quiltmount.errors import NotFound, StorageError
from quiltmount.fs.handles import FileOpener
from quiltmount.names import MAX_NAME_BYTES
from quiltmount.fs.node import FileHandle, Node, Tree
from quiltmount.posixmeta import AttrChange, NewAttrs

#: utimensat(2)'s special nanoseconds, as libfuse passes them on (with 0 seconds).
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttrPolicy:
    """What every node reports as owner and permissions (`--uid --gid --file-mode --dir-mode`): the mount's
    own objects and directories (`Tree.holds_objects`) show `object_file_mode`/`object_dir_mode`, the views
    (`.packages`, `.search`, `.versions`, a package revision) `file_mode`/`dir_mode`."""

    uid: int
    gid: int
    file_mode: int = 0o644
    dir_mode: int = 0o755
    object_file_mode: int = 0o644
    object_dir_mode: int = 0o755
    block_size: int = 1 << 20


def _translate(method: Callable) -> Callable:
    """Turn quiltmount exceptions into FuseOSError with the right errno, logging what is not routine.

    Paths are logged quoted (`%r`): an S3 key may hold a newline, which must not forge a log line."""

    @functools.wraps(method)
    def wrapper(self: MountOperations, path: str, *args: Any) -> Any:
        try:
            return method(self, path, *args)
        except FuseOSError:
            raise
        except NotFound:
            raise FuseOSError(errno.ENOENT) from None
        except StorageError as exc:
            if exc.errno != errno.ENOTSUP:  # routine: cp -p and rsync -X try every attribute
                log.warning("%s %r: %s (%s)", method.__name__, path, exc,
                            errno.errorcode.get(exc.errno, exc.errno))
            raise FuseOSError(exc.errno) from None
        except OSError as exc:  # the staging disk: ENOSPC, EDQUOT, EIO... reach the writer as they are
            log.warning("%s %r: %s", method.__name__, path, exc)
            raise FuseOSError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s %r: unexpected error, returning EIO", method.__name__, path)
            raise FuseOSError(errno.EIO) from None

    return wrapper


def _new_name(path: str) -> str:
    """`path` (from the kernel) as the tree names it, for an entry about to be made there: ENAMETOOLONG if its
    name is over 255 bytes, as a local file system answers (the kernel leaves the check to us): an object of
    that name would be written, then never listed, since no directory entry can show it."""
    if len(path.rpartition("/")[2].encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise StorageError(f"name longer than {MAX_NAME_BYTES} bytes", errno.ENAMETOOLONG)
    return path[1:]


class MountOperations(Operations):
    """Any quiltmount mount: a `Tree` for names, attributes and changes, open files from a `FileOpener`."""

    use_ns = True

    def __init__(self, tree: Tree, files: FileOpener, attrs: AttrPolicy, *,
                 on_init: Callable[[Any], None] | None = None) -> None:
        self.tree = tree
        self.files = files
        self.attrs = attrs
        self.on_init = on_init
        self._handles: dict[int, FileHandle] = {}
        self._dir_listings: dict[int, list[tuple[str, Node | None]]] = {}  # directory handle -> its listing
        self._handle_ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------------------
    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        if conn_info is not None and hasattr(conn_info, "max_read"):
            conn_info.max_read = 1 << 20  # accept the kernel's large read requests (libfuse3)
            conn_info.max_write = 1 << 20  # and 1 MiB writes: 8 times fewer calls than the 128 KiB default
        if conn_info is not None:
            conn_info.max_readahead = 1 << 20
        if self.on_init is not None:
            self.on_init(self)

    def open_handles(self) -> int:
        with self._lock:
            return len(self._handles)

    # -- attributes ---------------------------------------------------------------------------------------
    def _stat(self, node: Node, objects: bool) -> dict[str, int]:
        """`node`'s attributes; `objects`: it is one of the mount's own objects or directories."""
        kept = node.attrs
        if kept is not None:  # --posix-metadata: the attributes the object keeps itself
            mode, uid, gid, size = kept.mode, kept.uid, kept.gid, 0 if node.is_dir else node.size
            atime_ns, mtime_ns, ctime_ns = kept.atime_ns, kept.mtime_ns, kept.ctime_ns
        else:
            if node.is_dir:
                mode, size = stat.S_IFDIR | (self.attrs.object_dir_mode if objects else self.attrs.dir_mode), 0
            elif node.target is not None:
                mode, size = stat.S_IFLNK | 0o777, len(node.target.encode())
            else:
                mode = stat.S_IFREG | (self.attrs.object_file_mode if objects else self.attrs.file_mode)
                size = node.size
            uid, gid = self.attrs.uid, self.attrs.gid
            atime_ns = mtime_ns = ctime_ns = int(node.mtime * 1e9)
        # nlink 1 for directories too: "unknown" to find(1)
        return {"st_mode": mode, "st_nlink": 1, "st_size": size, "st_uid": uid, "st_gid": gid,
                "st_mtime": mtime_ns, "st_ctime": ctime_ns, "st_atime": atime_ns,
                "st_blksize": self.attrs.block_size, "st_blocks": (size + 511) // 512}

    @_translate
    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        handle = self._handles.get(fh) if fh is not None else None
        node = handle.attributes() if handle is not None else None
        if node is not None:
            node = self.tree.with_attributes(path[1:], node)
        return self._stat(node if node is not None else self.tree.lookup(path[1:]), self.tree.holds_objects(path[1:]))

    @_translate
    def readdir_with_offset(self, path: str, offset: int, fh: int) -> Iterator[tuple[str, dict[str, int], int]]:
        """The entries from position `offset` on, each with full attributes and the position after it.

        The kernel reads a large directory in several calls; the listing taken at offset 0 is kept in the
        directory handle, so the later calls continue the same listing.  The full attributes go to the kernel
        with the names (readdirplus, see `binding`): `ls -l` then needs no lookup per entry.
        """
        with self._lock:
            listing = self._dir_listings.get(fh)
        if listing is None or offset == 0:
            listing = [(".", None), ("..", None), *self.tree.readdir(path[1:]).items()]
            with self._lock:
                self._dir_listings[fh] = listing
        return self._dir_entries(listing, offset, self.tree.holds_objects(path[1:]))

    def _dir_entries(self, listing: list[tuple[str, Node | None]], offset: int,
                     objects: bool) -> Iterator[tuple[str, dict[str, int], int]]:
        directory = {"st_mode": stat.S_IFDIR}
        stats: dict[int, dict[str, int]] = {}  # id(node) -> its attributes: trees share nodes between entries
        for position in range(offset, len(listing)):
            name, node = listing[position]
            if node is None:
                yield name, directory, position + 1
                continue
            attrs = stats.get(id(node))
            if attrs is None:
                attrs = stats[id(node)] = self._stat(node, objects)
            yield name, attrs, position + 1

    @_translate
    def readlink(self, path: str) -> str:
        return self.tree.readlink(path[1:])

    @_translate
    def opendir(self, path: str) -> int:
        if not self.tree.lookup(path[1:]).is_dir:
            raise FuseOSError(errno.ENOTDIR)
        with self._lock:
            return next(self._handle_ids)

    def releasedir(self, path: str, fh: int) -> None:
        with self._lock:
            self._dir_listings.pop(fh, None)

    def statfs(self, path: str) -> dict[str, int]:
        huge = 1 << 40
        return {"f_bsize": self.attrs.block_size, "f_frsize": 4096, "f_blocks": huge, "f_bfree": huge,
                "f_bavail": huge, "f_files": huge, "f_ffree": huge, "f_favail": huge, "f_namemax": 255}

    @_translate
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        value = self.tree.xattrs(path[1:]).get(name)
        if value is None:
            raise FuseOSError(ENOATTR)
        return value

    @_translate
    def listxattr(self, path: str) -> list[str]:
        return list(self.tree.xattrs(path[1:]))

    # -- data ---------------------------------------------------------------------------------------------
    def _register(self, handle: FileHandle) -> int:
        with self._lock:
            number = next(self._handle_ids)
            self._handles[number] = handle
        return number

    def _handle(self, fh: int) -> FileHandle:
        handle = self._handles.get(fh)
        if handle is None:
            raise FuseOSError(errno.EBADF)
        return handle

    @_translate
    def open(self, path: str, flags: int) -> int:
        return self._register(self.files.open(path[1:], flags))

    @_translate
    def create(self, path: str, mode: int, flags: int = 0) -> int:
        handle = self.files.create(_new_name(path))
        try:
            self.tree.created(path[1:], _new(mode))
        except BaseException:
            handle.release()
            raise
        return self._register(handle)

    @_translate
    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self._handle(fh).read(offset, size)

    @_translate
    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return self._handle(fh).write(data, offset)

    @_translate
    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        handle = self._handles.get(fh) if fh is not None else None
        if handle is None or not handle.truncate(length):
            self.tree.truncate(path[1:], length)

    @_translate
    def flush(self, path: str, fh: int) -> None:
        handle = self._handles.get(fh)
        if handle is not None:
            handle.flush()

    @_translate
    def fsync(self, path: str, datasync: int, fh: int) -> None:
        self._handle(fh).fsync()

    def bypasses_kernel_cache(self, fh: int) -> bool:
        """Whether the kernel must read handle `fh` past its page cache (the binding's open asks)."""
        handle = self._handles.get(fh)
        return handle is not None and not handle.kernel_cached

    @_translate
    def release(self, path: str, fh: int) -> None:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is not None:
            handle.release()

    # -- namespace changes: what the tree supports ------------------------------------------------------
    @_translate
    def unlink(self, path: str) -> None:
        self.tree.unlink(path[1:])

    @_translate
    def rmdir(self, path: str) -> None:
        self.tree.rmdir(path[1:])

    @_translate
    def mkdir(self, path: str, mode: int) -> None:
        self.tree.make_dir(_new_name(path), _new(mode))

    @_translate
    def symlink(self, path: str, target: str) -> None:
        self.tree.make_symlink(_new_name(path), target, _new(stat.S_IFLNK | 0o777))

    @_translate
    def mknod(self, path: str, mode: int, dev: int) -> None:
        self.tree.make_node(_new_name(path), _new(mode))

    @_translate
    def link(self, path: str, target: str) -> None:
        self.tree.link(_new_name(path), target[1:])

    @_translate
    def rename(self, old: str, new: str) -> None:
        self.tree.rename(old[1:], _new_name(new))

    @_translate
    def chmod(self, path: str, mode: int) -> None:
        self.tree.change_attributes(path[1:], AttrChange(mode=mode))

    @_translate
    def chown(self, path: str, uid: int, gid: int) -> None:
        self.tree.change_attributes(path[1:], AttrChange(uid=None if uid == -1 else uid,
                                                         gid=None if gid == -1 else gid))

    @_translate
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        now = time.time_ns()
        atime, mtime = times if times is not None else (UTIME_NOW, UTIME_NOW)
        self.tree.change_attributes(path[1:], AttrChange(atime_ns=_time(atime, now), mtime_ns=_time(mtime, now)))

    @_translate
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> None:
        self.tree.set_xattr(path[1:], name, value)

    @_translate
    def removexattr(self, path: str, name: str) -> None:
        self.tree.remove_xattr(path[1:], name)


def _new(mode: int) -> NewAttrs:
    """What a creating call makes: `mode`, owned by the calling process's user and group."""
    uid, gid, _ = fuse_get_context()
    return NewAttrs(mode, uid, gid)


def _time(ns: int, now: int) -> int | None:
    """A time utimensat(2) gives: None for UTIME_OMIT, `now` for UTIME_NOW."""
    return None if ns == UTIME_OMIT else now if ns == UTIME_NOW else ns
