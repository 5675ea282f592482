"""Quilt packages as directories (no FUSE here).

```
.packages/<namespace>/<name>/            a package: its pointer files, shown as symlinks
.packages/<namespace>/<name>/latest      -> @<top_hash>
.packages/<namespace>/<name>/<seconds>   -> @<top_hash>
.packages/<namespace>/<name>/@<hash>     a revision's logical tree (any unique prefix of 6+ characters);
                                         found by lookup, never listed, so find and rm -r stay out of it
.packages/<namespace>/<name>/draft/      the package's draft, if it has one (fs/drafttree.py): `mkdir` makes
                                         it from `latest`, `rm -r` discards it, a commit publishes it
```

Revisions are immutable: a `RevisionTree` answers from the revision's on-disk index, built once per user
from the (hash-verified) manifest and shared by every mount (`packages.index`).
Deleting pointers goes through `Registry`, with quilt3's semantics; manifests and data are never deleted.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from cachetools import LRUCache, TTLCache

from quiltmount.errors import AccessDenied, NotFound, StorageError, UserError
from quiltmount.fs.draft import Draft
from quiltmount.fs.draftrecord import DRAFT_FILE
from quiltmount.fs.drafttree import DraftTree
from quiltmount.fs.node import FileHandle, Node, Tree
from quiltmount.names import (
    PACKAGE_DRAFT, REVISION_PREFIX, invalid_path_reason, is_settable_pointer_name, is_shown_pointer_name,
    is_timestamp_pointer, split_package_spec,
)
from quiltmount.packages.commit import Committed
from quiltmount.packages.index import (
    ROOT_ID, IndexUnusable, RevisionChange, RevisionIndex, Row, derive_index, index_name, open_or_build,
)
from quiltmount.packages.manifest import ManifestError, is_top_hash, package_meta, parse_physical_key, short_repr
from quiltmount.packages.registry import LATEST, InvalidPointer, Registry, is_pointer_name, is_valid_package_name
from quiltmount.paths import make_private_dir
from quiltmount.posixmeta import NewAttrs
from quiltmount.storage.base import ObjectInfo
from quiltmount.storage.stores import StoreSet

log = logging.getLogger(__name__)

#: A package's draft; a pointer of that name (quilt3 writes none) is not shown.
DRAFT = PACKAGE_DRAFT
MIN_HASH_PREFIX = 6
#: Seconds between two progress lines while a revision is indexed.
PROGRESS_INTERVAL = 2.0
#: Packages whose pointer lists (and resolved hash prefixes) are kept between lookups; the rest are read again.
KEPT_PACKAGES = 4096
#: Commits of this mount whose new revision's index waits to be made from the parent's, at most; and the most
#: changed keys such a commit may have (a bigger one is as quick to index from its manifest, and is not kept).
KEPT_COMMITS = 8
#: Longest timestamp pointer name shown as its symlink's mtime (10 digits: until the year 2286).
MAX_TIMESTAMP_DIGITS = 10
MAX_DERIVED_CHANGE = 10_000
T = TypeVar("T")


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _pointer_order(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Pointer name -> top hash: timestamps ascending (numerically: shorter first), other names (tags) sorted,
    then `latest`."""
    def key(pair: tuple[str, str]) -> tuple[bool, bool, int, str]:
        pointer = pair[0]
        timestamp = is_timestamp_pointer(pointer)
        return pointer == LATEST, not timestamp, len(pointer) if timestamp else 0, pointer

    return dict(sorted(pairs, key=key))


