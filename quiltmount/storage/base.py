"""The object-store interface every backend implements (S3, local directory).

Keys are `/`-separated strings relative to the store's root (a bucket, or a local directory).  Every read
names the exact object identity it expects (`ObjectInfo.etag` / `version_id`), so one open file can never
mix bytes of two versions: a backend raises `ObjectChanged` instead.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import mimetypes
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from quiltmount.errors import NotFound, StorageError


#: The Content-Type of an object whose name says nothing (S3's own default is `binary/octet-stream`).
DEFAULT_CONTENT_TYPE = "application/octet-stream"
#: The Content-Type of a directory marker (`dir/`), as s3fs gives its own.
DIRECTORY_CONTENT_TYPE = "application/x-directory"
#: The Content-Types s3fs reads as a directory's (Nextcloud gives its directories `httpd/unix-directory`).
DIRECTORY_CONTENT_TYPES = frozenset({DIRECTORY_CONTENT_TYPE, "httpd/unix-directory"})


def is_directory_type(content_type: str | None) -> bool:
    """Whether `content_type` is a directory's, its parameters (`; charset=UTF-8`) left out, as s3fs reads it."""
    return (content_type or "").partition(";")[0].strip() in DIRECTORY_CONTENT_TYPES


def content_type(key: str) -> str:
    """The Content-Type an upload to `key` is given, as s3fs gives it: from the name's extension in the
    system's MIME types (`/etc/mime.types`, else Python's built-in table), the one before it when the last one
    is unknown (`x.json.tmp`), else `application/octet-stream`; `application/x-directory` for a marker."""
    if key.endswith("/"):
        return DIRECTORY_CONTENT_TYPE
    if not mimetypes.inited:
        mimetypes.init()
    suffixes = key.rsplit("/", 1)[-1].split(".")[1:]
    for suffix in suffixes[::-1][:2]:
        found = mimetypes.types_map.get("." + suffix.lower())
        if found:
            return found
    return DEFAULT_CONTENT_TYPE


@dataclass(frozen=True)
class ObjectInfo:
    """One object as a listing or HEAD reports it, or as a package manifest names it.

    Reads are pinned to `version_id` when there is one, else to `etag`.  Package entries of unversioned
    buckets have neither: their `content_hash` (the manifest's) is their identity, checked after reading.
    `checksum_sha256` is the SHA-256 checksum the store keeps for the object, when `head` was asked for it and
    the store has one (S3's `ChecksumSHA256`: base64, with `-<parts>` after a multipart upload's), and after an
    upload that sent one.  `content_hash` is `<type>:<value>`.
    """

    key: str
    size: int
    mtime: float
    etag: str = ""
    version_id: str | None = None
    content_hash: str | None = None
    checksum_sha256: str | None = None
    #: The Content-Type a HEAD reported (None from listings); not part of the object's identity.
    content_type: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ObjectVersion:
    """One version of a key as a version listing reports it: an object, or a delete marker (`deleted`)."""

    key: str
    #: "null" for the object written while the bucket's versioning was off (or never on).
    version_id: str
    mtime: float
    #: The key's current version (when it was listed).
    is_latest: bool
    deleted: bool = False
    size: int = 0
    etag: str = ""

    def info(self) -> ObjectInfo:
        """This version as an object whose reads are pinned to it.

        The current "null" version is pinned by its ETag, without a version id: S3 takes `VersionId=null`, but
        some S3-compatible servers refuse it (moto, on HEAD)."""
        pinned = None if self.version_id == "null" and self.is_latest else self.version_id
        return ObjectInfo(self.key, self.size, self.mtime, self.etag, pinned)


@dataclass
class VersionPage:
    """One page of a delimiter listing of versions: the versions and delete markers of the keys directly under
    the prefix (in key order, each key's newest first) and the child prefixes (ending in /)."""

    versions: list[ObjectVersion] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)


@dataclass
class ListPage:
    """One page of a delimiter listing: objects directly under the prefix and child prefixes (ending in /)."""

    objects: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)


class ObjectStream(io.RawIOBase):
    """A streamed object body as a raw binary file: `read` reads up to n bytes; an exception in `errors` is
    raised as `fail(exc)` (a `StorageError`), so readers see the same errors as from the store's methods.
    `etag` and `mtime`: the object's, as `head` gives them, when the store said."""

    def __init__(self, read: Callable[[int], bytes], close: Callable[[], None],
                 fail: Callable[[Exception], StorageError], errors: tuple[type[Exception], ...], *,
                 etag: str | None = None, mtime: float | None = None) -> None:
        super().__init__()
        self._read, self._close, self._fail, self._errors = read, close, fail, errors
        self.etag, self.mtime = etag, mtime

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._read(len(buffer))
        except self._errors as exc:
            raise self._fail(exc) from exc
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._close()
        super().close()


#: Called with the id of a multipart upload once the store has created it (`ObjectStore.part_upload`).
UploadStarted = Callable[[str], None]


class PartUpload(Protocol):
    """A multipart upload of a local file that takes its parts while the file is still being written."""

    key: str
    #: Bytes per part: part N holds bytes [(N-1) * part_size, N * part_size) of the file.
    part_size: int

    def add_part(self, number: int) -> None:
        """Start sending part `number` (1-based): its bytes in the file must not change any more."""

    def checksum(self, size: int) -> str:
        """The SHA-256 checksum (S3's composite `<base64>-<parts>`) of a file of `size` bytes once completed:
        sends the remaining parts and waits for all, without completing."""

    def finish(self, size: int) -> ObjectInfo:
        """Send the remaining parts of a file of `size` bytes, wait for all, and complete the upload."""

    def abort(self) -> bool:
        """Drop the upload and whatever parts it sent; False if S3 could not be told (it stays there)."""


