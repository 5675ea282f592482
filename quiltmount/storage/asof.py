"""A bucket as it was at one moment (`mount --as-of`), from its version listings; read-only.

Each key shows its newest version whose LastModified is not after the moment; a key whose such version is a
delete marker is absent, and so is a key created later.  Reads are pinned to the chosen version.  Directories
come from the listings' common prefixes, which say that some version exists under a prefix, not when: a
directory whose keys all came later shows empty.

It is a store, not a tree, so that the bucket tree (`fs/tree.py`) serves it with its own caches unchanged.
It serves what that tree asks of a store: delimiter listings, HEAD, prefix checks and pinned ranged reads.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator, Mapping

from quiltmount.errors import NotFound, StorageError
from quiltmount.storage.base import ListPage, ObjectInfo, ObjectStore, ObjectVersion, UploadStarted


def format_moment(moment: float) -> str:
    """`2026-12-07T03:15:02Z`: a moment as log lines and errors show it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


class AsOfStore(ObjectStore):
    """`inner` (a store that keeps versions) as it was at `moment` (Unix seconds)."""

    def __init__(self, inner: ObjectStore, moment: float) -> None:
        self.inner = inner
        self.moment = moment
        self.name = inner.name
        self.remote = inner.remote

    @property
    def cache_name(self) -> str:
        return self.inner.cache_name  # a version's bytes are the same whoever reads them

    def check_access(self) -> None:
        self.inner.check_access()

    def list_dir(self, prefix: str) -> Iterator[ListPage]:
        # The last key whose version at the moment is known: its older versions may go on in the next page.
        decided: str | None = None
        for page in self.inner.list_versions(prefix):
            objects: list[ObjectInfo] = []
            for version in page.versions:
                if version.key == decided or version.mtime > self.moment:
                    continue
                decided = version.key
                if not version.deleted:
                    objects.append(version.info())
            yield ListPage(objects, page.prefixes)

    def object_versions(self, key: str) -> list[ObjectVersion]:
        return [version for version in self.inner.object_versions(key) if version.mtime <= self.moment]

    def head(self, key: str, *, checksum: bool = False) -> ObjectInfo:
        """The version of `key` at the moment (no checksum: a version listing has none)."""
        versions = self.object_versions(key)
        if not versions or versions[0].deleted:
            raise NotFound(f"{self.name}/{key}: no object as of {format_moment(self.moment)}")
        return versions[0].info()

    def prefix_exists(self, prefix: str) -> bool:
        """Whether some version (of any time, as in listings) exists under `prefix`."""
        for page in self.inner.list_versions(prefix):
            if page.versions or page.prefixes:
                return True
        return False

    def get_range(self, obj: ObjectInfo, start: int, end: int) -> bytes:
        return self.inner.get_range(obj, start, end)

    def list_keys(self, prefix: str) -> Iterator[ObjectInfo]:
        raise StorageError(f"{self.name}: recursive listings are not served as of a moment", errno.ENOTSUP)

    def get_object(self, key: str) -> bytes:
        raise StorageError(f"{self.name}/{key}: whole-object reads are not served as of a moment", errno.ENOTSUP)

    def _read_only(self, key: str) -> StorageError:
        return StorageError(f"{self.name}/{key}: read-only (as of {format_moment(self.moment)})", errno.EROFS)

    def put_object(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None) -> None:
        raise self._read_only(key)

    def delete_object(self, key: str) -> None:
        raise self._read_only(key)

    def put_file(self, key: str, path: str, *, metadata: Mapping[str, str] | None = None,
                 on_start: UploadStarted | None = None) -> ObjectInfo:
        raise self._read_only(key)

    def copy_object(self, source_key: str, key: str, *, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        raise self._read_only(key)
