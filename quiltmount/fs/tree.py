"""Path-to-node resolution for a bucket (or local directory) mount.  No FUSE here.

Directories come from delimiter listings; `lookup` answers from the parent's cached listing for the names
it holds, so `ls -l` and `find` cost no HEAD per file.  Listings and single lookups are cached for the mount's
metadata TTL.  A name a listing lacks is asked of the store (HEAD + one-key LIST) unless that very name was
found missing less than the negative TTL ago (1 s by default; the negative cache is bounded), and `readdir`
lists afresh unless the cached listing was fetched from the store less than the negative TTL ago: an object
another client creates shows up at once, as with mountpoint-s3 and s3fs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from cachetools import LRUCache, TTLCache

from quiltmount.errors import NotFound
from quiltmount.fs.node import Node, Tree
from quiltmount.names import invalid_name_reason
from quiltmount.singleflight import SingleFlight
from quiltmount.storage.base import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

#: An expired listing of at most this many entries is refreshed by re-listing its directory on the next
#: lookup (a few LIST pages) instead of one HEAD + LIST per name looked up.
RELIST_MAX_ENTRIES = 10_000

#: Names at the root of a mount that belong to quiltmount, never to the bucket (like ZFS's `.zfs`).
RESERVED_ROOT_NAMES = frozenset({".packages", ".search"})

#: Seconds a name found missing stays missing, unless --negative-metadata-ttl (or a shorter --metadata-ttl)
#: says otherwise: mountpoint-s3's default.
DEFAULT_NEGATIVE_TTL = 1.0


class BucketTree(Tree):
    """Resolves mount-relative paths (`a/b/c`, '' for the root) to `Node`s from a store's listings."""

    def __init__(self, store: ObjectStore, root_prefix: str = "", *, metadata_ttl: float = 10.0,
                 negative_ttl: float | None = None, negative_cache_size: int = 100_000,
                 listing_cache_size: int = 10_000, node_cache_size: int = 100_000, lookup_workers: int = 8,
                 clock: Callable[[], float] = time.monotonic, pin_versions: bool = False) -> None:
        """`negative_ttl`: how long a name found missing is trusted to be (None: `DEFAULT_NEGATIVE_TTL`, or
        `metadata_ttl` if shorter).  `pin_versions`: files keep the version id the store gives them (a store
        whose objects are versions: `--as-of`); otherwise a file is pinned by its ETag alone, however it was
        found (a listing, a HEAD, our own upload), as ListObjectsV2 gives it: an open then sees an object
        replaced under its name in a versioned bucket too (412), and its bytes are cached under one name."""
        self.store = store
        self.pin_versions = pin_versions
        self.root_prefix = root_prefix
        self.ttl = metadata_ttl
        self.negative_ttl = min(DEFAULT_NEGATIVE_TTL, metadata_ttl) if negative_ttl is None else negative_ttl
        self.started = time.time()
        self._clock = clock
        # path -> (entries, when listed, when fetched from the store); expired listings stay until evicted, to
        # decide how to refresh.  A listing the mount made up (an empty one after its own mkdir) was never
        # fetched (-inf); its own uploads change a listing in place and leave both times as they were.
        self._listings: LRUCache[str, tuple[dict[str, Node], float, float]] = LRUCache(listing_cache_size)
        self._nodes: TTLCache[str, Node] = TTLCache(node_cache_size, max(metadata_ttl, 1e-9), timer=clock)
        self._negative: TTLCache[str, bool] = TTLCache(negative_cache_size, max(self.negative_ttl, 1e-9),
                                                       timer=clock)
        self._reported_keys: LRUCache[str, bool] = LRUCache(10_000)
        # Directory -> a key under it its last listing from the store could not show (`hidden_key`).
        self._hidden: LRUCache[str, str] = LRUCache(1_024)
        self._lock = threading.Lock()
        self._listings_in_progress: SingleFlight[dict[str, Node]] = SingleFlight()
        # Bumped by every local change: a listing or lookup that started before a change is not cached,
        # since it may predate that change (S3 answered before the upload landed).
        self._changes = 0
        self._lookup_pool = ThreadPoolExecutor(max_workers=lookup_workers, thread_name_prefix="lookup")

    @property
    def caching(self) -> bool:
        return self.ttl > 0

    def dir_node(self) -> Node:
        return Node(is_dir=True, mtime=self.started)

    def key_of(self, path: str) -> str:
        return self.root_prefix + path

    # -- lookups ------------------------------------------------------------------------------------------
    def lookup(self, path: str) -> Node:
        """The node at `path`; raises `NotFound`.

        A listing of the parent younger than the metadata TTL answers for the names it holds.  A name it
        lacks is asked of the store (HEAD + LIST) unless the store said "not found" for that very name less
        than the negative TTL ago; what the store says joins the caches and that listing: an object another
        client created since the listing shows up at once.  An expired listing of at most RELIST_MAX_ENTRIES
        entries is refreshed instead (one listing, not a HEAD + LIST per name looked up)."""
        if path == "":
            return self.dir_node()
        parent, _, name = path.rpartition("/")
        if parent == "" and name in RESERVED_ROOT_NAMES:
            raise NotFound(f"{path}: reserved name")
        with self._lock:
            listing, age, _ = self._cached_listing(parent)
            if listing is not None and age < self.ttl:
                node = listing.get(name)
                if node is not None:
                    return node
            node = self._nodes.get(path)
            if node is not None:
                return node
            if path in self._negative:
                raise NotFound(path)
            changes = self._changes
        if age >= self.ttl and listing is not None and len(listing) <= RELIST_MAX_ENTRIES:
            node = self.readdir(parent).get(name)
            if node is None:
                self._learn(path, None, changes)  # a listing just fetched says so
                raise NotFound(path)
            return node
        if invalid_name_reason(name):
            raise NotFound(path)
        return self._ask_store(path)

    def refresh(self, path: str) -> Node:
        """The node at `path` as the store holds it now (HEAD + LIST, past every cache), which the caches and
        the parent's cached listing learn: an open found the object it was given replaced or deleted."""
        if path == "":
            return self.dir_node()
        return self._ask_store(path)

    def _ask_store(self, path: str) -> Node:
        """`path` looked up in the store; the answer, "nothing there" included, goes into the caches unless the
        bucket changed here meanwhile (an upload may have landed after the store answered)."""
        with self._lock:
            changes = self._changes
        try:
            node = self._lookup_remote(path)
        except NotFound:
            self._learn(path, None, changes)
            raise
        self._learn(path, node, changes)
        return node

    def _learn(self, path: str, node: Node | None, changes: int) -> None:
        """Cache what the store said of `path` (None: nothing there), in the parent's cached listing too (fresh
        or not), so that `readdir` agrees with `lookup`."""
        parent, _, name = path.rpartition("/")
        with self._lock:
            if self._changes != changes:
                return
            cached = self._listings.get(parent)
            if node is None:
                self._nodes.pop(path, None)
                if self.negative_ttl > 0:
                    self._negative[path] = True
                if cached is not None:
                    cached[0].pop(name, None)
                return
            self._negative.pop(path, None)
            if self.caching:
                self._nodes[path] = node
            if cached is not None:
                cached[0][name] = node

    def _cached_listing(self, path: str) -> tuple[dict[str, Node] | None, float, float]:
        """(entries, age in seconds, seconds since fetched from the store) of the cached listing of `path`,
        (None, inf, inf) if there is none; the caller holds the lock."""
        cached = self._listings.get(path)
        if cached is None:
            return None, math.inf, math.inf
        now = self._clock()
        return cached[0], now - cached[1], now - cached[2]

    def _listing_current(self, age: float, fetched_age: float) -> bool:
        """Whether `readdir` may answer from a cached listing of these ages instead of listing afresh: only
        within the negative TTL of its fetch from the store, so that one `ls`, `find` or `ls -l` lists a
        directory once, and the next shows what other clients added or removed meanwhile; always with
        `--metadata-ttl indefinite` (a bucket that does not change: listings are never made again)."""
        return age < self.ttl and (fetched_age < self.negative_ttl or math.isinf(self.ttl))

    def _lookup_remote(self, path: str) -> Node:
        """One HEAD for the file and one LIST for the directory, in parallel; the directory wins."""
        key = self.key_of(path)
        head: Future = self._lookup_pool.submit(self.store.head, key)
        is_dir = self.store.prefix_exists(key + "/")
        if is_dir:
            head.add_done_callback(lambda done: self._report_shadowed(key, done))
            return self.dir_node()
        return self._file_node(head.result())  # raises NotFound

    def _file_node(self, obj: ObjectInfo) -> Node:
        """The node of a file the store holds as `obj` (pinned as `pin_versions` says)."""
        if obj.version_id is not None and not self.pin_versions:
            obj = dataclasses.replace(obj, version_id=None)
        return Node(is_dir=False, size=obj.size, mtime=obj.mtime, obj=obj, store=self.store)

    def _report_shadowed(self, key: str, head: Future) -> None:
        if head.exception() is None:
            self._report(key, "an object with the same name as a directory is hidden; the directory wins")

    def _report(self, key: str, reason: str) -> None:
        with self._lock:
            if key in self._reported_keys:
                return
            self._reported_keys[key] = True
        log.warning("skipping key %r: %s", key, reason)

    # -- listings -----------------------------------------------------------------------------------------
    def readdir(self, path: str) -> dict[str, Node]:
        """The entries of directory `path` (name -> node), from one paginated listing, or from the cached
        listing if that was fetched from the store less than the negative TTL ago (`_listing_current`).

        The caller gets its own dict: the cached one changes in place as uploads land (`remember`)."""
        with self._lock:
            listing, age, fetched_age = self._cached_listing(path)
            if listing is not None and self._listing_current(age, fetched_age):
                return dict(listing)
        return dict(self._listings_in_progress.run(path, lambda: self._fresh_listing(path)))

    def _fresh_listing(self, path: str) -> dict[str, Node]:
        """The cached listing if another run just made it, else one from the store (cached unless something
        changed the bucket meanwhile).  Callers sharing the run copy it."""
        with self._lock:
            cached, age, fetched_age = self._cached_listing(path)
            if cached is not None and self._listing_current(age, fetched_age):
                return dict(cached)
            changes = self._changes
        listed_at = self._clock()
        listing = self._list(path)
        if self.caching:
            with self._lock:
                if self._changes == changes:
                    # Expires `--metadata-ttl` after it started; fetched when it ended (like a "not found"
                    # answer, cached when it arrives): a walk of many pages is not repeated at once.
                    self._listings[path] = (dict(listing), listed_at, self._clock())
        return listing

    def _list(self, path: str) -> dict[str, Node]:
        prefix = self.key_of(path + "/" if path else "")
        files: dict[str, Node] = {}
        dirs: dict[str, Node] = {}
        dir_node = self.dir_node()
        hidden = None
        for page in self.store.list_dir(prefix):
            for obj in page.objects:
                name = obj.key[len(prefix):]
                if name == "":
                    continue  # the directory's own marker object
                reason = invalid_name_reason(name)
                if reason:
                    self._report(obj.key, reason)
                    hidden = hidden or obj.key
                    continue
                files[name] = self._file_node(obj)
            for child in page.prefixes:
                name = child[len(prefix):-1]
                reason = invalid_name_reason(name)
                if reason:
                    self._report(child, reason)
                    hidden = hidden or child
                    continue
                dirs[name] = dir_node
        with self._lock:
            if hidden is None:
                self._hidden.pop(path, None)
            else:
                self._hidden[path] = hidden
        for name in dirs.keys() & files.keys():
            self._report(prefix + name, "an object with the same name as a directory is hidden; the directory wins")
        if path == "":
            for name in RESERVED_ROOT_NAMES & (dirs.keys() | files.keys()):
                self._report(prefix + name, "name reserved by quiltmount at the mount root")
                dirs.pop(name, None)
                files.pop(name, None)
        files.update(dirs)
        return dict(sorted(files.items()))

    def hidden_key(self, path: str) -> str | None:
        """A key (or prefix) under directory `path` that its last listing from the store skipped, as no name
        can show it (`a//b`, `..`, over 255 bytes): the directory is not empty, though it lists as empty."""
        with self._lock:
            return self._hidden.get(path)

    def forget_listing(self, path: str) -> None:
        """Drop the cached listing of directory `path` (its next readdir asks the store)."""
        with self._lock:
            self._changes += 1
            self._listings.pop(path, None)

    def remember(self, path: str, obj: ObjectInfo) -> None:
        """An upload of `path` landed as `obj`: the cached parent listing shows it as S3 now holds it.

        Forgetting instead would re-list the directory at the next lookup: once per file for a writer that
        creates many files in one directory (and copying the listing would cost that writer time quadratic
        in their number: the cached listing is changed in place, which is why `readdir` hands out copies).
        The change counter still keeps any listing or lookup that started before the upload landed out of
        the caches."""
        parent, _, name = path.rpartition("/")
        node = self._file_node(obj)
        with self._lock:
            self._changes += 1
            self._negative.pop(path, None)
            self._nodes.pop(path, None)
            self._listings.pop(path, None)
            cached = self._listings.get(parent)
            if cached is None:
                return
            entries = cached[0]
            if name in entries and entries[name].is_dir:
                return  # a directory of that name still wins
            entries[name] = node

    def remember_new_dir(self, path: str) -> None:
        """`path` was just created as an empty directory: its listing is known (empty), and answers lookups of
        the names created in it since (`remember`).  Names it lacks are still asked of the store, and its
        `readdir` still lists: another client may have put keys under the new prefix already."""
        parent, _, name = path.rpartition("/")
        with self._lock:
            self._changes += 1
            self._negative.pop(path, None)
            self._nodes.pop(path, None)
            self._listings.pop(parent, None)
            if self.caching:
                self._listings[path] = ({}, self._clock(), -math.inf)  # known, but not fetched: see readdir

    def forget(self, path: str) -> None:
        """Drop cached knowledge of `path` and its parent listing (after a local change)."""
        parent = path.rpartition("/")[0]
        with self._lock:
            self._changes += 1
            self._listings.pop(parent, None)
            self._listings.pop(path, None)
            self._nodes.pop(path, None)
            self._negative.pop(path, None)

    def close(self) -> None:
        self._lookup_pool.shutdown(wait=False, cancel_futures=True)


def ttl_for_kernel(metadata_ttl: float, cap: float = 1.0) -> float:
    """Kernel attribute/entry timeout for a bucket mount: never longer than our own cache, at most `cap`."""
    return 0.0 if metadata_ttl <= 0 else min(cap, metadata_ttl if math.isfinite(metadata_ttl) else cap)
