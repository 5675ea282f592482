"""One mount's stores: its source, plus any bucket or local file a package manifest points into."""

from __future__ import annotations

import threading
from typing import Any

from quiltmount.storage.base import ObjectStore
from quiltmount.storage.counting import CountingStore, RequestStats
from quiltmount.storage.local import LocalStore
from quiltmount.units import PART_WORKERS


class StoreSet:
    """Creates stores on demand (one per bucket, sharing the mount's S3 options and request counters)."""

    def __init__(self, *, profile: str | None = None, region: str | None = None,
                 endpoint_url: str | None = None, stats: RequestStats | None = None,
                 timeout: float | None = None, session: Any = None, part_workers: int = PART_WORKERS) -> None:
        self.profile = profile
        self.part_workers = part_workers  # parts of uploads and copies in flight per bucket
        self.session = session  # a boto3 session for every bucket (the Quilt stack's credentials), or None
        self.timeout = timeout  # S3 request timeout (None: the S3 store's default)
        self.region = region
        self.endpoint_url = endpoint_url
        self.stats = stats or RequestStats()
        self._buckets: dict[str, ObjectStore] = {}
        self._local: ObjectStore | None = None
        self._lock = threading.Lock()

    def bucket(self, name: str) -> ObjectStore:
        with self._lock:
            store = self._buckets.get(name)
        if store is None:
            from quiltmount.storage.s3 import S3Store

            created = CountingStore(S3Store(name, profile=self.profile, region=self.region,
                                            endpoint_url=self.endpoint_url, timeout=self.timeout,
                                            session=self.session, part_workers=self.part_workers), self.stats)
            with self._lock:
                store = self._buckets.setdefault(name, created)
            if store is not created:  # another thread made this bucket's store meanwhile: use that one
                created.close()
        return store

    def directory(self, path: str) -> ObjectStore:
        """A local directory source."""
        return CountingStore(LocalStore(path), self.stats)

    def local(self) -> ObjectStore:
        """The local file system (`file://` physical keys are absolute paths: keys are paths without '/')."""
        with self._lock:
            if self._local is None:
                self._local = CountingStore(LocalStore("/"), self.stats)
            return self._local

    def close(self) -> None:
        with self._lock:
            stores = list(self._buckets.values()) + ([self._local] if self._local else [])
        for store in stores:
            store.close()
