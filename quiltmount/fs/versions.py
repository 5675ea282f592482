"""`DIR/.versions/NAME/`: every version of the bucket's file `DIR/NAME`, as read-only files.

`.versions` is in every directory of a bucket mount and listed in none (like the `@<hash>` names of
`.packages`), so `find`, `du` and `rsync` never walk it.  `DIR/.versions/` lists the names of the files `DIR`
holds now (from its listing, usually cached: no request); a name deleted since is not listed but is found all
the same.  `DIR/.versions/NAME/` lists each version of `DIR/NAME` (one ListObjectVersions of the key, kept for
the metadata TTL) as `<LastModified, UTC, ISO 8601 basic>-<versionId>`, with its size and LastModified as
mtime; delete markers are not shown.  A store that keeps no versions (an unversioned bucket, a local
directory) shows the current object, as version `null`.  Reads are pinned to the version; the attributes
`user.quilt.version_id` and `user.quilt.etag` name it.  Nothing here can be changed (EROFS).
"""

from __future__ import annotations

import logging
import threading
import time
from cachetools import TTLCache

from quiltmount.errors import NotFound
from quiltmount.fs.node import Node, Tree
from quiltmount.names import invalid_name_reason
from quiltmount.singleflight import SingleFlight
from quiltmount.storage.base import ObjectStore, ObjectVersion

log = logging.getLogger(__name__)

VERSIONS = ".versions"
#: Keys whose versions are kept (for the metadata TTL) at once.
KEYS_CACHED = 10_000
VERSION_ID_XATTR = "user.quilt.version_id"
ETAG_XATTR = "user.quilt.etag"


def versions_path(path: str) -> tuple[str, list[str]] | None:
    """(the directory, the components after `.versions`) of a path through a `.versions` component, else
    None: `a/.versions/b.csv/X` -> ("a", ["b.csv", "X"])."""
    if VERSIONS not in path:
        return None
    parts = path.split("/")
    if VERSIONS not in parts:
        return None
    index = parts.index(VERSIONS)
    return "/".join(parts[:index]), parts[index + 1:]


def version_file_name(version: ObjectVersion) -> str:
    """`20261207T031502Z-<versionId>`: sorted by name is oldest first.  A '/' in a version id (S3's may hold
    one) is written `%2F`, and '%' `%25`."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(version.mtime))
    return f"{stamp}-{version.version_id.replace('%', '%25').replace('/', '%2F')}"


class VersionsTree(Tree):
    """The `.versions` directories of a bucket tree; paths are the mount's (`a/.versions/b.csv/X`).

    `bucket` is the tree whose directories `.versions` lists (the writable overlay in a writable mount),
    `store` the store whose versions are shown (as of a moment in an `--as-of` mount), `root_prefix` the
    mount's prefix in it.
    """

    def __init__(self, bucket: Tree, store: ObjectStore, root_prefix: str, *, metadata_ttl: float) -> None:
        self.bucket = bucket
        self.store = store
        self.root_prefix = root_prefix
        self._caching = metadata_ttl > 0
        self._dir = Node(is_dir=True, mtime=time.time())
        # key -> its versions by file name ({} for a key without any: a cached "not found")
        self._versions: TTLCache[str, dict[str, ObjectVersion]] = TTLCache(
            KEYS_CACHED, metadata_ttl if self._caching else 1e-9, timer=time.monotonic)
        self._lock = threading.Lock()
        self._listings: SingleFlight[dict[str, ObjectVersion]] = SingleFlight()
        self._reported_hidden = False

    def _split(self, path: str) -> tuple[str, list[str]]:
        split = versions_path(path)
        if split is None:  # the mount tree routes only paths through `.versions` here
            raise NotFound(path)
        return split

    def _key(self, directory: str, name: str) -> str:
        return self.root_prefix + (f"{directory}/{name}" if directory else name)

    def _node(self, version: ObjectVersion) -> Node:
        return Node(is_dir=False, size=version.size, mtime=version.mtime, obj=version.info(), store=self.store)

    def _files(self, directory: str, name: str) -> dict[str, ObjectVersion]:
        """The version files of `directory/name`; NotFound if it has none."""
        if invalid_name_reason(name) or name == VERSIONS:
            raise NotFound(f"{directory}/{VERSIONS}/{name}")
        key = self._key(directory, name)
        with self._lock:
            files = self._versions.get(key)
        if files is None:
            files = self._listings.run(key, lambda: self._list(key))
        if not files:
            raise NotFound(f"{key}: no versions")
        return files

    def _list(self, key: str) -> dict[str, ObjectVersion]:
        with self._lock:
            files = self._versions.get(key)
        if files is not None:  # another run just listed it
            return files
        files = {}
        for version in self.store.object_versions(key):
            if version.deleted:
                continue
            name = version_file_name(version)
            reason = invalid_name_reason(name)
            if reason:
                log.warning("version %r of %r not shown: %s", version.version_id, key, reason)
                continue
            files[name] = version
        files = dict(sorted(files.items()))
        if self._caching:
            with self._lock:
                self._versions[key] = files
        return files

    def _resolve(self, path: str) -> ObjectVersion | None:
        """The version file at `path`, or None for a directory (`.versions`, `.versions/NAME`); NotFound."""
        directory, rest = self._split(path)
        if not rest:
            if not self.bucket.lookup(directory).is_dir:
                raise NotFound(path)
            return None
        files = self._files(directory, rest[0])
        if len(rest) == 1:
            return None
        version = files.get(rest[1]) if len(rest) == 2 else None
        if version is None:
            raise NotFound(path)
        return version

    def lookup(self, path: str) -> Node:
        version = self._resolve(path)
        return self._dir if version is None else self._node(version)

    def readdir(self, path: str) -> dict[str, Node]:
        directory, rest = self._split(path)
        if not rest:  # the files `directory` holds now (not directories, nor staged files never uploaded)
            return {name: self._dir for name, node in self.bucket.readdir(directory).items()
                    if node.obj is not None and not node.is_dir}
        if len(rest) > 1:
            raise NotFound(path)
        return {name: self._node(version) for name, version in self._files(directory, rest[0]).items()}

    def xattrs(self, path: str) -> dict[str, bytes]:
        version = self._resolve(path)
        if version is None:
            return {}
        return {VERSION_ID_XATTR: version.version_id.encode(), ETAG_XATTR: version.etag.strip('"').encode()}

    def hide(self, directory: str, entries: dict[str, Node]) -> None:
        """Drop a bucket entry named `.versions` from the listing of `directory`: that name is this view's."""
        if entries.pop(VERSIONS, None) is None:
            return
        with self._lock:
            reported, self._reported_hidden = self._reported_hidden, True
        if not reported:
            log.warning("%r: the bucket's own %s is hidden by the view of object versions "
                        "(logged once per mount)", self._key(directory, VERSIONS), VERSIONS)
