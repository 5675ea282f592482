"""S3 backend on boto3: default credential chain, profiles, regions and S3-compatible endpoints."""

from __future__ import annotations

import base64
import errno
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

import boto3
import cachetools
import botocore.exceptions
from botocore.config import Config
from s3transfer.utils import ReadFileChunk

from quiltmount.errors import AccessDenied, NotFound, ObjectChanged, StorageError, UserError
from quiltmount.retry import call_with_retries
from quiltmount.storage.base import (ListPage, ObjectInfo, ObjectStore, ObjectStream, ObjectVersion, UploadStarted,
                                     VersionPage, content_type, is_directory_type)
from quiltmount.storage.endpoint import environment_endpoint_url
from quiltmount.storage.presigned import PresignedRanges
from quiltmount.units import PART_SIZE, PART_WORKERS

#: Connections kept per client: read-ahead workers and FUSE threads share them.
MAX_POOL_CONNECTIONS = 64
#: Reads of a staged part for its checksum (a reused buffer below the mmap threshold: no page faults).
HASH_READ_SIZE = 1 << 20
#: CopyObject handles objects up to 5 GiB; larger ones are copied part by part, in parts of this size.
MAX_SINGLE_COPY = 5 << 30
COPY_PART_SIZE = 512 << 20
#: Seconds S3 may stay silent (to connect, or between two bytes of an answer) before a request is abandoned.
DEFAULT_TIMEOUT = 10.0
#: The same for the answer to an upload (PUT, UploadPart), and to a request that assembles an object
#: (CompleteMultipartUpload, copies).
UPLOAD_TIMEOUT = 60.0
ASSEMBLY_TIMEOUT = 600.0
#: Tries per request (the first one included): botocore's for listings, HEADs and uploads, ours for reads.
ATTEMPTS = 4
#: Pause before the first retry of a read; it doubles with each retry (0.2 + 0.4 + 0.8 s at most in all).
READ_BACKOFF = 0.2
#: After a read of a key failed all its attempts, reads of that key get one attempt each for this long (or
#: until one succeeds): the kernel re-reads a page whose read failed at once, and a program should get its
#: EIO after one round of retries, not two.
FAILING_WINDOW = 30.0

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Failures that say nothing about the object: the network or the server, worth another try.
TRANSIENT_ERRORS = (botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError,
                    botocore.exceptions.IncompleteReadError, botocore.exceptions.ChecksumError)
TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                             "RequestTimeoutException", "InternalError", "ServiceUnavailable"})


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _http_status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _is_not_found(exc: botocore.exceptions.ClientError) -> bool:
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchVersion") or _http_status(exc) == 404


def _is_denied(exc: botocore.exceptions.ClientError) -> bool:
    return _error_code(exc) in ("403", "AccessDenied", "Forbidden") or _http_status(exc) == 403


class ShortBody(Exception):
    """An answer with fewer bytes than asked for (a cut connection, a proxy): never a valid read."""