class RevisionTree(Tree):
    """One package revision's logical tree, answered from its on-disk index (`packages.index`): sizes and
    hashes from the manifest, bytes from physical keys.  Memory stays bounded whatever the revision's size:
    nodes recently looked up are kept in a small LRU, listings are read from the index page by page.

    Entries whose logical key has a component the kernel cannot show (over 255 bytes) are left out of the
    index, with a log line.  Unless `local_files`, entries stored as local files (`file://`) are listed but
    cannot be opened (EACCES): a manifest in a bucket must not make the daemon read whatever local file it
    names.
    """

    def __init__(self, index: RevisionIndex, stores: StoreSet, mtime: float, *, local_files: bool = True,
                 node_cache_size: int = 2048) -> None:
        self.index = index
        self.top_hash = index.top_hash
        self.mtime = mtime
        self.stores = stores
        self.local_files = local_files
        self._dir_node = Node(is_dir=True, mtime=mtime)
        self._lock = threading.Lock()
        self._found: LRUCache[str, tuple[int, Row, Node]] = LRUCache(node_cache_size)
        self.broken = False

    # -- index rows -------------------------------------------------------------------------------------
    def _query(self, call: Callable[[], T]) -> T:
        """`call()`; an index found corrupt is deleted (the next mount rebuilds it) and the call fails (EIO)."""
        try:
            return call()
        except IndexUnusable as exc:
            self.broken = True
            log.error("revision %s: %s; the index is deleted, to be rebuilt", self.top_hash, exc)
            self.index.discard()
            raise

    def _find(self, path: str) -> tuple[int, Row, Node]:
        """(id, row, node) of `path` (not ''); raises NotFound."""
        with self._lock:
            found = self._found.get(path)
        if found is not None:
            return found
        parent_path, _, name = path.rpartition("/")
        parent = self._find(parent_path)[0] if parent_path else ROOT_ID
        child = self._query(lambda: self.index.child(parent, name))
        if child is None:
            raise NotFound(path)
        row_id, row = child
        found = (row_id, row, self._dir_node if row.is_dir else self._file_node(row))
        with self._lock:
            self._found[path] = found
        return found

    def _dir_id(self, path: str) -> int:
        if path == "":
            return ROOT_ID
        row_id, row, _ = self._find(path)
        if not row.is_dir:
            raise StorageError(f"{path}: not a directory", errno.ENOTDIR)
        return row_id

    def _file_node(self, row: Row) -> Node:
        if row.physical_key.startswith("s3:"):
            physical = parse_physical_key(row.physical_key)
            obj = ObjectInfo(physical.key, row.size, self.mtime, version_id=physical.s3_version_id,
                             content_hash=":".join(row.hash))
            store = self.stores.bucket(physical.bucket or "")
        elif self.local_files:
            obj = ObjectInfo(parse_physical_key(row.physical_key).path.lstrip("/"), row.size, self.mtime,
                             content_hash=":".join(row.hash))
            store = self.stores.local()
        else:
            return Node(is_dir=False, size=row.size, mtime=self.mtime)
        return Node(is_dir=False, size=row.size, mtime=self.mtime, obj=obj, store=store, expected_hash=row.hash)

    # -- the Tree interface -----------------------------------------------------------------------------
    def open_local(self, path: str) -> None:
        """Refuse entries that must not be read; every other file is read by the FUSE adapter (None)."""
        _, row, node = self._find(path)
        if not row.is_dir and node.obj is None:
            raise AccessDenied(f"revision {self.top_hash}: {short_repr(path)} cannot be read: its physical key "
                               f"{short_repr(row.physical_key)} is a local file, which only a local registry "
                               "may name")
        return None

    def lookup(self, path: str) -> Node:
        return self._dir_node if path == "" else self._find(path)[2]

    def readdir(self, path: str) -> dict[str, Node]:
        parent = self._dir_id(path)
        files: dict[int, Node] = {}  # one node per size: a listing's nodes only give attributes
        entries: dict[str, Node] = {}
        for name, size in self._query(lambda: list(self.index.children(parent))):
            if size is None:
                entries[name] = self._dir_node
            else:
                node = files.get(size)
                if node is None:
                    node = files[size] = Node(is_dir=False, size=size, mtime=self.mtime)
                entries[name] = node
        return entries

    def xattrs(self, path: str) -> dict[str, bytes]:
        if path == "":
            header = self.index.header
            message = header.get("message")
            return {"user.quilt.top_hash": self.top_hash.encode(),
                    "user.quilt.message": b"" if message is None else str(message).encode("utf-8"),
                    "user.quilt.user_meta": _json(package_meta(header))}
        _, row, _ = self._find(path)
        if row.is_dir:
            meta = self._query(lambda: self.index.dir_meta(path))
            return {} if meta is None else {"user.quilt.meta": meta.encode("utf-8")}
        return {"user.quilt.hash": row.hash_json.encode("utf-8"),
                "user.quilt.physical_key": row.physical_key.encode("utf-8"),
                "user.quilt.meta": row.meta_json.encode("utf-8")}

    def close(self) -> None:
        self.index.close()


class _ProgressLog:
    """Logs an index build's progress (entries/s) every PROGRESS_INTERVAL seconds."""

    def __init__(self, top_hash: str) -> None:
        self.top_hash = top_hash
        self.started = time.monotonic()
        self.next_report = self.started + PROGRESS_INTERVAL

    def __call__(self, entries: int, manifest_bytes: int) -> None:
        now = time.monotonic()
        if now >= self.next_report:
            self.next_report = now + PROGRESS_INTERVAL
            log.info("indexing revision %s: %d entries, %.0f MB of manifest read (%.0f entries/s)",
                     self.top_hash, entries, manifest_bytes / 1e6, entries / (now - self.started))


