"""A package draft as a writable directory (`.packages/NS/NAME/draft/`), over its parent revision.

Unchanged files are the parent's rows, read lazily from their physical keys (nothing is copied when a draft
opens); new and changed files are staged in the draft (fs/draft.py), written through the same handles as
the bucket's (`WriteHandle` over a `DirtyFile`), but never uploaded on close: they stay until a commit.  A
new file written in order sends its parts while it is written, to a multipart upload that only the commit
completes (`Draft.stream_parts`).  Directories exist as long as something is under them; `mkdir` makes empty
ones for this mount's life (a package has no empty directories), `rmdir` hides an emptied one.

Extended attributes: `user.quilt.parent` (the parent's top hash, empty for a new package) and
`user.quilt.user_meta` on the draft, `user.quilt.meta` (the entry's whole `meta` object) on its files; setting
the last two changes what the commit publishes.  `user.quilt.commit` set on the draft to the commit's options
(JSON) commits it, in the daemon; `user.quilt.commit_result` then holds the outcome (JSON), which is how
`quiltmount packages commit` reports errors in words.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from quiltmount.errors import NotFound, QuiltmountError, StorageError
from quiltmount.fs.dirty import DirtyFile
from quiltmount.fs.draft import Draft, commit_draft
from quiltmount.fs.draftrecord import (
    CHANGE_XATTR, COMMIT_PROGRESS_XATTR, COMMIT_RESULT_XATTR, COMMIT_XATTR, PACKAGE_XATTR, PARENT_XATTR, DraftError,
)
from quiltmount.fs.handles import WriteHandle
from quiltmount.fs.node import Node, Tree
from quiltmount.fs.partstream import PartStreams
from quiltmount.fs.staging import OPEN, copy_in
from quiltmount.keep import KEEP
from quiltmount.packages.commit import CommitProgress, Committed, PackageConflict, upload_key
from quiltmount.packages.registry import Registry
from quiltmount.posixmeta import NewAttrs

log = logging.getLogger(__name__)

#: Seconds a commit waits for the release of a file its writer has closed (see `DraftTree._open_for_writing`).
RELEASE_WAIT = 2.0

ParentTree = Callable[[str], Tree]  # top hash -> that revision's tree
#: A revision of the draft's package, spelled as a top hash, a unique prefix of one or a pointer name -> its top
#: hash (NotFound if there is none).
Resolve = Callable[[str], str]


class DraftTree(Tree):
    """The draft of one package; `parent_tree(top_hash)` opens a revision of its registry."""

    def __init__(self, draft: Draft, registry: Registry, parent_tree: ParentTree, resolve: Resolve, *,
                 mtime: float, on_commit: Callable[[str, Committed], None]) -> None:
        """`on_commit(package, committed)`: the draft was committed as `committed.top_hash` (which `latest`
        and `committed.pointer` name in the registry now, unless the commit was deduplicated: no pointer)."""
        self.draft = draft
        self.registry = registry
        draft.stream_parts(PartStreams(registry.store, draft.staging),
                           lambda key: upload_key(registry, draft.package, key))
        self._parent_tree = parent_tree
        self._resolve = resolve
        self._on_commit = on_commit
        self._dir_node = Node(is_dir=True, mtime=mtime)
        self._lock = threading.Lock()  # guards `_dirty` and the writer counts; commits hold `_committing`
        self._committing = threading.Lock()
        self._dirty: dict[str, DirtyFile] = {}
        self._result: dict[str, Any] | None = None
        self._progress: dict[str, Any] | None = None  # of the commit running now
        self._parent_user_meta: tuple[str, Any] | None = None  # (top hash, its header's user_meta)

    # -- the parent ------------------------------------------------------------------------------------
    def _parent(self) -> Tree | None:
        return None if self.draft.parent is None else self._parent_tree(self.draft.parent)

    def _parent_node(self, path: str) -> Node | None:
        parent = self._parent()
        if parent is None:
            return None
        try:
            return parent.lookup(path)
        except NotFound:
            return None

    def _in_parent(self, path: str) -> bool:
        node = self._parent_node(path)
        return node is not None and not node.is_dir

    def _parent_meta(self, path: str) -> Any:
        parent = self._parent()
        raw = parent.xattrs(path).get("user.quilt.meta") if parent is not None else None
        return json.loads(raw) if raw else {}

    def _shown_meta(self, path: str) -> Any:
        """The `meta` the entry at `path` shows now."""
        meta = self.draft.meta(path)
        if meta is not KEEP:
            return meta
        source = self.draft.source_of(path)
        if source is not None or self.draft.staged(path) is not None:
            return self._parent_meta(source or path) if self._in_parent(source or path) else {}
        return {}

    # -- reading --------------------------------------------------------------------------------------------
    def _staged_node(self, path: str) -> Node | None:
        staged = self.draft.staged(path)
        if staged is None:
            return None
        try:
            st = os.stat(self.draft.staging.data_path(staged))
        except FileNotFoundError:  # removed behind the daemon's back: shown empty, so that `rm` can drop it
            log.warning("draft %s: %r: its staged bytes are gone", self.draft.package, path)
            return Node(is_dir=False, size=0, mtime=self._dir_node.mtime)
        return Node(is_dir=False, size=st.st_size, mtime=st.st_mtime)

    def _is_dir(self, path: str) -> bool:
        made, removed = self.draft.directories()
        if path == "" or path in made:
            return True
        prefix = path + "/"
        if any(key.startswith(prefix) for key in self.draft.added_keys()):
            return True
        node = self._parent_node(path)
        return node is not None and node.is_dir and path not in removed

    def lookup(self, path: str) -> Node:
        if path == "":  # the draft itself: its parent revision need not be opened (after a commit, indexed) for it
            return self._dir_node
        node = self._staged_node(path)
        if node is not None:
            return node
        source = self.draft.source_of(path)
        if source is not None:
            node = self._parent_node(source)
            if node is not None and not node.is_dir:
                return node
        if self._is_dir(path):
            return self._dir_node
        raise NotFound(path)

    def readdir(self, path: str) -> dict[str, Node]:
        if not self.lookup(path).is_dir:
            raise StorageError(f"{path}: not a directory", errno.ENOTDIR)
        prefix = path + "/" if path else ""
        entries: dict[str, Node] = {}
        parent = self._parent()
        parent_node = self._parent_node(path) if path else self._dir_node
        made, removed = self.draft.directories()
        if parent is not None and parent_node is not None and parent_node.is_dir:
            for name, node in parent.readdir(path).items():
                child = prefix + name
                if node.is_dir:
                    if child not in removed:
                        entries[name] = self._dir_node
                elif self.draft.source_of(child) == child:
                    entries[name] = node
        for key in self.draft.added_keys():
            if key.startswith(prefix):
                name, below, _ = key[len(prefix):].partition("/")
                entries[name] = self._dir_node if below else self.lookup(key)
        for directory in made:
            if directory.startswith(prefix) and "/" not in directory[len(prefix):]:
                entries[directory[len(prefix):]] = self._dir_node
        return dict(sorted(entries.items()))

    def xattrs(self, path: str) -> dict[str, bytes]:
        node = self.lookup(path)
        if path == "":
            user_meta = self.draft.user_meta
            if user_meta is KEEP:
                user_meta = self._user_meta_of_parent()
            found = {PACKAGE_XATTR: self.draft.package.encode(), PARENT_XATTR: (self.draft.parent or "").encode(),
                     "user.quilt.user_meta": _json(user_meta)}
            if self._result is not None:
                found[COMMIT_RESULT_XATTR] = _json(self._result)
            if self._progress is not None:
                found[COMMIT_PROGRESS_XATTR] = _json(self._progress)
            return found
        if node.is_dir:
            return {}
        found = {"user.quilt.meta": _json(self._shown_meta(path))}
        if self.draft.staged(path) is not None:  # for `packages diff`: new bytes of a parent key, or a new key
            found[CHANGE_XATTR] = b"M" if self._in_parent(path) else b"A"
        return found

    def _user_meta_of_parent(self) -> Any:
        """The parent's header `user_meta`, kept: a commit knows it already, and the new revision then need not
        be read (indexed whole) just to show it."""
        top_hash = self.draft.parent
        if top_hash is None:  # a new package, whose header will have none: quilt3's Package().meta
            return {}
        known = self._parent_user_meta
        if known is not None and known[0] == top_hash:
            return known[1]
        user_meta = json.loads(self._parent_tree(top_hash).xattrs("").get("user.quilt.user_meta") or b"null")
        self._parent_user_meta = (top_hash, user_meta)
        return user_meta

    def open_local(self, path: str) -> WriteHandle | None:
        """Staged bytes are read from the draft; a parent row is read by the FUSE adapter (None)."""
        with self._lock:
            dirty = self._dirty.get(path)
        if dirty is None:
            staged = self.draft.staged(path)
            if staged is None:
                source = self.draft.source_of(path)
                parent = self._parent()
                if source is not None and parent is not None and self._in_parent(source):
                    parent.open_local(source)  # refuses what must not be read (local files of S3 registries)
                return None
            if not os.path.exists(self.draft.staging.data_path(staged)):
                raise StorageError(f"{path}: its staged bytes are gone (remove it or write it again)", errno.EIO)
            dirty = self._dirty_file(path, staged, writers=0)
        return WriteHandle(dirty, self._sync, writable=False)

    # -- writing --------------------------------------------------------------------------------------------
    def _dirty_file(self, path: str, staged: Any, *, writers: int) -> DirtyFile:
        return DirtyFile(path, staged, self.draft.staging, self.draft.streams, self._lock, self._released,
                         writers=writers)

    def open_write(self, path: str, *, truncate: bool, create: bool) -> WriteHandle:
        # Under `_committing`: a commit takes the draft's changes whole, so no file starts changing during one.
        with self._committing:
            with self._lock:
                dirty = self._dirty.get(path)
                if dirty is not None:
                    dirty.writers += 1
            if dirty is None:
                dirty = self._first_writer(path, truncate=truncate, create=create)
        handle = WriteHandle(dirty, self._sync, writable=True)
        if truncate:
            handle.truncate(0)
        return handle

    def _first_writer(self, path: str, *, truncate: bool, create: bool) -> DirtyFile:
        """The file's staged bytes for its first writer: staged before, or staged now (a copy of the bytes it
        showed unless truncating)."""
        node = self.replaced_by_write(path, create=create)
        staged = self.draft.staged(path)
        if staged is None or truncate:
            source = self.draft.source_of(path)
            meta = self._shown_meta(path) if source is not None and source != path else KEEP
            staged = self.draft.write(path, meta_shown=meta)
            if truncate or node is None:
                self.draft.start_stream(staged)
            elif node.obj is not None:
                copy_in(node.store, node.obj, self.draft.staging.data_path(staged))
        dirty = self._dirty_file(path, staged, writers=1)
        with self._lock:
            self._dirty[path] = dirty
        return dirty

    def _released(self, dirty: DirtyFile) -> None:
        """The last writer closed it: the bytes stay staged (the journal says `closed`) until a commit."""
        if dirty.write_error is not None:
            log.error("draft %s: %r: a write failed (%s); the staged bytes are kept as they are",
                      self.draft.package, dirty.path, dirty.write_error)
            self.draft.drop_stream(dirty.staged)
        with self._lock:
            if self._dirty.get(dirty.path) is dirty and dirty.writers == 0:
                del self._dirty[dirty.path]

    def _sync(self, dirty: DirtyFile, *, writer_open: bool) -> None:
        """fsync: the handle made the bytes durable on the local disk, which is where a draft keeps them."""

    def unlink(self, path: str) -> None:
        if self.lookup(path).is_dir:
            raise StorageError(f"{path}: is a directory", errno.EISDIR)
        with self._committing:
            self.draft.remove(path, in_parent=self._in_parent(path))

    def mkdir(self, path: str) -> None:
        self.check_absent(path)
        self.check_parent_dir(path)
        with self._committing:
            self.draft.make_dir(path)

    def rmdir(self, path: str) -> None:
        if not self.lookup(path).is_dir:
            raise StorageError(f"{path}: not a directory", errno.ENOTDIR)
        if self.readdir(path):
            raise StorageError(f"{path}: directory not empty", errno.ENOTEMPTY)
        parent_node = self._parent_node(path)
        with self._committing:
            self.draft.remove_dir(path, in_parent=parent_node is not None and parent_node.is_dir)

    def rename(self, old: str, new: str) -> None:
        self.check_file_rename(old, new)
        with self._committing:
            meta = self._shown_meta(old)
            self.draft.rename(old, new, old_in_parent=self._in_parent(old), new_in_parent=self._in_parent(new),
                              meta_shown=meta)
            with self._lock:
                dirty = self._dirty.pop(old, None)
                if dirty is not None:
                    dirty.path = new
                    self._dirty[new] = dirty

    def symlink(self, path: str, target: str) -> None:
        """EPERM, symlink(2)'s answer where a filesystem makes no symlinks (not EROFS: the draft is writable);
        quilt3's `set_dir` stores what a link points to, which `cp -L` and `rsync -L` copy."""
        raise StorageError(f"{path}: a package holds files and directories only, not symlinks (cp -L and "
                           "rsync -L copy what a link points to)", errno.EPERM)

    def make_node(self, path: str, new: NewAttrs) -> None:
        """EPERM, mknod(2)'s answer for a kind of node a filesystem does not make."""
        raise StorageError(f"{path}: a package holds files and directories only", errno.EPERM)

    def link(self, path: str, target: str) -> None:
        """ENOTSUP, as in the bucket (and s3fs): an entry is one file."""
        raise StorageError(f"{path}: package entries cannot be hard links", errno.ENOTSUP)

    def set_attributes(self, path: str) -> None:
        self.lookup(path)

    def set_xattr(self, path: str, name: str, value: bytes) -> None:
        node = self.lookup(path)
        if name == COMMIT_XATTR and path == "":
            self._commit(_parse_json(value, name))
        elif name == PARENT_XATTR and path == "":
            self._start_from(value.decode("utf-8", "replace").strip())
        elif name == "user.quilt.user_meta" and path == "":
            user_meta = _parse_json(value, name)
            with self._committing:
                self.draft.set_user_meta(user_meta)
        elif name == "user.quilt.meta" and not node.is_dir:
            meta = _parse_json(value, name)
            if not isinstance(meta, dict):
                raise StorageError(f"{path}: user.quilt.meta must be a JSON object", errno.EINVAL)
            with self._committing:
                self.draft.set_meta(path, meta)
        else:
            raise StorageError(f"{path}: {name} cannot be set here", errno.ENOTSUP)

    def _start_from(self, spelled: str) -> None:
        """`setfattr -n user.quilt.parent -v HASH|POINTER` on an unchanged draft: start it from that revision."""
        try:
            top_hash = self._resolve(spelled)
        except NotFound:
            raise StorageError(f"{self.draft.package}: no revision {spelled!r}", errno.EINVAL) from None
        with self._committing:
            try:
                self.draft.rebase(top_hash)
            except DraftError as exc:
                raise StorageError(f"draft of {self.draft.package}: {exc}", errno.EBUSY) from None
        log.info("draft of %s now starts from %s", self.draft.package, top_hash)

    # -- committing -------------------------------------------------------------------------------------
    def _commit(self, options: Any) -> None:
        """Publish the draft with `options` (message, meta, workflow, force, dedupe); the outcome is kept in
        `user.quilt.commit_result`, and a failure is also the setxattr's errno."""
        if not isinstance(options, dict):
            raise StorageError("commit options must be a JSON object", errno.EINVAL)
        with self._committing:
            writing = self._open_for_writing()
            try:
                if writing:
                    raise QuiltmountError(f"{len(writing)} file(s) of the draft are open for writing "
                                          f"(e.g. {writing[0]}): close them first")
                done = commit_draft(self.draft, self.registry, message=options.get("message"),
                                    user_meta=options.get("meta", KEEP), workflow=options.get("workflow", ...),
                                    force=bool(options.get("force")), dedupe=bool(options.get("dedupe")),
                                    progress=self._report_progress)
            except PackageConflict as exc:
                self._result = {"error": str(exc)}
                raise StorageError(str(exc), errno.EBUSY) from None
            except (QuiltmountError, OSError) as exc:
                self._result = {"error": str(exc)}
                raise StorageError(f"commit of the draft of {self.draft.package}: {exc}", errno.EIO) from None
            finally:
                self._progress = None
            self._result = {"package": self.draft.package, "top_hash": done.top_hash, "pointer": done.pointer,
                            "entries": done.entries}
            self._parent_user_meta = (done.top_hash, done.user_meta)
        log.info("draft of %s committed: %s (%s)", self.draft.package, done.top_hash, done.pointer or "deduped")
        self._on_commit(self.draft.package, done)

    def _open_for_writing(self) -> list[str]:
        """The files of the draft a writer still holds open.  A file whose writer closed it (its journal says
        closed) but whose release has not come yet is waited for, up to RELEASE_WAIT seconds: the kernel sends
        the release after close(2) has returned.  If it does not come, a copy of the descriptor is still open
        (one of several closed: bash's `exec 3>file`, a forked child) and that writer could still write."""
        deadline = time.monotonic() + RELEASE_WAIT
        while True:
            with self._lock:
                writing = sorted(path for path, dirty in self._dirty.items()
                                 if dirty.writers > 0 or dirty.staged.state == OPEN)
                closing = all(self._dirty[path].staged.state != OPEN for path in writing)
            if not writing or not closing or time.monotonic() >= deadline:
                return writing
            time.sleep(0.01)

    def _report_progress(self, progress: CommitProgress) -> None:
        self._progress = dataclasses.asdict(progress)

    def stats(self) -> dict[str, Any]:
        return self.draft.summary()

    def close(self) -> None:
        self.draft.close()


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _parse_json(value: bytes, name: str) -> Any:
    try:
        return json.loads(value, parse_constant=_refuse_constant)
    except ValueError:
        raise StorageError(f"{name}: the value is not JSON", errno.EINVAL) from None


def _refuse_constant(name: str) -> Any:
    """`NaN`, `Infinity` and `-Infinity`, which Python's parser takes but JSON has not (no manifest can hold
    them: the commit would fail)."""
    raise ValueError(f"{name} is not JSON")