def is_transient(exc: BaseException) -> bool:
    """True for failures another try may cure: 5xx, throttling, timeouts, resets, cut or short bodies."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return _http_status(exc) >= 500 or _error_code(exc) in TRANSIENT_CODES
    return isinstance(exc, (ShortBody, *TRANSIENT_ERRORS))


def _read_body(response: dict) -> bytes:
    """The whole body; the connection is closed, not reused, if reading it fails half-way."""
    body = response["Body"]
    try:
        return body.read()
    except BaseException:
        body.close()
        raise


class S3Store(ObjectStore):
    """One bucket.  Keys are full keys in the bucket; the mount's prefix is handled by the tree."""

    def __init__(self, bucket: str, *, profile: str | None = None, region: str | None = None,
                 endpoint_url: str | None = None, timeout: float | None = None,
                 session: boto3.Session | None = None, part_workers: int = PART_WORKERS) -> None:
        """`session` (e.g. the Quilt stack's refreshable credentials) replaces the default chain/`profile`;
        `part_workers` parts of uploads (and of server-side copies) are in flight at once."""
        self.bucket = bucket
        self.name = f"s3://{bucket}"
        if session is None:
            try:
                session = boto3.Session(profile_name=profile, region_name=region)
            except botocore.exceptions.ProfileNotFound:
                raise UserError(f"AWS profile not found: {profile}") from None
        custom_endpoint = endpoint_url or environment_endpoint_url()
        self.endpoint_url = custom_endpoint

        silence = timeout or DEFAULT_TIMEOUT

        def client(attempts: int, read_timeout: float = silence, s3: dict[str, Any] | None = None,
                   **options: Any) -> Any:
            # S3-compatible servers (MinIO, moto, Ceph...) rarely serve virtual-hosted names.
            s3 = {**({"addressing_style": "path"} if custom_endpoint else {}), **(s3 or {})}
            config = Config(**options,
                max_pool_connections=MAX_POOL_CONNECTIONS,
                connect_timeout=silence,
                read_timeout=read_timeout,
                retries={"total_max_attempts": attempts, "mode": "standard"},
                s3=s3 or None,
            )
            return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)

        self.client = client(ATTEMPTS)
        # GETs retry in `_retry_read`: botocore cannot retry a body cut half-way, and one count of attempts
        # covering every failure keeps the time a read can take bounded (see docs/SEMANTICS.md, "Faults").
        # SigV4 named explicitly: botocore would presign with the legacy SigV2 otherwise.
        self._reads = client(1, signature_version="s3v4")
        self._presigned = PresignedRanges(self._reads, bucket, silence)
        # A server answers an upload once it has checked the body's checksum, and a multipart completion or a
        # copy once it has assembled the object (minutes for large ones; real S3 sends keep-alive spaces
        # meanwhile, S3-compatible servers often stay silent): silence there is not a stall.
        # Every body it sends carries a SHA-256 checksum header, which is signed and which S3 checks: over
        # plain HTTP botocore would also hash the body for the signature, a second SHA-256 of every byte
        # (measured: 10 ms of CPU per 8 MiB part, with awscrt's signer) that proves nothing more.
        self._uploads = client(ATTEMPTS, max(silence, UPLOAD_TIMEOUT), s3={"payload_signing_enabled": False})
        self._slow = client(ATTEMPTS, max(silence, ASSEMBLY_TIMEOUT))
        self.part_workers = part_workers
        self._parts = ThreadPoolExecutor(part_workers, thread_name_prefix="part")
        self.max_single_copy, self.copy_part_size = MAX_SINGLE_COPY, COPY_PART_SIZE
        self._failing: cachetools.TTLCache[str, bool] = cachetools.TTLCache(10_000, FAILING_WINDOW)
        self._failing_lock = threading.Lock()

    @property
    def cache_name(self) -> str:
        return f"{self.endpoint_url or 'aws'} {self.name}"

    def check_access(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.NoCredentialsError:
            raise UserError("no AWS credentials found: configure a profile (--profile), "
                            "environment variables or an instance role") from None
        except botocore.exceptions.ClientError as exc:
            if _is_not_found(exc):
                raise UserError(f"bucket does not exist: {self.bucket}") from None
            if _is_denied(exc):
                raise UserError(f"access denied to bucket {self.bucket} (check credentials and policy)") from None
            raise UserError(f"cannot access bucket {self.bucket}: {exc}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise UserError(f"cannot reach S3 for bucket {self.bucket}: {exc}") from None

    def _fail(self, action: str, key: str, exc: Exception) -> StorageError:
        if isinstance(exc, botocore.exceptions.ClientError):
            if _is_not_found(exc):
                return NotFound(f"{action} s3://{self.bucket}/{key}: not found")
            if _is_denied(exc):
                return AccessDenied(f"{action} s3://{self.bucket}/{key}: access denied")
        return StorageError(f"{action} s3://{self.bucket}/{key}: {exc}")

    def list_dir(self, prefix: str) -> Iterator[ListPage]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                yield ListPage(
                    objects=[
                        ObjectInfo(item["Key"], int(item["Size"]), item["LastModified"].timestamp(), item["ETag"])
                        for item in page.get("Contents", ())
                    ],
                    prefixes=[item["Prefix"] for item in page.get("CommonPrefixes", ())],
                )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._fail("list", prefix, exc) from exc

    def list_versions(self, prefix: str) -> Iterator[VersionPage]:
        """ListObjectVersions with `Delimiter='/'`: every version under `prefix` is listed, so the cost grows
        with the history kept there.  `prefix` may also be a whole key (`object_versions`)."""
        paginator = self.client.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                versions = [_version(item, deleted=False) for item in page.get("Versions", ())]
                versions += [_version(item, deleted=True) for item in page.get("DeleteMarkers", ())]
                # boto3 hands versions and delete markers apart: back into S3's order (stable, so versions
                # of one second keep theirs; a delete marker and a version of one second are told apart only
                # by which is current).
                versions.sort(key=lambda version: (version.key, -version.mtime, not version.is_latest))
                yield VersionPage(versions, [item["Prefix"] for item in page.get("CommonPrefixes", ())])
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._fail("list versions", prefix, exc) from exc

    def object_versions(self, key: str) -> list[ObjectVersion]:
        found: list[ObjectVersion] = []
        for page in self.list_versions(key):
            mine = [version for version in page.versions if version.key == key]
            found += mine
            if len(mine) < len(page.versions) or page.prefixes:
                break  # longer keys sort after `key`: its versions are all listed
        return found

    def head(self, key: str, *, checksum: bool = False) -> ObjectInfo:
        return _head_info(key, self._head_response(key, checksum=checksum))

    def head_metadata(self, key: str) -> tuple[ObjectInfo, dict[str, str]]:
        response = self._head_response(key)
        return _head_info(key, response), _user_metadata(response)

    def _head_response(self, key: str, *, checksum: bool = False) -> dict:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key,
                                           **({"ChecksumMode": "ENABLED"} if checksum else {}))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._fail("head", key, exc) from exc

    def prefix_exists(self, prefix: str) -> bool:
        try:
            response = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._fail("list", prefix, exc) from exc
        return bool(response.get("KeyCount") or response.get("Contents") or response.get("CommonPrefixes"))

    def _retry_read(self, key: str, what: str, call: Callable[[], T]) -> T:
        """`call()`, tried while it fails transiently: ATTEMPTS times with exponential backoff, or once if
        reading `key` has just failed that way (FAILING_WINDOW)."""
        with self._failing_lock:
            attempts = 1 if key in self._failing else ATTEMPTS

        def before_retry(exc: Exception, attempt: int, pause: float) -> None:
            log.warning("%s failed (attempt %d of %d), retrying in %.2f s: %s", what, attempt, attempts, pause, exc)

        try:
            result = call_with_retries(call, attempts=attempts, pause=READ_BACKOFF, retry_on=is_transient,
                                       before_retry=before_retry,
                                       jitter=True)  # readers failed together retry apart
        except Exception as exc:
            if is_transient(exc):  # every attempt failed
                with self._failing_lock:
                    self._failing[key] = True
            raise
        with self._failing_lock:
            self._failing.pop(key, None)
        return result

    def get_range(self, obj: ObjectInfo, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        params = {"Bucket": self.bucket, "Key": obj.key, "Range": f"bytes={start}-{end - 1}"}
        if obj.version_id:
            params["VersionId"] = obj.version_id
        elif obj.etag:
            params["IfMatch"] = obj.etag

        def attempt() -> bytes:
            declined: int | None = None  # the presigned path's answer, when it gave no bytes (0: TLS failed)
            if self._presigned.enabled:
                data, status = self._presigned.get(obj.key, obj.version_id, obj.etag, start, end)
                if data is not None:
                    self._presigned.answered()
                    return data
                declined = status
            data = _read_body(self._reads.get_object(**params))
            if len(data) != end - start:
                raise ShortBody(f"expected {end - start} bytes, got {len(data)}")
            if declined is not None:
                self._presigned.boto3_answered(f"HTTP {declined}" if declined else "TLS failure")
            return data

        try:
            return self._retry_read(obj.key, f"read s3://{self.bucket}/{obj.key} bytes {start}-{end - 1}", attempt)
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) == "PreconditionFailed" or _http_status(exc) == 412:
                raise ObjectChanged(f"s3://{self.bucket}/{obj.key} changed since it was opened") from exc
            if _is_not_found(exc):
                raise ObjectChanged(f"s3://{self.bucket}/{obj.key} was deleted since it was opened") from exc
            raise self._fail("read", obj.key, exc) from exc
        except (botocore.exceptions.BotoCoreError, ShortBody) as exc:
            raise self._fail("read", obj.key, exc) from exc

    def list_keys(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    yield ObjectInfo(item["Key"], int(item["Size"]), item["LastModified"].timestamp(), item["ETag"])
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._fail("list", prefix, exc) from exc

    def get_object(self, key: str) -> bytes:
        try:
            return self._retry_read(key, f"get s3://{self.bucket}/{key}",
                                    lambda: _read_body(self._reads.get_object(Bucket=self.bucket, Key=key)))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._fail("get", key, exc) from exc

    def open_object(self, key: str) -> ObjectStream:
        try:
            response = self._retry_read(key, f"get s3://{self.bucket}/{key}",
                                        lambda: self._reads.get_object(Bucket=self.bucket, Key=key))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._fail("get", key, exc) from exc
        body = response["Body"]
        return ObjectStream(body.read, body.close, lambda exc: self._fail("read", key, exc),
                            (botocore.exceptions.BotoCoreError, OSError), etag=response["ETag"],
                            mtime=response["LastModified"].timestamp())

    def put_object(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256",
                                   ContentType=content_type(key), **_metadata_args(metadata))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._fail("put", key, exc) from exc

    def delete_object(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._fail("delete", key, exc) from exc

    def put_file(self, key: str, path: str, *, metadata: Mapping[str, str] | None = None,
                 on_start: UploadStarted | None = None) -> ObjectInfo:
        size = os.path.getsize(path)
        if size >= PART_SIZE:
            return self.part_upload(key, path, metadata=metadata, on_start=on_start).finish(size)
        try:
            with open(path, "rb") as file:
                data = file.read()
            # The algorithm named as well: S3-compatible servers (moto) keep a checksum only then.
            checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
            response = self._uploads.put_object(
                Bucket=self.bucket, Key=key, Body=data, ChecksumAlgorithm="SHA256", ChecksumSHA256=checksum,
                ContentType=content_type(key), **_metadata_args(metadata))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._fail("upload", key, exc) from exc
        return _uploaded_info(key, size, response, checksum)

    def part_upload(self, key: str, path: str, *, metadata: Mapping[str, str] | None = None,
                    on_start: UploadStarted | None = None) -> PartUpload:
        return PartUpload(key, path, bucket=self.bucket, client=self.client, upload_client=self._uploads,
                          assembly_client=self._slow, pool=self._parts, head=self.head,
                          abort_upload=self.abort_upload, fail=self._fail,
                          metadata=metadata, on_start=on_start)

    def abort_upload(self, key: str, upload_id: str) -> bool:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) == "NoSuchUpload":
                return False
            raise self._fail("abort the upload of", key, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._fail("abort the upload of", key, exc) from exc
        return True

    def copy_object(self, source_key: str, key: str, *, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        """As s3fs copies: a copy onto itself (new `metadata`) keeps the object's Content-Type, a copy to
        another key (a rename) gets the Content-Type of its new name, with the source's user metadata unless
        `metadata` replaces it (so both send it, MetadataDirective REPLACE)."""
        try:
            response = self._head_response(source_key)
            source = _head_info(source_key, response)
            replace = {"ContentType": _copy_content_type(source, key),
                       "Metadata": dict(_user_metadata(response) if metadata is None else metadata)}
            if source.size <= self.max_single_copy:
                # The copy's SHA-256 checksum computed anew: the source's may be a multipart upload's, which
                # some servers (moto) would otherwise give the copy as its whole-object checksum.
                response = self._slow.copy_object(Bucket=self.bucket, Key=key,
                                                   CopySource={"Bucket": self.bucket, "Key": source_key},
                                                   ChecksumAlgorithm="SHA256", MetadataDirective="REPLACE", **replace)
                etag = response["CopyObjectResult"]["ETag"]
            else:
                etag = self._multipart_copy(source, key, replace)["ETag"]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._fail("copy", source_key, exc) from exc
        return ObjectInfo(key, source.size, time.time(), etag)

    def _multipart_copy(self, source: ObjectInfo, key: str, replace: dict[str, Any]) -> dict:
        """UploadPartCopy of `source` in `copy_part_size` parts, in parallel, each pinned to the source's ETag
        (a source replaced meanwhile fails the copy instead of mixing two versions).  The copy has the
        metadata of `replace` (Metadata, ContentType): a multipart upload never takes the source's."""
        part_size = self.copy_part_size
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **replace)["UploadId"]

        def copy_part(number: int, start: int) -> dict:
            response = self._slow.upload_part_copy(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                CopySource={"Bucket": self.bucket, "Key": source.key}, CopySourceIfMatch=source.etag,
                CopySourceRange=f"bytes={start}-{min(start + part_size, source.size) - 1}")
            return {"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]}

        try:
            with ThreadPoolExecutor(self.part_workers, thread_name_prefix="copy") as pool:
                starts = range(0, source.size, part_size)
                parts = list(pool.map(copy_part, range(1, len(starts) + 1), starts))
            return self._slow.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                         MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                self.abort_upload(key, upload_id)
            except StorageError as exc:  # the copy's own error is the one to raise
                log.warning("could not abort the multipart copy to %r (its upload stays in S3): %s", key, exc)
            raise

    def close(self) -> None:
        self._parts.shutdown(wait=False, cancel_futures=True)
        self._presigned.close()
        for client in (self.client, self._reads, self._uploads, self._slow):
            client.close()


class _PartBody(ReadFileChunk):
    """A part's bytes, streamed from its staged file, which fail the part at once if the file gets shorter:
    a truncate while the part is sent would leave the request short of its Content-Length, and the server
    would wait for the rest until the read timeout (60 s), the part's worker with it."""

    def read(self, amount: int | None = None) -> bytes:
        left = max(self._size - self._amount_read, 0)
        wanted = left if amount is None or amount < 0 else min(left, amount)
        data = super().read(amount)
        if len(data) < wanted:
            raise StorageError(f"{self._fileobj.name}: truncated while a part of it was sent", errno.EIO)
        return data


def _sha256_of_range(path: str, start: int, size: int) -> tuple[str, int]:
    """(base64 SHA-256, length) of bytes [start, start+size) of the file, clipped at its end."""
    digest = hashlib.sha256()
    buffer = bytearray(HASH_READ_SIZE)
    view = memoryview(buffer)
    length = 0
    with open(path, "rb", buffering=0) as file:
        file.seek(start)
        while length < size:
            count = file.readinto(view[:min(HASH_READ_SIZE, size - length)])
            if not count:
                break
            digest.update(view[:count])
            length += count
    return base64.b64encode(digest.digest()).decode(), length


def _head_info(key: str, response: dict) -> ObjectInfo:
    """The object a HeadObject answer describes."""
    version = response.get("VersionId")
    return ObjectInfo(key, int(response["ContentLength"]), response["LastModified"].timestamp(),
                      response["ETag"], None if version in (None, "null") else version,
                      checksum_sha256=response.get("ChecksumSHA256"), content_type=response.get("ContentType"))


def _copy_content_type(source: ObjectInfo, key: str) -> str:
    """The Content-Type of `source`'s copy to `key`: its own onto itself, and a directory's wherever it goes (a
    legacy `dir` object is a directory only by it); else its new name's, as s3fs gives a renamed file."""
    kept = source.content_type or "binary/octet-stream"
    return kept if key == source.key or is_directory_type(kept) else content_type(key)


def _user_metadata(response: dict) -> dict[str, str]:
    """A HeadObject answer's user metadata, names lowercase (HTTP header names are case-insensitive)."""
    return {name.lower(): value for name, value in response.get("Metadata", {}).items()}


def _metadata_args(metadata: Mapping[str, str] | None) -> dict[str, Any]:
    """The keyword arguments that send user `metadata` with a request, if any."""
    return {} if metadata is None else {"Metadata": dict(metadata)}


def _version(item: dict, *, deleted: bool) -> ObjectVersion:
    """A `Versions` or `DeleteMarkers` item of ListObjectVersions."""
    return ObjectVersion(item["Key"], str(item.get("VersionId") or "null"), item["LastModified"].timestamp(),
                         bool(item.get("IsLatest")), deleted, int(item.get("Size", 0)), item.get("ETag", ""))


def _uploaded_info(key: str, size: int, response: dict, checksum: str) -> ObjectInfo:
    """The object an upload made; `checksum` is its SHA-256 checksum as S3 keeps it (the one we sent)."""
    version = response.get("VersionId")
    return ObjectInfo(key, size, time.time(), response["ETag"], None if version in (None, "null") else version,
                      checksum_sha256=checksum)


def _composite_checksum(parts: list[dict]) -> str:
    """S3's SHA-256 checksum of a multipart upload: of its parts' digests, then `-<parts>`."""
    digests = b"".join(base64.b64decode(part["ChecksumSHA256"]) for part in parts)
    return f"{base64.b64encode(hashlib.sha256(digests).digest()).decode()}-{len(parts)}"


class PartUpload:
    """A multipart upload of a local file, in `PART_SIZE` parts with SHA-256 checksums.

    Parts can be added while the file is still being written (`add_part` once its bytes are final), so a
    sequential writer's bytes are on their way to S3 before it closes; `finish` uploads the parts not added
    yet and completes.  Parts run on the store's shared part pool, which bounds the parts in flight of all
    the uploads to one bucket to `part_workers`; each streams from the file.  The S3 upload is created with
    the first part, so an upload aborted before any part costs no request.
    """

    part_size = PART_SIZE

    def __init__(self, key: str, path: str, *, bucket: str, client: Any, upload_client: Any, assembly_client: Any,
                 pool: Executor, head: Callable[[str], ObjectInfo], abort_upload: Callable[[str, str], bool],
                 fail: Callable[[str, str, Exception], StorageError],
                 metadata: Mapping[str, str] | None = None, on_start: UploadStarted | None = None) -> None:
        """What the upload needs of its store: `client` creates it, `upload_client` sends the parts and
        `assembly_client` completes it (their timeouts differ); `pool` runs the parts; `head` finds an
        object whose completion was answered as gone; `abort_upload` aborts it (`S3Store.abort_upload`);
        `fail` turns a boto error into the store's `StorageError`; `metadata` is the object's user metadata;
        `on_start` is told the upload's id once it is created, before any part is sent."""
        self.key = key
        self.metadata = metadata
        self.path = path
        self.bucket = bucket
        self._client = client
        self._upload_client = upload_client
        self._assembly_client = assembly_client
        self._pool = pool
        self._head = head
        self._abort_upload = abort_upload
        self._fail = fail
        self._lock = threading.Lock()
        self._upload_id: str | None = None
        self._parts: dict[int, Future] = {}
        self._aborted = False
        self._on_start = on_start

    def _id(self) -> str:
        with self._lock:
            if self._upload_id is None:
                self._upload_id = self._client.create_multipart_upload(
                    Bucket=self.bucket, Key=self.key, ChecksumAlgorithm="SHA256",
                    ContentType=content_type(self.key), **_metadata_args(self.metadata))["UploadId"]
                if self._on_start is not None:  # under the lock: no part goes before it is recorded
                    self._on_start(self._upload_id)
            return self._upload_id

    def _send(self, number: int) -> dict:
        """Upload part `number`, streamed from the staged file: never a part-sized buffer in memory.

        The file is read twice, once for the checksum and once for the body (the second time from the page
        cache): reading each part into memory instead cost up to `part_workers` x 8 MiB of RSS outside the
        cache budget, and more CPU (a fresh 8 MiB buffer takes 2,048 page faults; measured on a 256 MiB `cp`:
        daemon CPU 0.93-1.05 s -> 0.75-0.83 s, peak RSS of a 2 GiB `cp` 140 -> 86 MiB).  Should the bytes change
        in between, S3 refuses the part (its checksum no longer matches; moto does not check) and the upload
        fails into its retries.
        """
        upload_id = self._id()
        start = (number - 1) * self.part_size
        checksum, length = _sha256_of_range(self.path, start, self.part_size)
        with _PartBody.from_filename(self.path, start, length, enable_callbacks=False) as body:
            if len(body) != length:
                raise StorageError(f"{self.path}: truncated before part {number} of it was sent", errno.EIO)
            response = self._upload_client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=upload_id,
                                                        PartNumber=number, Body=body, ContentLength=length,
                                                        ChecksumSHA256=checksum)
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}

    def add_part(self, number: int) -> None:
        """Start sending part `number` (1-based): its bytes in the file must not change any more."""
        with self._lock:
            if not self._aborted and number not in self._parts:
                self._parts[number] = self._pool.submit(self._send, number)

    def _all_parts(self, size: int) -> list[dict]:
        """Send the remaining parts of a file of `size` bytes and wait for all: what completing needs."""
        for number in range(1, (size + self.part_size - 1) // self.part_size + 1):
            self.add_part(number)
        with self._lock:
            futures = [self._parts[number] for number in sorted(self._parts)]
        return [future.result() for future in futures]

    def checksum(self, size: int) -> str:
        """The SHA-256 checksum the object will have once completed, before completing it (so that the caller
        can still drop it): sends the remaining parts and waits for all.  A failure aborts the upload."""
        try:
            return _composite_checksum(self._all_parts(size))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            self.abort()
            raise self._fail("upload", self.key, exc) from exc
        except BaseException:
            self.abort()
            raise

    def finish(self, size: int) -> ObjectInfo:
        """Send the remaining parts of a file of `size` bytes, wait for all, complete the upload."""
        parts: list[dict] | None = None
        try:
            parts = self._all_parts(size)
            response = self._assembly_client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self._id(), MultipartUpload={"Parts": parts})
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            completing = parts is not None  # every part is in: the error is the completion's
            if completing and isinstance(exc, botocore.exceptions.ClientError) and _error_code(exc) == "NoSuchUpload":
                landed = self._landed(parts, size)
                if landed is not None:
                    return landed
            self.abort()  # never leave an incomplete upload behind (it costs storage and is invisible)
            raise self._fail("upload", self.key, exc) from exc
        except BaseException:
            self.abort()
            raise
        return _uploaded_info(self.key, size, response, _composite_checksum(parts))

    def _landed(self, parts: list[dict], size: int) -> ObjectInfo | None:
        """The object, if a completion whose answer was lost (and so was retried, and found the upload
        gone) did assemble it: its ETag is then the one S3 gives exactly these parts."""
        digests = b"".join(bytes.fromhex(part["ETag"].strip('"')) for part in parts)
        expected = f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"'
        try:
            landed = self._head(self.key)
        except StorageError:
            return None
        if landed.etag != expected or landed.size != size:
            return None
        log.info("%r: the upload's completion was answered as gone, but the object has its parts: done", self.key)
        return dataclasses.replace(landed, checksum_sha256=_composite_checksum(parts))

    def abort(self) -> bool:
        """Drop the upload: parts not started are cancelled, the S3 upload (if any) is aborted; False if the
        abort failed (the upload stays in S3)."""
        with self._lock:
            self._aborted = True
            futures = list(self._parts.values())
        for future in futures:
            future.cancel()
        for future in futures:
            if not future.cancelled():
                try:
                    future.result()
                except Exception:  # the upload is being dropped: a failed part changes nothing
                    pass
        with self._lock:
            upload_id = self._upload_id
        if upload_id is not None:
            try:
                self._abort_upload(self.key, upload_id)  # (False: S3 no longer has it, which is as good)
            except StorageError as exc:
                log.warning("could not abort the multipart upload of %r: %s", self.key, exc)
                return False
        return True
