"""A store decorator that counts requests: totals per operation and requests in flight (for `status`)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import IO, TypeVar

from quiltmount.storage.base import (ListPage, ObjectInfo, ObjectStore, ObjectVersion, PartUpload, UploadStarted,
                                     VersionPage)

Page = TypeVar("Page")


class RequestStats:
    """Request counters shared by every store of one mount."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.totals: Counter[str] = Counter()
        self.in_flight = 0
        self.bytes_read = 0

    def snapshot(self) -> dict:
        with self.lock:
            return {"in_flight": self.in_flight, "totals": dict(self.totals), "bytes_read": self.bytes_read}


class CountingStore(ObjectStore):
    def __init__(self, inner: ObjectStore, stats: RequestStats | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.remote = inner.remote
        self.endpoint_url = inner.endpoint_url
        self.stats = stats or RequestStats()

    @property
    def cache_name(self) -> str:
        return self.inner.cache_name

    def _begin(self, operation: str | None) -> None:
        stats = self.stats
        with stats.lock:
            if operation:
                stats.totals[operation] += 1
            stats.in_flight += 1

    def _end(self, num_bytes: int = 0, operation: str | None = None) -> None:
        stats = self.stats
        with stats.lock:
            if operation:
                stats.totals[operation] += 1
            stats.in_flight -= 1
            stats.bytes_read += num_bytes

    def snapshot(self) -> dict:
        return self.stats.snapshot()

    def check_access(self) -> None:
        self.inner.check_access()

    def _pages(self, pages: Iterator[Page]) -> Iterator[Page]:
        """A paginated listing's pages, each counted as one `list` request."""
        while True:
            self._begin(None)  # the request count is known only once a page arrives
            page = None
            try:
                page = next(pages, None)
            finally:
                self._end(operation="list" if page is not None else None)
            if page is None:
                return
            yield page

    def list_dir(self, prefix: str) -> Iterator[ListPage]:
        yield from self._pages(self.inner.list_dir(prefix))

    def list_versions(self, prefix: str) -> Iterator[VersionPage]:
        yield from self._pages(self.inner.list_versions(prefix))

    def object_versions(self, key: str) -> list[ObjectVersion]:
        self._begin("list")
        try:
            return self.inner.object_versions(key)
        finally:
            self._end()

    def head(self, key: str, *, checksum: bool = False) -> ObjectInfo:
        self._begin("head")
        try:
            return self.inner.head(key, checksum=checksum)
        finally:
            self._end()

    def head_metadata(self, key: str) -> tuple[ObjectInfo, dict[str, str]]:
        self._begin("head")
        try:
            return self.inner.head_metadata(key)
        finally:
            self._end()

    def prefix_exists(self, prefix: str) -> bool:
        self._begin("list")
        try:
            return self.inner.prefix_exists(prefix)
        finally:
            self._end()

    def get_range(self, obj: ObjectInfo, start: int, end: int) -> bytes:
        self._begin("get")
        data = b""
        try:
            data = self.inner.get_range(obj, start, end)
            return data
        finally:
            self._end(len(data))

    def list_keys(self, prefix: str) -> Iterator[ObjectInfo]:
        self._begin("list")
        try:
            yield from self.inner.list_keys(prefix)
        finally:
            self._end()

    def get_object(self, key: str) -> bytes:
        self._begin("get")
        data = b""
        try:
            data = self.inner.get_object(key)
            return data
        finally:
            self._end(len(data))

    def open_object(self, key: str) -> IO[bytes]:
        self._begin("get")
        try:
            return self.inner.open_object(key)
        finally:
            self._end()

    def put_object(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None) -> None:
        self._begin("put")
        try:
            self.inner.put_object(key, data, metadata=metadata)
        finally:
            self._end()

    def delete_object(self, key: str) -> None:
        self._begin("delete")
        try:
            self.inner.delete_object(key)
        finally:
            self._end()

    def put_file(self, key: str, path: str, *, metadata: Mapping[str, str] | None = None,
                 on_start: UploadStarted | None = None) -> ObjectInfo:
        self._begin("put")
        try:
            return self.inner.put_file(key, path, metadata=metadata, on_start=on_start)
        finally:
            self._end()

    def copy_object(self, source_key: str, key: str, *, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        self._begin("copy")
        try:
            return self.inner.copy_object(source_key, key, metadata=metadata)
        finally:
            self._end()

    def part_upload(self, key: str, path: str, *, metadata: Mapping[str, str] | None = None,
                    on_start: UploadStarted | None = None) -> PartUpload | None:
        upload = self.inner.part_upload(key, path, metadata=metadata, on_start=on_start)
        return None if upload is None else _CountedPartUpload(upload, self)

    def abort_upload(self, key: str, upload_id: str) -> bool:
        return self.inner.abort_upload(key, upload_id)

    def close(self) -> None:
        self.inner.close()


class _CountedPartUpload:
    """A part upload counted like `put_file`: one `put`, in flight while it completes (its parts go out
    while the file is written, as part of that one upload)."""

    def __init__(self, inner: PartUpload, counter: CountingStore) -> None:
        self.inner = inner
        self.counter = counter
        self.key = inner.key
        self.part_size = inner.part_size

    def add_part(self, number: int) -> None:
        self.inner.add_part(number)

    def checksum(self, size: int) -> str:
        return self.inner.checksum(size)

    def finish(self, size: int) -> ObjectInfo:
        self.counter._begin("put")
        try:
            return self.inner.finish(size)
        finally:
            self.counter._end()

    def abort(self) -> bool:
        return self.inner.abort()
