"""What cached blocks are keyed by: names of bytes that never change.

In memory, a block is the bytes one place gave (`Identity.name`: store, key, version, ETag, and a package
entry's content hash).  On disk, where blocks outlive the mount and are shared by every mount, a package
entry's bytes are named by its content hash alone (type and value), so the same file in two revisions, two
packages or two registries is one cache entry; those blocks are served only once their entry was read whole
and matched the hash (`Identity.checked_on_disk`): a wrong copy somewhere must not spoil the others.  A
bucket object is named by its store (endpoint and bucket), key, versionId and ETag, so an object replaced in
S3 is a new name and never served stale.  Local directories are not cached on disk.
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


def object_identity(store: ObjectStore, obj: ObjectInfo) -> Identity:
    name = json.dumps([store.cache_name, obj.key, obj.version_id, obj.etag, obj.content_hash], ensure_ascii=False)
    if obj.content_hash:
        return Identity(name, store.name, f"hash:{obj.content_hash}" if store.remote else None, True)
    pinned = store.remote and bool(obj.version_id or obj.etag)
    return Identity(name, store.name, f"object:{name}" if pinned else None)