class ObjectStore(ABC):
    """A flat key space with delimiter listings and ranged, identity-pinned reads."""

    #: A short unique name for this store (e.g. `s3://bucket`), used in log lines and status.
    name: str
    #: Remote: its bytes are worth keeping in the disk cache (a local directory's are not).
    remote: bool = True
    #: The S3-compatible endpoint the store is reached at (`--endpoint-url`, `AWS_ENDPOINT_URL`); None for AWS
    #: and local directories.
    endpoint_url: str | None = None

    @property
    def cache_name(self) -> str:
        """The store's name in cache keys, unique across endpoints (two servers may have the same bucket)."""
        return self.name

    @abstractmethod
    def check_access(self) -> None:
        """Raise a `UserError` with a one-line reason if the store cannot be used (missing, denied...)."""

    @abstractmethod
    def list_dir(self, prefix: str) -> Iterator[ListPage]:
        """Yield pages of the objects and child prefixes directly under `prefix` ('' or ending in '/')."""

    @abstractmethod
    def head(self, key: str, *, checksum: bool = False) -> ObjectInfo:
        """Return the object at `key`; raise `NotFound` if there is none.  With `checksum`, its
        `checksum_sha256` too, if the store keeps one."""

    def head_metadata(self, key: str) -> tuple[ObjectInfo, dict[str, str]]:
        """The object at `key` and its user metadata (names lowercase, without `x-amz-meta-`), in one
        request; raise `NotFound` if there is none.  The default, for a store that keeps none: no metadata."""
        return self.head(key), {}

    def pinned(self, obj: ObjectInfo) -> ObjectInfo:
        """`obj` with its reads pinned: itself if a versionId or an ETag pins it already (a package entry of an
        unversioned bucket has neither), else with the ETag its key has now (a HEAD); raise `NotFound` if the
        key holds no object."""
        if obj.version_id or obj.etag:
            return obj
        return dataclasses.replace(obj, etag=self.head(obj.key).etag)

    @abstractmethod
    def prefix_exists(self, prefix: str) -> bool:
        """True when at least one key starts with `prefix` (which ends in '/')."""

    @abstractmethod
    def get_range(self, obj: ObjectInfo, start: int, end: int) -> bytes:
        """Return bytes [start, end) of exactly the object version `obj` names: all of them, never fewer.

        Raises `ObjectChanged` if the object was replaced or deleted since `obj` was obtained, and a
        `StorageError` once the store's own retries of a failing network or server are spent.
        """

    @abstractmethod
    def list_keys(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, recursively (no delimiter), in key order."""

    @abstractmethod
    def get_object(self, key: str) -> bytes:
        """The whole object (for small objects: pointers, manifests); raise `NotFound` if there is none."""

    def open_object(self, key: str) -> IO[bytes]:
        """The whole object as a stream, for objects too large to hold (a manifest of millions of entries);
        raise `NotFound` if there is none.  Reading raises `StorageError`.  The default reads it whole."""
        return io.BytesIO(self.get_object(key))

    @abstractmethod
    def put_object(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None) -> None:
        """Create or replace the object at `key` with `data` (and user `metadata`, where the store keeps it:
        ENOTSUP otherwise)."""

    @abstractmethod
    def delete_object(self, key: str) -> None:
        """Delete the object at `key` (no error if it does not exist)."""

    @abstractmethod
    def put_file(self, key: str, path: str, *, metadata: Mapping[str, str] | None = None,
                 on_start: UploadStarted | None = None) -> ObjectInfo:
        """Upload the local file `path` to `key` in one step: the object appears whole or not at all.
        `metadata`: its user metadata, as in `put_object`; `on_start`: see `part_upload`."""

    @abstractmethod
    def copy_object(self, source_key: str, key: str, *, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        """Copy an object inside the store (server-side where the store can), with the source's user metadata,
        or with `metadata` instead (S3's MetadataDirective REPLACE: `key` may then be `source_key`, which
        changes an object's metadata without sending its bytes again)."""

    def list_versions(self, prefix: str) -> Iterator[VersionPage]:
        """Yield pages of every version and delete marker of the keys directly under `prefix` ('' or ending
        in '/'), and the child prefixes.  The default: the store keeps no versions (ENOTSUP)."""
        raise StorageError(f"{self.name}: keeps no object versions", errno.ENOTSUP)

    def object_versions(self, key: str) -> list[ObjectVersion]:
        """Every version and delete marker of `key`, newest first; [] if it never had one.  The default, for
        a store that keeps no versions: its current object, as version "null"."""
        try:
            obj = self.head(key)
        except NotFound:
            return []
        return [ObjectVersion(key, "null", obj.mtime, True, size=obj.size, etag=obj.etag)]

    def part_upload(self, key: str, path: str, *, metadata: Mapping[str, str] | None = None,
                    on_start: UploadStarted | None = None) -> PartUpload | None:
        """A multipart upload of local file `path` to `key` (with user `metadata`) that can take parts while
        the file is still being written, or None if the store uploads files in one step only (the default).
        `on_start` is called with the upload's id once the store has created it, before its first part: what a
        process that dies before completing or aborting it leaves behind, for the next one to abort."""
        return None

    def abort_upload(self, key: str, upload_id: str) -> bool:
        """Abort the multipart upload `upload_id` of `key` another process started and did not finish; False if
        there was none (completed or aborted already).  The default: a store without multipart uploads."""
        return False

    def close(self) -> None:
        """Release connections; the default does nothing."""
