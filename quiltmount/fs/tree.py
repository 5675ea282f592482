"""Path-to-node resolution for a bucket (or local directory) mount.  No FUSE here.

Directories come from delimiter listings; `lookup` answers from the parent's cached listing when it has
one, so `ls -l` and `find` cost no HEAD per file.  Listings and single lookups are cached for the mount's
metadata TTL.  A name's absence, from a listing or from a lookup, is trusted for the negative TTL only (1 s
by default), so that an object another client creates shows up that soon; the negative cache is bounded.
"""

from __future__ import annotations

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
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`negative_ttl`: how long a name found missing is trusted to be (None: `DEFAULT_NEGATIVE_TTL`, or
        `metadata_ttl` if shorter)."""
        self.store = store
        self.root_prefix = root_prefix
        self.ttl = metadata_ttl
        self.negative_ttl = min(DEFAULT_NEGATIVE_TTL, metadata_ttl) if negative_ttl is None else negative_ttl
        self.started = time.time()
        self._clock = clock
        # path -> (entries, when listed); expired listings stay until evicted, to decide how to refresh.
        self._listings: LRUCache[str, tuple[dict[str, Node], float]] = LRUCache(listing_cache_size)
        self._nodes: TTLCache[str, Node] = TTLCache(node_cache_size, max(metadata_ttl, 1e-9), timer=clock)
        self._negative: TTLCache[str, bool] = TTLCache(negative_cache_size, max(self.negative_ttl, 1e-9),
                                                       timer=clock)
        self._reported_keys: LRUCache[str, bool] = LRUCache(10_000)
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

        A fresh listing of the parent answers for the names it holds.  A name it lacks is missing while the
        listing is younger than the negative TTL; after that the store is asked (HEAD + LIST), and what it
        says joins the caches and that listing: an object another client created since shows up."""
        if path == "":
            return self.dir_node()
        parent, _, name = path.rpartition("/")
        if parent == "" and name in RESERVED_ROOT_NAMES:
            raise NotFound(f"{path}: reserved name")
        with self._lock:
            listing, age = self._cached_listing(parent)
            if listing is not None and age < self.ttl:
                node = listing.get(name)
                if node is not None:
                    return node
                if age < self.negative_ttl:
                    raise NotFound(path)
            node = self._nodes.get(path)
            if node is not None:
                return node
            if path in self._negative:
                raise NotFound(path)
        if age >= self.ttl and listing is not None and len(listing) <= RELIST_MAX_ENTRIES:
            node = self.readdir(parent).get(name)
            if node is None:
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

    def _cached_listing(self, path: str) -> tuple[dict[str, Node] | None, float]:
        """(entries, age in seconds) of the cached listing of `path`, (None, inf) if there is none; the caller
        holds the lock."""
        cached = self._listings.get(path)
        if cached is None:
            return None, math.inf
        return cached[0], self._clock() - cached[1]

    def _lookup_remote(self, path: str) -> Node:
        """One HEAD for the file and one LIST for the directory, in parallel; the directory wins."""
        key = self.key_of(path)
        head: Future = self._lookup_pool.submit(self.store.head, key)
        is_dir = self.store.prefix_exists(key + "/")
        if is_dir:
            head.add_done_callback(lambda done: self._report_shadowed(key, done))
            return self.dir_node()
        obj: ObjectInfo = head.result()  # raises NotFound
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
        """The entries of directory `path` (name -> node), from cache or one paginated listing.

        The caller gets its own dict: the cached one changes in place as uploads land (`remember`)."""
        with self._lock:
            listing, age = self._cached_listing(path)
            if listing is not None and age < self.ttl:
                return dict(listing)
        return dict(self._listings_in_progress.run(path, lambda: self._fresh_listing(path)))

    def _fresh_listing(self, path: str) -> dict[str, Node]:
        """The cached listing if another run just made it, else one from the store (cached unless something
        changed the bucket meanwhile).  Callers sharing the run copy it."""
        with self._lock:
            cached, age = self._cached_listing(path)
            if cached is not None and age < self.ttl:
                return dict(cached)
            changes = self._changes
        listed_at = self._clock()
        listing = self._list(path)
        if self.caching:
            with self._lock:
                if self._changes == changes:
                    self._listings[path] = (dict(listing), listed_at)
        return listing

    def _list(self, path: str) -> dict[str, Node]:
        prefix = self.key_of(path + "/" if path else "")
        files: dict[str, Node] = {}
        dirs: dict[str, Node] = {}
        dir_node = self.dir_node()
        for page in self.store.list_dir(prefix):
            for obj in page.objects:
                name = obj.key[len(prefix):]
                if name == "":
                    continue  # the directory's own marker object
                reason = invalid_name_reason(name)
                if reason:
                    self._report(obj.key, reason)
                    continue
                files[name] = Node(is_dir=False, size=obj.size, mtime=obj.mtime, obj=obj, store=self.store)
            for child in page.prefixes:
                name = child[len(prefix):-1]
                reason = invalid_name_reason(name)
                if reason:
                    self._report(child, reason)
                    continue
                dirs[name] = dir_node
        for name in dirs.keys() & files.keys():
            self._report(prefix + name, "an object with the same name as a directory is hidden; the directory wins")
        if path == "":
            for name in RESERVED_ROOT_NAMES & (dirs.keys() | files.keys()):
                self._report(prefix + name, "name reserved by quiltmount at the mount root")
                dirs.pop(name, None)
                files.pop(name, None)
        files.update(dirs)
        return dict(sorted(files.items()))

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
        node = Node(is_dir=False, size=obj.size, mtime=obj.mtime, obj=obj, store=self.store)
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
        """`path` was just created as an empty directory: its listing is known (empty), so looking up the
        names about to be created in it costs no request."""
        parent, _, name = path.rpartition("/")
        with self._lock:
            self._changes += 1
            self._negative.pop(path, None)
            self._nodes.pop(path, None)
            self._listings.pop(parent, None)
            if self.caching:
                self._listings[path] = ({}, self._clock())

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
