"""Search as a directory (no FUSE here).

```
.search/                                        the queries run during this mount
.search/<query>/                                looking it up runs the query (results kept for the TTL)
.search/<query>/<key>                           an object hit: symlink to that file in the mount
.search/<query>/.packages/<ns>/<name>/<tag>     a pointer hit: symlink to that pointer in the mount
.search/<query>/.hits.json                      the catalog's raw answer
.search/<query>/ERROR.txt                       instead of hits when the search failed: why, and what to run
```

The directory name is the query, percent-decoded (`%2F` is `/`, `%25` is `%`); a name that decodes to a
JSON object is an Elasticsearch DSL body.  Every hit sits at the same path inside the query directory as
its target has at the mount root, so each link is `../` per level plus that path: relative, it resolves
wherever the mount is.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from cachetools import LRUCache

from quiltmount.errors import NotFound, QuiltmountError, StorageError
from quiltmount.fs.node import MemoryFile, Node, PathIndex, Tree
from quiltmount.fs.tree import RESERVED_ROOT_NAMES
from quiltmount.fs.versions import versions_path
from quiltmount.names import invalid_path_reason, is_shown_pointer_name, is_valid_package_name
from quiltmount.singleflight import SingleFlight

log = logging.getLogger(__name__)

#: (query, limit) -> the catalog's raw answer (`{"hits": {"hits": [...]}}`); raises `QuiltmountError`.
SearchFunction = Callable[[str | dict, int], dict]

HITS_FILE = ".hits.json"
ERROR_FILE = "ERROR.txt"
PACKAGES_DIR = ".packages"
#: How long a failed search is shown before the next lookup retries it (long enough for one `ls -l`).
ERROR_TTL = 2.0
#: Results of at most this many queries are kept; older ones are searched again when looked at.
KEPT_RESULTS = 256
#: Query directories listed in `ls .search/` (names only): beyond this the least recently run are forgotten.
KEPT_QUERIES = 10_000

# Linux allows `user.*` attributes only on regular files and directories, and hits are symlinks: their
# attributes are in a namespace of their own, which the kernel hands to FUSE unchecked.
SCORE_XATTR = "quilt.score"
HIT_XATTR = "quilt.hit"


def parse_query(name: str) -> str | dict:
    """The query a directory name stands for: percent-decoded text, or a DSL body if it is a JSON object."""
    text = unquote(name)
    if text.lstrip().startswith("{"):
        try:
            body = json.loads(text)
        except ValueError:
            return text
        if isinstance(body, dict):
            return body
    return text


def _link_target(path: str) -> str:
    """The relative symlink from `.search/<query>/<path>` to `<path>` at the mount root."""
    return "../" * (path.count("/") + 2) + path


@dataclass
class _Results:
    """One query directory, built once per search: its nodes, generated files, and the hit behind each link."""

    searched_at: float  # monotonic
    expires_in: float
    index: PathIndex
    files: dict[str, bytes] = field(default_factory=dict)
    hits: dict[str, dict[str, Any]] = field(default_factory=dict)

    def expired(self, now: float) -> bool:
        return now - self.searched_at >= self.expires_in

    def add_file(self, name: str, content: bytes) -> None:
        self.files[name] = content
        self.index.dirs[""][name] = Node(is_dir=False, size=len(content), mtime=self.index.dir_node.mtime)


class SearchTree(Tree):
    """`.search/`: every looked-up name is a query against the mounted bucket's catalog search."""

    def __init__(self, search: SearchFunction | None, *, bucket: str, key_prefix: str = "", limit: int = 1000,
                 metadata_ttl: float = 10.0, unavailable: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`search` is None when the mount cannot search (`unavailable` says why, e.g. a local directory)."""
        self._search = search
        self.bucket = bucket
        self.key_prefix = key_prefix
        self.limit = limit
        self.ttl = max(metadata_ttl, 1.0)  # one `ls -l` must see one answer, even with --metadata-ttl 0
        self.unavailable = unavailable
        self._clock = clock
        self._root = Node(is_dir=True, mtime=time.time())
        self._lock = threading.Lock()
        self._queries: LRUCache[str, float] = LRUCache(KEPT_QUERIES)  # query name -> time of its last run
        self._results: LRUCache[str, _Results] = LRUCache(KEPT_RESULTS)
        self._searches: SingleFlight[_Results] = SingleFlight()

    # -- running queries ----------------------------------------------------------------------------------
    def _results_for(self, name: str) -> _Results:
        """The (fresh) results of query directory `name`, searching at most once at a time per name."""
        with self._lock:
            results = self._results.get(name)
        if results is not None and not results.expired(self._clock()):
            return results
        return self._searches.run(name, lambda: self._fresh_results(name))

    def _fresh_results(self, name: str) -> _Results:
        with self._lock:
            results = self._results.get(name)
        if results is not None and not results.expired(self._clock()):
            return results  # a search that ended just before this one began
        results = self._run(name)
        with self._lock:
            self._results[name] = results
            self._queries[name] = results.index.dir_node.mtime
        return results

    def _run(self, name: str) -> _Results:
        query = parse_query(name)
        started = time.time()
        if self._search is None:
            return self._failure(name, query, self.unavailable)
        try:
            answer = self._search(query, self.limit)
        except QuiltmountError as exc:
            return self._failure(name, query, str(exc))
        hits = answer["hits"]["hits"]
        log.info("search %r in %s: %d hit(s) in %.2f s", query, self.bucket, len(hits), time.time() - started)
        results = _Results(self._clock(), self.ttl, PathIndex(Node(is_dir=True, mtime=started)))
        for hit in hits:
            self._place(results, hit)
        results.add_file(HITS_FILE, json.dumps(answer, indent=2, ensure_ascii=False).encode("utf-8") + b"\n")
        return results

    def _failure(self, name: str, query: str | dict, reason: str) -> _Results:
        log.warning("search %r in %s failed: %s", query, self.bucket or "this mount", reason)
        results = _Results(self._clock(), min(ERROR_TTL, self.ttl), PathIndex(Node(is_dir=True, mtime=time.time())))
        where = f"s3://{self.bucket}" if self.bucket else "this mount"
        results.add_file(ERROR_FILE, _error_text(name, query, where, reason).encode("utf-8"))
        return results

    def _place(self, results: _Results, hit: Any) -> None:
        """Add a link for `hit` if it names an object or a package pointer the mount shows."""
        path = self._hit_path(hit)
        if path is None:
            return
        reason = invalid_path_reason(path)
        if reason is not None:
            log.info("search hit %r not shown: %s", path, reason)
            return
        if path in (HITS_FILE, ERROR_FILE):
            log.info("search hit %r not shown: the name is taken by quiltmount's own file", path)
            return
        link = Node(is_dir=False, mtime=results.index.dir_node.mtime, target=_link_target(path))
        if results.index.add(path, link):
            results.hits[path] = hit

    def _hit_path(self, hit: Any) -> str | None:
        """Where a hit appears in its query directory: the object's path in the mount, or the pointer's."""
        if not isinstance(hit, dict) or not isinstance(hit.get("_source"), dict):
            return None
        source, index = hit["_source"], hit.get("_index")
        if index == self.bucket and isinstance(source.get("key"), str) and not source.get("delete_marker"):
            key = source["key"]
            if not key.startswith(self.key_prefix) or key == self.key_prefix:
                return None
            path = key[len(self.key_prefix):]
            if path.split("/", 1)[0] in RESERVED_ROOT_NAMES or versions_path(path) is not None:
                return None  # a key the mount hides (a link would lead into a view): only in .hits.json
            return path
        if index == f"{self.bucket}_packages" and isinstance(source.get("ptr_name"), str):
            name, tag = source["ptr_name"], source.get("ptr_tag")
            if is_valid_package_name(name) and isinstance(tag, str) and is_shown_pointer_name(tag):
                return f"{PACKAGES_DIR}/{name}/{tag}"
        return None  # manifests, entries, other buckets: only in .hits.json

    # -- the Tree interface -------------------------------------------------------------------------------
    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        name, _, inner = path.partition("/")
        return name, inner

    def lookup(self, path: str) -> Node:
        if path == "":
            return self._root
        name, inner = self._split(path)
        return self._results_for(name).index.node(inner)

    def readdir(self, path: str) -> dict[str, Node]:
        if path == "":
            with self._lock:
                return {name: Node(is_dir=True, mtime=mtime) for name, mtime in self._queries.items()}
        name, inner = self._split(path)
        results = self._results_for(name)
        if inner not in results.index.dirs:
            raise StorageError(f"{path}: not a directory", errno.ENOTDIR)
        return dict(results.index.dirs[inner])

    def xattrs(self, path: str) -> dict[str, bytes]:
        name, inner = self._split(path)
        if not inner:
            self.lookup(path)
            return {}
        results = self._results_for(name)
        # Only links carry a hit: a directory may have taken the name of an earlier hit.
        hit = results.hits.get(inner) if results.index.node(inner).is_link else None
        if hit is None:
            return {}
        return {SCORE_XATTR: str(hit.get("_score")).encode(),
                HIT_XATTR: json.dumps(hit, ensure_ascii=False).encode("utf-8")}

    def open_local(self, path: str) -> MemoryFile | None:
        name, inner = self._split(path)
        if not name or not inner:
            return None
        content = self._results_for(name).files.get(inner)
        return None if content is None else MemoryFile(content)

    def rmdir(self, path: str) -> None:
        """`rmdir .search/<query>` forgets the query; nothing else under `.search` can be removed."""
        name, inner = self._split(path)
        if not name or inner:
            super().rmdir(path)
        with self._lock:
            known = self._queries.pop(name, None) is not None
            self._results.pop(name, None)
        if not known:
            raise NotFound(path)


def _error_text(name: str, query: str | dict, where: str, reason: str) -> str:
    hint = ""
    lowered = reason.lower()
    if "no quilt catalog is configured" in lowered:
        hint = "Configure the catalog, then look again:  quiltmount config https://YOUR-CATALOG\n"
    elif "authentication failed" in lowered or "not logged in" in lowered:
        hint = ("Log in, then look again:  quiltmount login\n"
                "(or mount with an API key: QUILT_API_KEY=qk_... quiltmount mount ... / --api-key-env VAR)\n")
    return (f"quiltmount could not search for {json.dumps(query, ensure_ascii=False)} in {where}:\n"
            f"{reason}\n{hint}"
            f"The search is retried on the next look after {ERROR_TTL:.0f} s "
            f"(or at once after: rmdir '.search/{name}').\n")
