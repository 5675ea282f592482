"""`--posix-metadata`: modes, owners, times, symlinks, special files and extended attributes kept in each
object's user metadata, as s3fs-fuse keeps them (the format: `posixmeta.py`).

`PosixTree` is a layer over a bucket mount's tree (the write-back overlay, or the bucket tree of a read-only
mount).  Names and sizes still come from the listings; each object's attributes come from a HEAD of it, and
each directory's from a HEAD of its `dir/` marker, as in s3fs: cached for the metadata TTL (by ETag for
objects), made 16 at a time for a listing.  So `ls -l` of a directory costs one HEAD per entry the first time
(and after each TTL), where the default mode costs none.

Changes: a file still staged (not uploaded) keeps its attributes in its journal entry and its upload carries
them (`WritableBucketTree.change_staged`); an object in S3 gets them by a server-side copy onto itself
(MetadataDirective REPLACE; a multipart copy above 5 GiB), never by sending its bytes again; a directory by a
PUT of its empty marker object (created if it had none).  Times follow POSIX: every change sets ctime;
creating, removing or renaming an entry sets its directory's mtime and ctime (but the bucket root's, which
has no marker).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cachetools import LRUCache, TTLCache

from quiltmount.errors import NotFound, StorageError
from quiltmount.fs.node import FileHandle, Node, Tree
from quiltmount.fs.overlay import WritableBucketTree
from quiltmount.fs.tree import BucketTree
from quiltmount.posixmeta import (NS, XATTR_NAME_UNSTORABLE, AttrChange, NewAttrs, PosixAttrs, changed, created,
                                  format_time, from_headers, merged_headers, to_headers)
from quiltmount.storage.base import is_directory_type

log = logging.getLogger(__name__)

#: HEADs in flight for one listing.
HEAD_WORKERS = 16
#: The namespaces of extended attributes that are not kept: the kernel's own (`security.`, `system.`: POSIX
#: ACLs, which the mount does not enforce, `trusted.`) are answered by the kernel or the binding, never from
#: here.  Every other name is kept, `user.*` and, as s3fs keeps them, names without a namespace (FUSE passes
#: `setfattr -n key1` through as it is).
KERNEL_XATTR_NAMESPACES = ("security.", "system.", "trusted.")


@dataclass(frozen=True)
class MountDefaults:
    """What an object or directory without attributes of its own shows (`--uid --gid --file-mode
    --dir-mode`); a directory without a marker has the mount's start as its times."""

    uid: int
    gid: int
    file_mode: int
    dir_mode: int
    started_ns: int