class PackagesTree(Tree):
    """`.packages/`: every package of a registry, its pointers as symlinks, its revisions by lookup."""

    def __init__(self, registry: Registry, stores: StoreSet, *, index_dir: str, metadata_ttl: float,
                 drafts_dir: str | None = None, revision_cache_size: int = 16,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`drafts_dir`: where this mount keeps package drafts (None: a read-only mount, no drafts)."""
        self.registry = registry
        self.drafts_dir = drafts_dir
        self._drafts: dict[str, DraftTree] = {}  # package -> its open draft
        # Made by mkdir (for `mkdir -p .packages/NS/NEW/draft`) or where a package was removed: until rmdir.
        self._namespaces: set[str] = set()
        self.index_dir = index_dir
        self.stores = stores
        self.ttl = metadata_ttl
        self._clock = clock
        self.started = time.time()
        self._dir_node = Node(is_dir=True, mtime=self.started)
        self._lock = threading.Lock()
        self._packages: tuple[list[str], float] | None = None
        # Namespace -> (its packages, expiry), listed one namespace at a time (`_packages_of`).
        self._namespace_packages: LRUCache[str, tuple[frozenset[str], float]] = LRUCache(KEPT_PACKAGES)
        # (package, pointer) -> (the top hash it names or None, expiry), read one at a time (`_pointer`).
        self._pointers: LRUCache[tuple[str, str], tuple[str | None, float]] = LRUCache(KEPT_PACKAGES)
        self._versions: LRUCache[str, tuple[dict[str, str], float]] = LRUCache(KEPT_PACKAGES)  # -> expiry
        # Revisions committed here whose index is to be made from their parent's: top hash -> what changed.
        self._changes: LRUCache[str, RevisionChange] = LRUCache(KEPT_COMMITS)
        # Each open revision holds an index connection (its page cache) and a node LRU: a few MiB.
        self._revisions: LRUCache[str, RevisionTree] = LRUCache(revision_cache_size)
        self._indexing: dict[str, threading.Lock] = {}  # top hash -> held while one thread opens or builds it
        self._resolved: LRUCache[tuple[str, str], tuple[str, float]] = LRUCache(KEPT_PACKAGES)  # hash prefixes
        self._pending_links: dict[tuple[str, str], str] = {}  # (package, temporary name) -> top hash
        self._emptied: set[str] = set()  # packages whose last pointer was removed here, until rmdir
        # Malformed manifests, so a revision that fails is not downloaded again on every lookup.
        self._broken: TTLCache[str, str] = TTLCache(1024, metadata_ttl if metadata_ttl > 0 else 1e-9, timer=clock)
        self._reported: LRUCache[str, bool] = LRUCache(10_000)

    # -- cached registry reads ------------------------------------------------------------------------
    def _fresh(self, expires: float) -> bool:
        return self._clock() < expires

    def _report(self, message: str) -> None:
        """Log a problem of the registry's content once, not at every listing that meets it."""
        with self._lock:
            if message in self._reported:
                return
            self._reported[message] = True
        log.warning("%s", message)

    def packages(self) -> list[str]:
        with self._lock:
            if self._packages is not None and self._fresh(self._packages[1]):
                return self._packages[0]
        names = [name for name in self.registry.list_packages()
                 if self._showable(f"package {short_repr(name)}", name)]
        with self._lock:
            self._packages = (names, self._clock() + self.ttl)
        return names

    def _showable(self, what: str, path: str) -> bool:
        """False (and a log line naming `what`) when `path` cannot be listed."""
        reason = invalid_path_reason(path)
        if reason:
            self._report(f"skipping {what} of {self.registry.url}: {reason}")
        return reason is None

    def versions(self, name: str) -> dict[str, str]:
        """Pointer name -> top hash, timestamps ascending, tags, then `latest`.  Pointers that do not hold a top
        hash, or whose name the package's directory cannot show, are left out (and logged): the package's other
        revisions stay reachable."""
        with self._lock:
            cached = self._versions.get(name)
            if cached is not None and self._fresh(cached[1]):
                return cached[0]
        pairs = self.registry.list_package_versions(name, on_invalid=lambda exc: self._report(f"skipping {exc}"))
        pairs = [(pointer, top_hash) for pointer, top_hash in pairs
                 if self._showable(f"pointer {short_repr(pointer)} of {name}", pointer)
                 and self._shown_pointer(name, pointer)]
        ordered = _pointer_order(pairs)
        with self._lock:
            self._versions[name] = (ordered, self._clock() + self.ttl)
        return ordered

    def _shown_pointer(self, name: str, pointer: str) -> bool:
        """False (and a log line) for a pointer named as what the package's directory shows in its place."""
        if is_shown_pointer_name(pointer):
            return True
        meaning = "is its draft" if pointer == DRAFT else "names a revision"
        self._report(f"skipping pointer {short_repr(pointer)} of {name} in {self.registry.url}: in the package's "
                     f"directory, that name {meaning}")
        return False

    def _pointer(self, name: str, pointer: str) -> str | None:
        """What one pointer names: from the listed pointers if they are fresh, else with one read (listing them
        reads every pointer of the package), kept as long as a listing."""
        with self._lock:
            cached = self._versions.get(name)
            known = self._pointers.get((name, pointer))
        if cached is not None and self._fresh(cached[1]):
            return cached[0].get(pointer)
        if known is not None and self._fresh(known[1]):
            return known[0]
        try:
            top_hash: str | None = self.registry.read_pointer(name, pointer)
        except NotFound:
            top_hash = None
        except InvalidPointer as exc:  # skipped, as `versions` skips it
            self._report(f"skipping {exc}")
            top_hash = None
        with self._lock:
            self._pointers[(name, pointer)] = (top_hash, self._clock() + self.ttl)
        return top_hash

    def _forget(self, name: str) -> None:
        with self._lock:
            self._versions.pop(name, None)
            for key in [key for key in self._pointers if key[0] == name]:
                del self._pointers[key]
            self._packages = None
            self._namespace_packages.clear()

    def _committed(self, name: str, done: Committed) -> None:
        """A draft of `name` was committed: `done.pointer` and `latest` name `done.top_hash` (no pointer: the
        commit was deduplicated, nothing changed).  What is cached of the package learns it in place (listing
        the pointers again would read every one of them), and the new revision's index will be made from its
        parent's when it is first opened."""
        top_hash, change = done.top_hash, done.change
        with self._lock:
            if change is not None and len(change.removed) + len(change.meta) + len(change.added) <= MAX_DERIVED_CHANGE:
                self._changes[top_hash] = change
            cached = self._versions.get(name)
            if cached is not None and done.pointer is not None:
                pairs = {**cached[0], done.pointer: top_hash, LATEST: top_hash}
                self._versions[name] = (_pointer_order(pairs.items()), cached[1])
            if done.pointer is not None:
                for pointer in (done.pointer, LATEST):
                    self._pointers[(name, pointer)] = (top_hash, self._clock() + self.ttl)
            namespace = name.partition("/")[0]
            known = self._namespace_packages.get(namespace)
            if known is not None:  # it has pointers now (a new package too)
                self._namespace_packages[namespace] = (known[0] | {name}, known[1])
            if self._packages is not None and name not in self._packages[0]:
                self._packages = None  # a new package: listed again, in the registry's order

    def revision(self, name: str, spelled: str) -> RevisionTree:
        """The revision named by `@<hash or unique prefix>` (any manifest of the registry)."""
        top_hash = self._resolve(name, spelled)
        tree = self._cached_revision(top_hash)
        if tree is not None:
            return tree
        with self._lock:
            opening = self._indexing.setdefault(top_hash, threading.Lock())
        with opening:  # one thread opens or builds an index; the others wait for it
            tree = self._cached_revision(top_hash)
            if tree is None:
                tree = self._open_revision(name, top_hash)
        with self._lock:
            self._indexing.pop(top_hash, None)
        return tree

    def revision_for_spec(self, spec: str) -> RevisionTree:
        """`ns/name` (latest), `ns/name@<hash or prefix>` or `ns/name:<pointer>` -> that revision's tree.
        An invalid name, or a package or pointer the registry does not have, is a `UserError`; a revision
        that cannot be opened raises what `revision` raises."""
        try:
            name, spelled, pointer = split_package_spec(spec)
        except ValueError as exc:
            raise UserError(f"invalid package {spec!r}: {exc}") from None
        if not is_valid_package_name(name):
            raise UserError(f"invalid package name: {name!r} (expected namespace/name)")
        if spelled is None:
            pointer = pointer or LATEST
            top_hash = self._pointer(name, pointer)
            if top_hash is None:
                pointers = self.registry.pointer_files(name)
                if pointer in pointers:
                    raise UserError(f"pointer {pointer!r} of package {name} holds no top hash")
                raise UserError(f"package {name} has no pointer {pointer!r}" if pointers
                                else f"package not found: {name} in {self.registry.url}")
            spelled = top_hash
        return self.revision(name, spelled)

    def _cached_revision(self, top_hash: str) -> RevisionTree | None:
        with self._lock:
            tree = self._revisions.get(top_hash)
            if tree is not None and tree.broken:
                del self._revisions[top_hash]
                tree = None
            broken = self._broken.get(top_hash)
        if broken is not None:
            raise StorageError(broken, errno.EIO)
        return tree

    def _open_revision(self, name: str, top_hash: str) -> RevisionTree:
        try:
            index = self._open_index(top_hash)
        except NotFound:
            log.warning("package %s: manifest %s is missing (a dangling pointer)", name, top_hash)
            raise
        except ManifestError as exc:  # the file system layer logs the reason with each failing call
            message = f"revision {top_hash} of {name}: {exc}"
            with self._lock:
                self._broken[top_hash] = message
            raise StorageError(message, errno.EIO) from None
        published = self.started if index.published is None else index.published  # (an index from before)
        tree = RevisionTree(index, self.stores, published, local_files=self.registry.is_local)
        with self._lock:
            self._revisions[top_hash] = tree
        return tree

    def _open_index(self, top_hash: str) -> RevisionIndex:
        make_private_dir(self.index_dir)
        path = os.path.join(self.index_dir, index_name(self.registry.url, top_hash))
        manifest_url = self.registry.manifest_url(top_hash)
        with self._lock:
            change = self._changes.pop(top_hash, None)
        if change is not None and not os.path.exists(path):
            self._derive_index(path, top_hash, manifest_url, change)
        return open_or_build(path, lambda: self.registry.open_manifest(top_hash), top_hash=top_hash,
                             manifest_url=manifest_url, progress=_ProgressLog(top_hash),
                             manifest_etag=lambda: self.registry.manifest_etag(top_hash))

    def _derive_index(self, path: str, top_hash: str, manifest_url: str, change: RevisionChange) -> None:
        """Make the index at `path` of revision `top_hash`, which this mount committed, from its parent's, if
        that one is there and sound; otherwise (logged) it is built from the manifest as any other.  A parent
        this mount committed too and nobody opened since is made first, the same way."""
        parent_path = os.path.join(self.index_dir, index_name(self.registry.url, change.parent))
        with self._lock:
            parent_change = self._changes.pop(change.parent, None)
        parent_url = self.registry.manifest_url(change.parent)
        if parent_change is not None and not os.path.exists(parent_path):
            self._derive_index(parent_path, change.parent, parent_url, parent_change)
        started = time.monotonic()
        try:
            RevisionIndex(parent_path, top_hash=change.parent, manifest_url=parent_url).close()  # checked
            entries = derive_index(path, parent_path, change, top_hash=top_hash, manifest_url=manifest_url)
        except (ManifestError, OSError, sqlite3.Error) as exc:
            log.info("revision %s: not made from its parent's index (%s): indexing its manifest", top_hash, exc)
            return
        except Exception:  # a fault of the derivation must not cost the revision: the manifest makes it too
            log.exception("revision %s: making its index from its parent's failed: indexing its manifest", top_hash)
            return
        log.info("indexed revision %s from its parent's index: %d entries in %.2f s", top_hash, entries,
                 time.monotonic() - started)

    def index_stats(self) -> list[dict[str, object]]:
        """The indexes of the revisions open now (for `status`)."""
        with self._lock:
            trees = list(self._revisions.values())
        return [{"top_hash": tree.top_hash, "entries": tree.index.entries, "path": tree.index.path,
                 "disk_bytes": tree.index.disk_bytes} for tree in trees]

    def _resolve(self, name: str, spelled: str) -> str:
        spelled = spelled.lower()
        if is_top_hash(spelled):
            return spelled
        if len(spelled) < MIN_HASH_PREFIX or any(c not in "0123456789abcdef" for c in spelled):
            raise NotFound(f"@{spelled}: not a top hash or a prefix of 6+ hex digits")
        key = (name, spelled)
        with self._lock:
            cached = self._resolved.get(key)
            if cached is not None and self._fresh(cached[1]):
                return cached[0]
        try:
            top_hash = self.registry.resolve_hash(name, spelled)
        except UserError as exc:  # zero or several matches
            raise NotFound(f"@{spelled}: {exc}") from None
        with self._lock:
            self._resolved[key] = (top_hash, self._clock() + self.ttl)
        return top_hash

    # -- paths ------------------------------------------------------------------------------------------
    def _route(self, path: str) -> tuple[list[str], Tree | None, str]:
        """Split `path`; for paths inside a revision or a draft, also return its tree and the path inside it."""
        parts = path.split("/") if path else []
        if len(parts) >= 3 and parts[2].startswith(REVISION_PREFIX):
            name = f"{parts[0]}/{parts[1]}"
            if not self._package_known(name):
                raise NotFound(path)
            return parts, self.revision(name, parts[2][1:]), "/".join(parts[3:])
        if len(parts) >= 3 and parts[2] == DRAFT:
            draft = self._draft(f"{parts[0]}/{parts[1]}")
            if draft is None:
                raise NotFound(path)
            return parts, draft, "/".join(parts[3:])
        return parts, None, ""

    # -- drafts -------------------------------------------------------------------------------------------
    def _draft_dir(self, name: str) -> str | None:
        return None if self.drafts_dir is None else os.path.join(self.drafts_dir, *name.split("/"))

    def _draft(self, name: str) -> DraftTree | None:
        """The draft of package `name`, opened from disk on first use (one left by an earlier mount too)."""
        if not is_valid_package_name(name):
            return None
        with self._lock:
            tree = self._drafts.get(name)
        directory = self._draft_dir(name)
        if tree is not None or directory is None or not os.path.exists(os.path.join(directory, DRAFT_FILE)):
            return tree
        return self._keep_draft(name, Draft.open(directory))

    def _keep_draft(self, name: str, draft: Draft) -> DraftTree:
        tree = DraftTree(draft, self.registry, lambda top_hash: self.revision(name, top_hash),
                         lambda spelled: self._resolve_for_draft(name, spelled), mtime=time.time(),
                         on_commit=self._committed)
        with self._lock:
            kept = self._drafts.setdefault(name, tree)
        if kept is not tree:  # opened by another thread meanwhile
            draft.close()
        return kept

    def _resolve_for_draft(self, name: str, spelled: str) -> str:
        """The top hash of a revision of `name` named by a pointer, or by a top hash or a unique prefix of one;
        its manifest must be readable (the draft shows it at once)."""
        top_hash = self._pointer(name, spelled) if is_pointer_name(spelled) else None
        return self.revision(name, top_hash or spelled).top_hash

    def make_draft(self, name: str, path: str, *, from_revision: str | None = None) -> None:
        """Open a draft of package `name` (at `path`, for errors) from revision `from_revision` (a top hash;
        default: `latest`, or nothing for a new package)."""
        directory = self._draft_dir(name)
        if directory is None:
            raise StorageError(f"{path}: read-only mount", errno.EROFS)
        if self._draft(name) is not None:
            raise StorageError(f"{path}: exists", errno.EEXIST)
        parent = from_revision or self._pointer(name, LATEST)
        make_private_dir(os.path.dirname(directory))
        self._keep_draft(name, Draft.create(directory, package=name, registry=self.registry.url, parent=parent))
        log.info("package %s: draft opened from %s", name, parent or "nothing (a new package)")

    def _discard_draft(self, name: str, path: str) -> None:
        tree = self._draft(name)
        if tree is None:
            raise NotFound(path)
        if tree.readdir(""):
            raise StorageError(f"{path}: the draft is not empty", errno.ENOTEMPTY)
        with self._lock:
            self._drafts.pop(name, None)
        tree.draft.discard()
        log.info("package %s: draft discarded", name)

    def draft_stats(self) -> list[dict[str, object]]:
        """The drafts open in this mount (for `status`)."""
        with self._lock:
            trees = list(self._drafts.values())
        return [tree.stats() for tree in trees]

    def _package_known(self, name: str) -> bool:
        return is_valid_package_name(name) and (name in self._emptied or name in self._draft_packages()
                                                or name in self._packages_of(name.partition("/")[0]))

    def _packages_of(self, namespace: str) -> frozenset[str]:
        """The packages of `namespace` in the registry: from the listed packages while they are fresh, else
        one listing of that namespace alone (kept as long).  A lookup must not list the registry's every
        pointer, which `packages()` does (quilt3's `list_packages`): with 10,000 pointers, that took 2 s after
        each expiry, for a `cat` of a package file."""
        with self._lock:
            listed = self._packages
            known = self._namespace_packages.get(namespace)
        if listed is not None and self._fresh(listed[1]):
            return frozenset(name for name in listed[0] if name.partition("/")[0] == namespace)
        if known is not None and self._fresh(known[1]):
            return known[0]
        names = frozenset(name for name in self.registry.packages_in(namespace)
                          if self._showable(f"package {short_repr(name)}", name))
        with self._lock:
            self._namespace_packages[namespace] = (names, self._clock() + self.ttl)
        return names

    def _draft_packages(self) -> set[str]:
        """Packages with a draft in this mount's drafts directory (a new package has nothing else)."""
        if self.drafts_dir is None or not os.path.isdir(self.drafts_dir):
            return set()
        return {f"{namespace}/{name}" for namespace in os.listdir(self.drafts_dir)
                if os.path.isdir(os.path.join(self.drafts_dir, namespace))
                for name in os.listdir(os.path.join(self.drafts_dir, namespace))
                if os.path.exists(os.path.join(self.drafts_dir, namespace, name, DRAFT_FILE))}

    def lookup(self, path: str) -> Node:
        parts, revision, inner = self._route(path)
        if revision is not None:
            return revision.lookup(inner)
        if len(parts) == 0:
            return self._dir_node
        if len(parts) == 1:
            if parts[0] in self._namespaces or any(name.partition("/")[0] == parts[0]
                                                   for name in self._emptied | self._draft_packages()):
                return self._dir_node
            if is_valid_package_name(f"{parts[0]}/x") and self._packages_of(parts[0]):
                return self._dir_node
            raise NotFound(path)
        name = f"{parts[0]}/{parts[1]}"
        if not self._package_known(name):
            raise NotFound(path)
        if len(parts) == 2:
            return self._dir_node
        if len(parts) == 3:
            with self._lock:
                target = self._pending_links.get((name, parts[2]))
            if target is None:  # one read of a pointer file, where listing the package's would read them all
                target = self._pointer(name, parts[2])
            if target is not None:
                return self._link_node(parts[2], target)
        raise NotFound(path)

    def _link_node(self, pointer: str, top_hash: str) -> Node:
        """A pointer as a symlink; a timestamp pointer's mtime is its name (quilt3 names it by the push's
        time), so `ls -lt` orders revisions by when they were pushed."""
        target = REVISION_PREFIX + top_hash
        pushed = int(pointer) if is_timestamp_pointer(pointer) and len(pointer) <= MAX_TIMESTAMP_DIGITS else None
        return Node(is_dir=False, size=len(target), mtime=self.started if pushed is None else pushed, target=target)

    def readdir(self, path: str) -> dict[str, Node]:
        parts, revision, inner = self._route(path)
        if revision is not None:
            return revision.readdir(inner)
        names = sorted(set(self.packages()) | self._emptied | self._draft_packages())
        if len(parts) == 0:
            return {namespace: self._dir_node
                    for namespace in sorted({n.partition("/")[0] for n in names} | self._namespaces)}
        if len(parts) == 1:
            found = {n.partition("/")[2]: self._dir_node for n in names if n.partition("/")[0] == parts[0]}
            if not found and parts[0] not in self._namespaces:
                raise NotFound(path)
            return found
        if len(parts) == 2:
            name = f"{parts[0]}/{parts[1]}"
            if not self._package_known(name):
                raise NotFound(path)
            entries = {pointer: self._link_node(pointer, top_hash)
                       for pointer, top_hash in self.versions(name).items()}
            for (package, temporary), top_hash in self._pending_links.items():
                if package == name:
                    entries[temporary] = self._link_node(temporary, top_hash)
            if self._draft(name) is not None:
                entries[DRAFT] = self._dir_node
            return entries
        raise NotFound(path)

    def xattrs(self, path: str) -> dict[str, bytes]:
        parts, revision, inner = self._route(path)
        if revision is not None:
            return revision.xattrs(inner)
        self.lookup(path)
        if len(parts) == 2:
            return {"user.quilt.pointers": _json(self.versions(f"{parts[0]}/{parts[1]}"))}
        return {}

    def open_local(self, path: str) -> None:
        parts, revision, inner = self._route(path)
        return revision.open_local(inner) if revision is not None else None

    # -- changes: pointers only -------------------------------------------------------------------------
    def _pointer_path(self, path: str) -> tuple[str, str]:
        parts, revision, _ = self._route(path)
        if revision is not None or len(parts) != 3:
            raise StorageError(f"{path}: only package pointers can be changed", errno.EROFS)
        return f"{parts[0]}/{parts[1]}", parts[2]

    def _in_draft(self, path: str) -> tuple[DraftTree, str] | None:
        """The draft `path` is in (not the draft directory itself), and the path inside it."""
        parts = path.split("/")
        if len(parts) <= 3 or parts[2] != DRAFT:
            return None
        _, tree, inner = self._route(path)
        return tree, inner

    def open_write(self, path: str, *, truncate: bool, create: bool) -> FileHandle:
        _, tree, inner = self._route(path)
        if not isinstance(tree, DraftTree):
            return super().open_write(path, truncate=truncate, create=create)
        return tree.open_write(inner, truncate=truncate, create=create)

    def set_attributes(self, path: str) -> None:
        _, tree, inner = self._route(path)
        if not isinstance(tree, DraftTree):
            super().set_attributes(path)
        else:
            tree.set_attributes(inner)

    def set_xattr(self, path: str, name: str, value: bytes) -> None:
        _, tree, inner = self._route(path)
        if not isinstance(tree, DraftTree):
            super().set_xattr(path, name, value)
        else:
            tree.set_xattr(inner, name, value)

    def make_node(self, path: str, new: NewAttrs) -> None:
        inside = self._in_draft(path)
        if inside is None:
            return super().make_node(path, new)
        return inside[0].make_node(inside[1], new)

    def link(self, path: str, target: str) -> None:
        inside = self._in_draft(path)
        if inside is None:
            return super().link(path, target)
        return inside[0].link(inside[1], target)

    def mkdir(self, path: str) -> None:
        """`mkdir NS/NAME/draft` opens a draft; `mkdir NS` and `mkdir NS/NAME` make room for a new package."""
        inside = self._in_draft(path)
        if inside is not None:
            return inside[0].mkdir(inside[1])
        parts = path.split("/")
        if len(parts) == 3 and parts[2] == DRAFT:
            name = f"{parts[0]}/{parts[1]}"
            self.lookup(name)
            return self.make_draft(name, path)
        if self.drafts_dir is None or len(parts) not in (1, 2):
            raise StorageError(f"{path}: only drafts can be made here (NS/NAME/draft)", errno.EROFS)
        self.check_absent(path)
        if len(parts) == 1:
            if invalid_path_reason(parts[0]) or not is_valid_package_name(f"{parts[0]}/x"):
                raise StorageError(f"{path}: invalid namespace", errno.EINVAL)
            with self._lock:
                self._namespaces.add(parts[0])
            return None
        self.lookup(parts[0])
        if not is_valid_package_name(path):
            raise StorageError(f"{path}: invalid package name", errno.EINVAL)
        with self._lock:
            self._emptied.add(path)
        return None

    def unlink(self, path: str) -> None:
        inside = self._in_draft(path)
        if inside is not None:
            return inside[0].unlink(inside[1])
        name, pointer = self._pointer_path(path)
        with self._lock:
            if self._pending_links.pop((name, pointer), None) is not None:
                return
        versions = self.versions(name)
        if pointer not in versions:
            raise NotFound(path)
        if pointer == LATEST:
            # As delete_package(name, top_hash=<latest>): every pointer to that hash goes, then the greatest
            # remaining timestamp becomes latest.
            deleted = self.registry.delete_package(name, top_hash=versions[LATEST])
        else:
            self.registry.delete_pointer(name, pointer)
            deleted = [pointer]
        log.info("package %s: deleted pointer(s) %s", name, ", ".join(deleted))
        self._forget(name)
        if not self.versions(name):
            with self._lock:
                self._emptied.add(name)

    def rmdir(self, path: str) -> None:
        inside = self._in_draft(path)
        if inside is not None:
            return inside[0].rmdir(inside[1])
        parts, revision, _ = self._route(path)
        if isinstance(revision, DraftTree) and len(parts) == 3:
            return self._discard_draft(f"{parts[0]}/{parts[1]}", path)
        if revision is not None or len(parts) > 2:
            raise StorageError(f"{path}: read-only", errno.EROFS)
        if len(parts) == 0:  # `rm -r .packages`: the view itself stays, as every reserved name does
            if self.readdir(path):
                raise StorageError(f"{path}: the registry still has packages", errno.ENOTEMPTY)
            log.info("rmdir of the packages view: it is empty, and stays (a reserved name)")
            return None
        if len(parts) == 1:
            if self.readdir(path):
                raise StorageError(f"{path}: namespace is not empty", errno.ENOTEMPTY)
            with self._lock:
                self._namespaces.discard(parts[0])
            return None
        name = f"{parts[0]}/{parts[1]}"
        self.lookup(path)
        if self.versions(name) or any(package == name for package, _ in self._pending_links):
            raise StorageError(f"{path}: package still has pointers", errno.ENOTEMPTY)
        hidden = self.registry.pointer_files(name)  # not listed, but quilt3 lists the package while they are there
        if hidden:
            raise StorageError(f"{path}: package still has pointers that name no revision: "
                               f"{', '.join(map(short_repr, hidden))}", errno.ENOTEMPTY)
        if self._draft(name) is not None:
            raise StorageError(f"{path}: package has a draft", errno.ENOTEMPTY)
        with self._lock:
            self._emptied.discard(name)
            # The namespace goes from the registry with its last package, but stays until its own rmdir, which
            # `rm -r` of the namespace (or of `.packages`) does next and would otherwise fail (ENOENT).
            self._namespaces.add(parts[0])
            self._packages = None
            self._namespace_packages.clear()

    def symlink(self, path: str, target: str) -> None:
        inside = self._in_draft(path)
        if inside is not None:
            return inside[0].symlink(inside[1], target)
        name, pointer = self._pointer_path(path)
        if not is_valid_package_name(name):
            raise StorageError(f"{path}: invalid package name", errno.EINVAL)
        if not target.startswith(REVISION_PREFIX):
            raise StorageError(f"{path}: a pointer must link to @<top hash>", errno.EINVAL)
        try:
            top_hash = self.revision(name, target[1:]).top_hash  # the manifest must exist and be valid
        except NotFound:
            raise StorageError(f"{path}: no revision {target}", errno.EINVAL) from None
        if is_settable_pointer_name(pointer):
            self._set_pointer(name, pointer, top_hash)
        else:  # `ln -sfn` makes a temporary link, then renames it over the pointer
            with self._lock:
                self._pending_links[(name, pointer)] = top_hash

    def rename(self, old: str, new: str) -> None:
        inside, inside_new = self._in_draft(old), self._in_draft(new)
        if inside is not None or inside_new is not None:
            if inside is None or inside_new is None or inside[0] is not inside_new[0]:
                raise StorageError(f"{old}: a file moves into or out of a draft by copy", errno.EXDEV)
            return inside[0].rename(inside[1], inside_new[1])
        name, pointer = self._pointer_path(old)
        new_name, new_pointer = self._pointer_path(new)
        if new_name != name or not is_settable_pointer_name(new_pointer):
            raise StorageError(f"{new}: a pointer must be named 'latest' or by Unix seconds", errno.EINVAL)
        with self._lock:
            top_hash = self._pending_links.pop((name, pointer), None)
        if top_hash is None:
            top_hash = self.versions(name).get(pointer)
            if top_hash is None:
                raise NotFound(old)
            self._set_pointer(name, new_pointer, top_hash)
            self.registry.delete_pointer(name, pointer)
            self._forget(name)
            return
        self._set_pointer(name, new_pointer, top_hash)

    def close(self) -> None:
        with self._lock:
            trees: list[Tree] = [*self._revisions.values(), *self._drafts.values()]
            self._revisions.clear()
            self._drafts.clear()
        for tree in trees:
            tree.close()

    def _set_pointer(self, name: str, pointer: str, top_hash: str) -> None:
        self.registry.set_pointer(name, pointer, top_hash)
        log.info("package %s: %s -> %s", name, pointer, top_hash)
        self._forget(name)
        with self._lock:
            self._emptied.discard(name)
