"""What cached blocks are keyed by: names of bytes that never change.

In memory, a block is the bytes one place gave (`Identity.name`: store, key, version, ETag, and a package
entry's content hash).  On disk, where blocks outlive the mount and are shared by every mount, a package
entry's bytes are named by its content hash alone (type and value), so the same file in two revisions, two
packages or two registries is one cache entry; those blocks are served only once their entry was read whole
and matched the hash (`Identity.checked_on_disk`): a wrong copy somewhere must not spoil the others.  Until
then they are tagged with their origin, which pins the exact bytes they were read from (the entry's versionId,
else the ETag the reads were pinned to), so that the check of one version's bytes never vouches for blocks read
from another.  A package entry of an unversioned bucket has no origin until it is pinned to an ETag
(`ObjectStore.pinned`): until then its blocks are read from the disk, never written to it.  A bucket object is
named by its store (endpoint and bucket), key, versionId and ETag, so an object replaced in S3 is a new name
and never served stale.  Local directories are not cached on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from quiltmount.storage.base import ObjectInfo, ObjectStore


@dataclass(frozen=True)
class Identity:
    """An object's bytes in the block caches: equal names are the same bytes from the same place."""

    name: str
    #: The store the bytes come from (e.g. `s3://bucket`), for `cache status`.
    source: str = field(compare=False)
    #: The bytes' name in the disk cache, shared by every place that holds them; None: not kept on disk
    #: (nothing pins the bytes, or the store is local).
    disk_key: str | None = field(compare=False, default=None)
    #: Blocks written to disk wait for a check of the whole content before they are served (package entries).
    checked_on_disk: bool = field(compare=False, default=False)
    #: Of a package entry: what pins the bytes read from its source (its `name`, holding a versionId or an
    #: ETag); its blocks wait on disk tagged with it.  None: nothing pins them, so none is written to disk.
    origin: str | None = field(compare=False, default=None)

    @property
    def written_to_disk(self) -> bool:
        """Whether blocks read from the source are written to the disk cache."""
        return self.disk_key is not None and (self.origin is not None or not self.checked_on_disk)


def object_identity(store: ObjectStore, obj: ObjectInfo) -> Identity:
    name = json.dumps([store.cache_name, obj.key, obj.version_id, obj.etag, obj.content_hash], ensure_ascii=False)
    pinned = store.remote and bool(obj.version_id or obj.etag)
    if obj.content_hash:
        return Identity(name, store.name, f"hash:{obj.content_hash}" if store.remote else None, True,
                        name if pinned else None)
    return Identity(name, store.name, f"object:{name}" if pinned else None)