class PosixTree(Tree):
    """`inner` (a bucket's tree) with the POSIX attributes of every node; `writes` is its write-back layer
    (None on a read-only mount, where changes give EROFS)."""

    def __init__(self, inner: Tree, bucket: BucketTree, writes: WritableBucketTree | None, defaults: MountDefaults,
                 *, metadata_ttl: float, cache_size: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.bucket = bucket
        self.store = bucket.store
        self.writes = writes
        self.defaults = defaults
        ttl = metadata_ttl if metadata_ttl > 0 else 1e-9
        self._objects: TTLCache[str, tuple[str, PosixAttrs]] = TTLCache(cache_size, ttl, timer=clock)  # by ETag
        # A directory's attributes and its marker's user metadata (None: it has no marker).
        self._dirs: TTLCache[str, tuple[PosixAttrs, dict[str, str] | None]] = TTLCache(cache_size, ttl, timer=clock)
        self._targets: LRUCache[tuple[str, str], str] = LRUCache(10_000)  # (path, ETag) -> symlink target
        # The attributes of a bucket root without a marker once changed (utimensat, chmod): kept in memory only.
        self._root: PosixAttrs | None = None
        self._lock = threading.Lock()  # guards the caches and `_changes`
        # Bumped by every change made here: a HEAD that started before one is not cached (it may predate it).
        self._changes = 0
        self._pool = ThreadPoolExecutor(max_workers=HEAD_WORKERS, thread_name_prefix="head")

    # -- reading ------------------------------------------------------------------------------------------
    def lookup(self, path: str) -> Node:
        return self._attributed(path, self.inner.lookup(path))

    def refresh(self, path: str) -> Node:
        self._changed_here(path)
        return self._attributed(path, self.inner.refresh(path))

    def readdir(self, path: str) -> dict[str, Node]:
        """The entries of `path` with their attributes: those not cached are asked for 16 at a time.  An entry
        whose HEAD fails shows the mount's defaults (logged), rather than failing the whole listing."""
        entries = self.inner.readdir(path)
        prefix = path + "/" if path else ""
        done: dict[str, Node] = {}
        missing: list[tuple[str, Node]] = []
        for name, node in entries.items():
            cached = self._cached(prefix + name, node)
            if cached is None:
                missing.append((name, node))
            else:
                done[name] = cached
        for name, node in zip((name for name, _ in missing),
                              self._pool.map(lambda item: self._listed(prefix + item[0], item[1]), missing)):
            done[name] = node
        return {name: done[name] for name in entries}

    def _listed(self, path: str, node: Node) -> Node:
        try:
            return self._attributed(path, node)
        except StorageError as exc:
            log.warning("attributes of %r: %s; showing the mount's defaults", path, exc)
            return dataclasses.replace(node, attrs=self._default(node))

    def _cached(self, path: str, node: Node) -> Node | None:
        """`node` with the attributes cached for it, or None if it needs a request."""
        with self._lock:
            if node.is_dir:
                dir_entry = self._dirs.get(path)
                attrs = None if dir_entry is None else dir_entry[0]
            elif node.obj is not None:
                entry = self._objects.get(path)
                attrs = entry[1] if entry is not None and entry[0] == node.obj.etag else None
            else:
                return None
        return None if attrs is None else _typed(node, attrs)

    def _attributed(self, path: str, node: Node) -> Node:
        cached = self._cached(path, node)
        if cached is not None:
            return cached
        if node.is_dir:
            return _typed(node, self._dir_attrs(path)[0])
        if node.obj is None:  # staged bytes, not uploaded yet
            attrs = self._staged_attrs(path, node)
            return _typed(node, attrs) if attrs is not None else self.lookup(path)  # landed meanwhile
        with self._lock:
            changes = self._changes
        info, headers = self.store.head_metadata(self.bucket.key_of(path))
        default = self._file_default(info.mtime)
        if info.size == 0 and is_directory_type(info.content_type):  # s3fs's legacy `dir` object
            default = dataclasses.replace(default, mode=stat.S_IFDIR | self.defaults.dir_mode)
        attrs = from_headers(headers, default)
        self._remember(changes, lambda: self._objects.__setitem__(path, (info.etag, attrs)))
        if info.etag != node.obj.etag:  # changed since it was listed: this is what S3 holds now
            node = dataclasses.replace(node, size=info.size, mtime=info.mtime, obj=info)
        return _typed(node, attrs)

    def _remember(self, changes: int, put: Callable[[], None]) -> None:
        """Cache what a request answered, unless something changed here since it was sent."""
        with self._lock:
            if self._changes == changes:
                put()

    def _dir_attrs(self, path: str) -> tuple[PosixAttrs, dict[str, str] | None]:
        """A directory's attributes: its marker's, else the defaults (the bucket root has no marker); and
        the marker's user metadata (None without a marker)."""
        default = self._default(Node(is_dir=True))
        marker = self._marker(path)
        if marker is None:
            with self._lock:
                return self._root or default, None
        with self._lock:
            changes = self._changes
        headers: dict[str, str] | None
        try:
            info, headers = self.store.head_metadata(marker)
        except NotFound:
            attrs, headers = default, None
        else:
            mtime_ns = int(info.mtime * NS)
            attrs = from_headers(headers, dataclasses.replace(default, atime_ns=mtime_ns, mtime_ns=mtime_ns,
                                                              ctime_ns=mtime_ns))
        self._remember(changes, lambda: self._dirs.__setitem__(path, (attrs, headers)))
        return attrs, headers

    def _dir_entry(self, path: str) -> tuple[PosixAttrs, dict[str, str] | None]:
        """`_dir_attrs`, from the cache when it is there."""
        with self._lock:
            cached = self._dirs.get(path)
        return cached if cached is not None else self._dir_attrs(path)

    def _staged_attrs(self, path: str, node: Node) -> PosixAttrs | None:
        """The attributes of `path`'s staged file, its bytes' times included; None once it has landed."""
        dirty = None if self.writes is None else self.writes.dirty(path)
        if dirty is None:
            return None
        try:
            headers = self.writes.upload_metadata(dirty.staged)
        except FileNotFoundError:
            return None
        default = self._default(node)
        return default if headers is None else from_headers(headers, default)

    def _marker(self, path: str) -> str | None:
        """The key of directory `path`'s marker object; None for the root of a bucket."""
        if path:
            return self.bucket.key_of(path) + "/"
        return self.bucket.root_prefix or None

    def _default(self, node: Node) -> PosixAttrs:
        if node.is_dir:
            started = self.defaults.started_ns
            return PosixAttrs(stat.S_IFDIR | self.defaults.dir_mode, self.defaults.uid, self.defaults.gid,
                              started, started, started)
        return self._file_default(node.mtime)

    def _file_default(self, mtime: float) -> PosixAttrs:
        mtime_ns = int(mtime * NS)
        return PosixAttrs(stat.S_IFREG | self.defaults.file_mode, self.defaults.uid, self.defaults.gid,
                          mtime_ns, mtime_ns, mtime_ns)

    def readlink(self, path: str) -> str:
        """A symlink's target: the object's body (s3fs trims surrounding blanks), cached by ETag."""
        node = self.lookup(path)
        if not node.is_link:
            raise StorageError(f"{path}: not a symlink", errno.EINVAL)
        if node.target is not None:
            return node.target
        if node.obj is None:
            raise StorageError(f"{path}: a symlink with no object", errno.EIO)
        key = (path, node.obj.etag)
        with self._lock:
            target = self._targets.get(key)
        if target is None:
            body = self.store.get_range(node.obj, 0, node.obj.size) if node.obj.size else b""
            target = body.decode("utf-8", "surrogateescape").strip()
            with self._lock:
                self._targets[key] = target
        return target

    def xattrs(self, path: str) -> dict[str, bytes]:
        """The extended attributes but the kernel's (which s3fs may have stored: kept, not shown)."""
        node = self.lookup(path)
        xattrs = {} if node.attrs is None else node.attrs.xattrs
        return {name: value for name, value in xattrs.items() if not name.startswith(KERNEL_XATTR_NAMESPACES)}

    def with_attributes(self, path: str, node: Node) -> Node:
        if node.attrs is not None:
            return node
        try:
            attrs = self.lookup(path).attrs
        except NotFound:  # an open file whose name is gone
            return node
        return node if attrs is None else _typed(node, attrs)

    def open_local(self, path: str) -> FileHandle | None:
        return self.inner.open_local(path)

    # -- changes ------------------------------------------------------------------------------------------
    def _writable(self, path: str) -> WritableBucketTree:
        if self.writes is None:
            raise StorageError(f"{path}: read-only", errno.EROFS)
        return self.writes

    def _changed_here(self, *paths: str) -> None:
        """Forget what is cached of `paths` (changed here)."""
        with self._lock:
            self._changes += 1
            for path in paths:
                self._objects.pop(path, None)
                self._dirs.pop(path, None)

    def open_write(self, path: str, *, truncate: bool, create: bool) -> FileHandle:
        """A staged file carries the attributes of the object it replaces, or a new file's (`created` then
        sets its mode and owner)."""
        writes = self._writable(path)
        try:
            node: Node | None = self.lookup(path)
        except NotFound:
            node = None
            if create:
                self._prepare_parent(path)
        handle = writes.open_write(path, truncate=truncate, create=create, meta=self._rewrite_headers(path, node))
        self._changed_here(path)
        return handle

    def _rewrite_headers(self, path: str, node: Node | None) -> dict[str, str]:
        """The metadata the upload of a file written at `path` (now `node`) starts from: the attributes of the
        object it replaces, with the rest of that object's user metadata (other clients' headers) as a HEAD
        finds it, as s3fs sends back at upload the headers it loaded at open; a new file's attributes."""
        if node is None or node.attrs is None:
            return to_headers(created(NewAttrs(stat.S_IFREG | self.defaults.file_mode, self.defaults.uid,
                                               self.defaults.gid), time.time_ns()))
        if node.obj is None:  # staged: its staged file keeps the metadata it has
            return to_headers(node.attrs)
        try:
            headers = self.store.head_metadata(self.bucket.key_of(path))[1]
        except NotFound:  # deleted meanwhile: nothing else to keep
            headers = {}
        return {**headers, **to_headers(node.attrs)}

    def created(self, path: str, new: NewAttrs) -> None:
        now = time.time_ns()
        mode = stat.S_IFREG | stat.S_IMODE(new.mode)
        self._change_staged(path, lambda attrs: dataclasses.replace(attrs, mode=mode, uid=new.uid, gid=new.gid))
        self._touch_parent(path, now)

    def change_attributes(self, path: str, change: AttrChange) -> None:
        node = self.lookup(path)
        now = time.time_ns()
        if node.is_dir:
            if self._legacy_dir(path):
                self._replace_legacy_dir(path, node, lambda attrs: changed(attrs, change, now), change.written())
            else:
                self._change_dir(path, lambda attrs: changed(attrs, change, now), change.written())
            return
        if node.obj is None and self._change_staged(path, lambda attrs: changed(attrs, change, now),
                                                    mtime_ns=change.mtime_ns):
            return
        self._change_object(path, change, now)

    def _change_staged(self, path: str, change: Callable[[PosixAttrs], PosixAttrs],
                       mtime_ns: int | None = None) -> bool:
        """Change the attributes of `path`'s staged file; False if it has none (any more): its object is in S3."""
        writes = self._writable(path)
        dirty = writes.dirty(path)
        if dirty is None:
            return False
        default = self._default(Node(is_dir=False, mtime=time.time()))

        def changed_headers(meta: dict[str, str] | None) -> dict[str, str]:
            """The staged file's metadata after the change, its other headers kept."""
            if meta is None:
                return to_headers(change(default))
            before = from_headers(meta, default)
            return merged_headers(meta, before, change(before))

        carried = writes.change_staged(dirty, changed_headers, mtime_ns)
        self._changed_here(path)
        return carried

    def _change_object(self, path: str, change: AttrChange, now: int) -> None:
        """Change the attributes of an object in S3: a copy onto itself with its new metadata (server-side),
        based on what a HEAD says it has now."""
        key = self.bucket.key_of(path)
        info, headers = self.store.head_metadata(key)
        before = from_headers(headers, self._file_default(info.mtime))
        attrs = changed(before, change, now)
        landed = self.store.copy_object(key, key, metadata=merged_headers(headers, before, attrs, change.written()))
        self._changed_here(path)
        self.bucket.remember(path, landed)  # a copy may change the ETag: reads pin the new one
        with self._lock:
            self._objects[path] = (landed.etag, attrs)

    def _legacy_dir(self, path: str) -> bool:
        """Whether directory `path` is an object `dir` (zero bytes, Content-Type application/x-directory, as
        s3fs before 1.63 and s3sync made them) rather than a prefix."""
        return not self.inner.lookup(path).is_dir

    def _replace_legacy_dir(self, path: str, node: Node, change: Callable[[PosixAttrs], PosixAttrs] = lambda a: a,
                            written: set[str] | None = None) -> None:
        """Replace legacy `dir` object `path` (looked up as `node`) by a `dir/` marker with its attributes after
        `change`, then delete it, as s3fs replaces one on any change."""
        self._change_dir(path, change, written or set(), node.attrs)
        self._drop_legacy_dir(path)

    def _prepare_parent(self, path: str) -> None:
        """Before creating `path`: a legacy `dir` object as its directory is first replaced by a `dir/` marker
        (its attributes kept): keys under a `dir` object would hide it (the directory wins), and a creation
        changes its directory's times, which s3fs writes by replacing it too."""
        parent = path.rpartition("/")[0]
        if not parent:
            return
        try:
            node = self.lookup(parent)
        except NotFound:
            return  # the creation answers ENOENT
        if node.is_dir and self._legacy_dir(parent):
            self._replace_legacy_dir(parent, node)

    def _drop_legacy_dir(self, path: str) -> None:
        self.store.delete_object(self.bucket.key_of(path))
        self.bucket.forget(path)
        self._changed_here(path)

    def _change_dir(self, path: str, change: Callable[[PosixAttrs], PosixAttrs], written: set[str],
                    current: PosixAttrs | None = None) -> None:
        """Store a directory's changed attributes in its marker object: its user metadata with what changed
        (and the headers in `written`), other clients' kept; a new marker with all of them if it had none."""
        marker = self._marker(path)
        if marker is None:  # the root of a bucket: no marker object to keep them, so until the unmount
            with self._lock:
                self._root = change(self._root or self._default(Node(is_dir=True)))
                self._changes += 1
                self._dirs.pop(path, None)
            return
        before, headers = self._dir_entry(path)
        if headers is None and current is not None:  # no marker: a legacy `dir` object's attributes
            before = current
        after = change(before)
        new = to_headers(after) if headers is None else merged_headers(headers, before, after, written)
        self.store.put_object(marker, b"", metadata=new)
        self._changed_here(path)
        with self._lock:
            self._dirs[path] = (after, new)

    def _touch_parent(self, path: str, now: int) -> None:
        """An entry of `path`'s directory was created, removed or renamed: its mtime and ctime are `now`.  The
        change itself is done: a failure here is logged, not returned."""
        parent = path.rpartition("/")[0]
        if self._marker(parent) is None:
            return
        try:
            self._change_dir(parent, lambda attrs: dataclasses.replace(attrs, mtime_ns=now, ctime_ns=now),
                             {"mtime", "ctime"})
        except StorageError as exc:
            log.warning("%r changed, but the times of its directory were not updated: %s", path, exc)

    def set_xattr(self, path: str, name: str, value: bytes) -> None:
        """ENOTSUP in the kernel's namespaces (cp -p then carries on without the POSIX ACL it tried); EINVAL for
        a name s3fs's format cannot hold (it would be lost at the next read of the object's metadata)."""
        if name.startswith(KERNEL_XATTR_NAMESPACES):
            raise StorageError(f"{path}: {name.partition('.')[0]}.* extended attributes are not kept", errno.ENOTSUP)
        if any(char in name for char in XATTR_NAME_UNSTORABLE):
            raise StorageError(f"{path}: extended attribute name {name!r} cannot be kept in s3fs's format "
                               "(no ',' or '\"')", errno.EINVAL)
        self.change_attributes(path, AttrChange(set_xattr=(name, value)))

    def remove_xattr(self, path: str, name: str) -> None:
        if name not in self.xattrs(path):
            raise StorageError(f"{path}: no extended attribute {name!r}", errno.ENODATA)
        self.change_attributes(path, AttrChange(remove_xattr=name))

    def make_dir(self, path: str, new: NewAttrs) -> None:
        now = time.time_ns()
        attrs = created(NewAttrs(stat.S_IFDIR | stat.S_IMODE(new.mode), new.uid, new.gid), now)
        headers = to_headers(attrs)
        writes = self._writable(path)
        self._prepare_parent(path)
        writes.mkdir(path, metadata=headers)
        self._changed_here(path)
        with self._lock:
            self._dirs[path] = (attrs, headers)
        self._touch_parent(path, now)

    def make_symlink(self, path: str, target: str, new: NewAttrs) -> None:
        """An object whose body is the target, mode S_IFLNK | 0777 (as s3fs makes them)."""
        self._put_new(path, target.encode("utf-8", "surrogateescape"),
                      NewAttrs(stat.S_IFLNK | 0o777, new.uid, new.gid))

    def make_node(self, path: str, new: NewAttrs) -> None:
        """mknod(2): an empty object whose mode says what it is (s3fs keeps no device number)."""
        self._put_new(path, b"", new)

    def _put_new(self, path: str, body: bytes, new: NewAttrs) -> None:
        writes = self._writable(path)
        writes.check_absent(path)
        self._prepare_parent(path)
        writes.check_parent_dir(path)
        now = time.time_ns()
        self.store.put_object(self.bucket.key_of(path), body, metadata=to_headers(created(new, now)))
        self._changed_here(path)
        self.bucket.forget(path)
        self._touch_parent(path, now)

    def link(self, path: str, target: str) -> None:
        raise StorageError(f"{path}: objects cannot be hard links", errno.ENOTSUP)

    def unlink(self, path: str) -> None:
        self._writable(path).unlink(path)
        self._changed_here(path)
        self._touch_parent(path, time.time_ns())

    def rmdir(self, path: str) -> None:
        writes = self._writable(path)
        if self.lookup(path).is_dir and self._legacy_dir(path):
            if self.inner.readdir(path):
                raise StorageError(f"{path}: directory not empty", errno.ENOTEMPTY)
            self.store.delete_object(self.bucket.key_of(path) + "/")
            self._drop_legacy_dir(path)
        else:
            writes.rmdir(path)
        self._changed_here(path)
        self._touch_parent(path, time.time_ns())

    def rename(self, old: str, new: str) -> None:
        """The renamed file keeps its attributes, with ctime now (POSIX: a rename changes the inode)."""
        writes = self._writable(old)
        node = self.lookup(old)
        now = time.time_ns()
        self._prepare_parent(new)
        if node.is_dir:
            self._rename_dir(writes, old, new, now)
        elif node.obj is None or node.attrs is None:  # staged: its file goes to the new key with its attributes
            writes.rename(old, new)
            self._change_staged(new, lambda attrs: dataclasses.replace(attrs, ctime_ns=now))
        else:  # its metadata as a HEAD finds it now, other clients' headers kept, with the new ctime
            info, headers = self.store.head_metadata(self.bucket.key_of(old))
            before = from_headers(headers, self._file_default(info.mtime))
            after = dataclasses.replace(before, ctime_ns=now)
            writes.rename(old, new, metadata=merged_headers(headers, before, after, {"ctime"}))
        self._changed_here(old, new)
        self._touch_parent(old, now)
        if new.rpartition("/")[0] != old.rpartition("/")[0]:
            self._touch_parent(new, now)

    def _rename_dir(self, writes: WritableBucketTree, old: str, new: str, now: int) -> None:
        """Rename a directory as s3fs does: a server-side copy of every object under it, their metadata kept
        (a child's ctime does not change), the directory's marker with ctime `now`, then the old objects
        deleted.  Not atomic: a failure leaves the old directory whole and part of the new one.  EXDEV (mv(1)
        then copies file by file) when a file under it is staged; ENOTEMPTY onto a non-empty directory."""
        if new.startswith(old + "/"):
            raise StorageError(f"{old} -> {new}: a directory cannot be moved into itself", errno.EINVAL)
        if writes.staged_under(old):
            raise StorageError(f"{old}: has files not uploaded yet: not renamed in place", errno.EXDEV)
        legacy_target = self._check_dir_rename_target(writes, new)
        if self._legacy_dir(old):  # its `dir/` marker is what moves
            self._replace_legacy_dir(old, self.lookup(old))
        old_prefix, new_prefix = self.bucket.key_of(old) + "/", self.bucket.key_of(new) + "/"
        attrs, headers = self._dir_entry(old)
        marked = dict(headers or to_headers(attrs), ctime=format_time(now))
        children = [info.key for info in self.store.list_keys(old_prefix) if info.key != old_prefix]
        list(self._pool.map(lambda key: self.store.copy_object(key, new_prefix + key[len(old_prefix):]), children))
        self.store.put_object(new_prefix, b"", metadata=marked)  # over an empty target's marker, if any
        for key in [*children, old_prefix]:
            self.store.delete_object(key)
        if legacy_target:  # replaced by the marker, which would hide it
            self._drop_legacy_dir(new)
        moved = [key[len(old_prefix):] for key in children]
        for path in [old, new, *(f"{old}/{rest.rstrip('/')}" for rest in moved),
                     *(f"{new}/{rest.rstrip('/')}" for rest in moved)]:
            self.bucket.forget(path)
        self._changed_here(old, new, *(f"{old}/{rest.rstrip('/')}" for rest in moved))
        with self._lock:
            self._dirs[new] = (from_headers(marked, attrs), marked)

    def _check_dir_rename_target(self, writes: WritableBucketTree, new: str) -> bool:
        """Before renaming a directory to `new`: ENOTDIR onto a file, ENOTEMPTY onto a non-empty directory.
        Whether `new` is a legacy `dir` object (empty, as keys under it would hide it), which the rename
        replaces."""
        try:
            target = self.lookup(new)
        except NotFound:
            writes.check_parent_dir(new)
            return False
        if not target.is_dir:
            raise StorageError(f"{new}: not a directory", errno.ENOTDIR)
        if self.inner.readdir(new):
            raise StorageError(f"{new}: directory not empty", errno.ENOTEMPTY)
        return self._legacy_dir(new)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.inner.close()


def _typed(node: Node, attrs: PosixAttrs) -> Node:
    """`node` with `attrs`, which say what it is: a directory stays one (whatever its marker says); an
    object whose mode says directory is one (s3fs before 1.63 made `dir` objects for directories)."""
    if node.is_dir:
        attrs = dataclasses.replace(attrs, mode=stat.S_IFDIR | stat.S_IMODE(attrs.mode))
        return dataclasses.replace(node, attrs=attrs, mtime=attrs.mtime_ns / NS)
    if stat.S_ISDIR(attrs.mode):
        return Node(is_dir=True, mtime=attrs.mtime_ns / NS, attrs=attrs)
    return dataclasses.replace(node, attrs=attrs, mtime=attrs.mtime_ns / NS)
