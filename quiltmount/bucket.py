"""`Bucket`: quilt3's `quilt3.Bucket` (spec section 7) on boto3 clients from `get_boto3_session()`.

Same edge cases, exceptions and messages as quilt3 8.0.0; S3 endpoints come from botocore's usual
configuration (`AWS_ENDPOINT_URL`, ...).  Like quilt3's `copy_file`, every transfer is one of: a local file or
directory to S3 (upload), S3 to a local path (download), S3 to S3 (server-side copy); so `put_file` accepts an
`s3://` source and `fetch` an `s3://` destination.  Uploads carry SHA-256 checksums (multipart with 8 MiB
parts from 8 MiB on) and are skipped when the destination already holds the same bytes.  Reads (GET, HEAD,
LIST) fall back to anonymous requests when the signed ones are denied (public buckets); writes never do.
A tqdm progress bar is shown on a terminal unless `QUILT_MINIMIZE_STDOUT=true`.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import math
import os
import pathlib
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from quiltmount.auth import get_boto3_session
from quiltmount.catalog import search_api
from quiltmount.errors import QuiltException, QuiltmountError
from quiltmount.packages.manifest import PhysicalKey, checksum_chunk_size, format_physical_key, s3_physical_key
from quiltmount.units import PART_SIZE

#: quilt3's `UPLOAD_ETAG_OPTIMIZATION_THRESHOLD`: from this size on, an upload whose destination already holds
#: the same bytes is skipped.
UPLOAD_SKIP_THRESHOLD = 1024

Advance = Callable[[int], None]
Task = Callable[[Advance], None]


class S3Api(Enum):
    """The read operations quilt3 may send unsigned (its `data_transfer.S3Api`)."""

    GET_OBJECT = "GET_OBJECT"
    HEAD_OBJECT = "HEAD_OBJECT"
    LIST_OBJECT_VERSIONS = "LIST_OBJECT_VERSIONS"
    LIST_OBJECTS_V2 = "LIST_OBJECTS_V2"


class S3NoValidClientError(QuiltmountError):
    """Neither the signed nor an anonymous request may read (quilt3's exception of the same name)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _max_concurrency() -> int:
    try:
        value = int(os.environ.get("QUILT_TRANSFER_MAX_CONCURRENCY", "10"))
    except ValueError:
        return 10
    return value if value > 0 else 10


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                          max_concurrency=_max_concurrency())


# -- locations (quilt3's `PhysicalKey.from_url(fix_url(path))`) -------------------------------------------------

def _local_location(path: str, directory: bool) -> PhysicalKey:
    real = os.path.realpath(path)
    return PhysicalKey("file", None, real + "/" if directory and not real.endswith("/") else real)


def _location(path: Any) -> PhysicalKey:
    """An `s3://` URL, a `file://` URL or a local path (relative to the cwd, `~` expanded), as quilt3 reads
    them; a trailing `/` makes it a directory (or prefix)."""
    if not path:
        raise ValueError("Empty URL")
    text = str(path)
    parsed = urlparse(text)
    if not parsed.scheme or os.path.splitdrive(text)[0]:
        trailing = text.endswith(os.sep) or (os.altsep is not None and text.endswith(os.altsep))
        return _local_location(str(pathlib.Path(text).expanduser().resolve().absolute()), trailing)
    if parsed.scheme == "s3":
        return s3_physical_key(parsed)
    if parsed.scheme != "file":
        raise ValueError(f"Unexpected scheme: {parsed.scheme!r}")
    if parsed.netloc not in ("", "localhost"):
        raise ValueError("Unexpected hostname")
    if not parsed.path:
        raise ValueError("Missing path")
    if not parsed.path.startswith("/"):
        raise ValueError("Relative paths are not allowed")
    if parsed.query:
        raise ValueError("Unexpected query")
    return _local_location(url2pathname(parsed.path), parsed.path.endswith("/"))


def _is_dir(location: PhysicalKey) -> bool:
    return location.path.rsplit("/", 1)[-1] == ""


def _join(location: PhysicalKey, rel_path: str) -> PhysicalKey:
    if location.version_id is not None:
        raise ValueError("Cannot append paths to URLs with a version ID")
    path = location.path.rstrip("/") + "/" + rel_path.lstrip("/") if location.path else rel_path.lstrip("/")
    return PhysicalKey(location.scheme, location.bucket, path)


def _sanity_check(rel_path: str) -> None:
    for part in rel_path.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"Invalid relative path: {rel_path!r}")


# -- signed and anonymous reads (quilt3's `S3ClientProvider`) ------------------------------------------------

def _denied(client: Any, api: S3Api, params: dict[str, Any]) -> bool:
    """quilt3's `check_*_works_for_client`, inverted.  Objects are probed with a HEAD, denied with a bare 403
    (which S3 also answers for a missing key to callers without ListBucket); listings with a one-key LIST,
    denied with AccessDenied."""
    from botocore.exceptions import ClientError

    try:
        if api is S3Api.LIST_OBJECTS_V2:
            client.list_objects_v2(**params, MaxKeys=1)
        elif api is S3Api.LIST_OBJECT_VERSIONS:
            client.list_object_versions(**params, MaxKeys=1)
        else:
            client.head_object(**{k: v for k, v in params.items() if k in ("Bucket", "Key", "VersionId")})
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        return code == ("AccessDenied" if api in (S3Api.LIST_OBJECTS_V2, S3Api.LIST_OBJECT_VERSIONS) else "403")
    return False


class _ReadClients:
    """The client each read of one `Bucket` call uses: the signed one, unless it is denied and an anonymous
    one is not.  As in quilt3, the choice is probed once per (operation, bucket) and kept for the rest of the
    call only, since a bucket may be public under one prefix and private under another."""

    def __init__(self, signed: Callable[[], Any], anonymous: Callable[[], Any]) -> None:
        self._candidates = (signed, anonymous)
        self._chosen: dict[tuple[S3Api, str], Any] = {}
        self._lock = threading.Lock()

    def get(self, api: S3Api, bucket: str, params: dict[str, Any]) -> Any:
        with self._lock:
            if (api, bucket) not in self._chosen:
                for candidate in self._candidates:
                    client = candidate()
                    if not _denied(client, api, params):
                        self._chosen[api, bucket] = client
                        break
                else:
                    raise S3NoValidClientError(f"S3 AccessDenied for {api} on bucket: {bucket}")
            return self._chosen[api, bucket]


def _list_objects(clients: _ReadClients, bucket: str, prefix: str) -> list[dict[str, Any]]:
    params = {"Bucket": bucket, "Prefix": prefix}
    client = clients.get(S3Api.LIST_OBJECTS_V2, bucket, params)
    return [item for page in client.get_paginator("list_objects_v2").paginate(**params)
            for item in page.get("Contents", [])]


def _size_and_version(clients: _ReadClients, source: PhysicalKey) -> tuple[int, str | None]:
    if source.scheme == "file":
        if not os.path.isfile(source.path):
            raise QuiltException(f"Not a file: {source.path!r}")
        return os.path.getsize(source.path), None
    params = {"Bucket": source.bucket, "Key": source.path}
    if source.version_id is not None:
        params["VersionId"] = source.version_id
    head = clients.get(S3Api.HEAD_OBJECT, source.bucket, params).head_object(**params)
    return head["ContentLength"], head.get("VersionId")


def _list_tree(clients: _ReadClients, source: PhysicalKey) -> Iterator[tuple[str, int]]:
    """(relative path, size) of every file below a local directory or S3 prefix (quilt3's `list_url`)."""
    if source.scheme == "file":
        root = pathlib.Path(source.path)
        for file in root.rglob("*"):
            try:
                if file.is_file():
                    yield file.relative_to(root).as_posix(), file.stat().st_size
            except FileNotFoundError:
                continue
        return
    if source.version_id is not None:
        raise ValueError(f"Directories cannot have version IDs: {format_physical_key(source)}")
    for item in _list_objects(clients, source.bucket, source.path):
        if not item["Key"].startswith(source.path):
            raise ValueError(f"Unexpected key: {item['Key']!r}")
        yield item["Key"][len(source.path):], item["Size"]


# -- unchanged uploads (quilt3's `_reuse_remote_file`) -------------------------------------------------------

def _part_digests(path: str, size: int, algorithm: str) -> list[bytes]:
    """Digests of the parts a multipart upload of `size` bytes has (quilt3's and boto3's part size)."""
    chunk = checksum_chunk_size(size)
    with open(path, "rb") as stream:
        return [hashlib.new(algorithm, data).digest() for data in iter(functools.partial(stream.read, chunk), b"")]


def _same_bytes(head: dict[str, Any], path: str, size: int) -> bool:
    """Whether the object `head` describes holds the local file's bytes: same size and SHA-256 checksum
    (whole-object, or composite `<sha256 of part digests>-<parts>` from 8 MiB on), or, for objects without a
    SHA-256 checksum and not KMS-encrypted, the same MD5 ETag."""
    if head["ContentLength"] != size:
        return False
    multipart = size >= PART_SIZE
    remote = head.get("ChecksumSHA256")
    if remote is not None:
        checksum, _, parts = remote.partition("-")
        expected_parts = math.ceil(size / checksum_chunk_size(size)) if multipart else None
        if (int(parts) if parts else None) != expected_parts:
            return False
        digests = _part_digests(path, size, "sha256")
        local = hashlib.sha256(b"".join(digests)).digest() if multipart else digests[0]
        return checksum == base64.b64encode(local).decode()
    if head.get("ServerSideEncryption") == "aws:kms":
        return False
    digests = _part_digests(path, size, "md5")
    etag = f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}" if multipart else digests[0].hex()
    return head["ETag"] == f'"{etag}"'


# -- progress and parallel transfers ---------------------------------------------------------------------------

def _progress(total: int, desc: str | None = None):
    from tqdm import tqdm

    disabled = (os.environ.get("QUILT_MINIMIZE_STDOUT", "").lower() == "true"
                or not (sys.stderr is not None and sys.stderr.isatty()))
    return tqdm(desc=desc, total=total, unit="B", unit_scale=True, disable=disabled, file=sys.stderr)


def _run(tasks: list[Task], total: int) -> None:
    with _progress(total) as bar:
        lock = threading.Lock()

        def advance(count: int) -> None:
            with lock:
                bar.update(count)

        if len(tasks) == 1:
            tasks[0](advance)
            return
        with ThreadPoolExecutor(max_workers=_max_concurrency()) as pool:
            for future in [pool.submit(task, advance) for task in tasks]:
                future.result()


class Bucket:
    """An S3 bucket, like `quilt3.Bucket`."""

    def __init__(self, bucket_uri: str) -> None:
        parsed = urlparse(str(bucket_uri))
        if parsed.scheme != "s3":
            raise QuiltException("Bucket URI must be an S3 URI")
        try:
            location = s3_physical_key(parsed)
        except ValueError as exc:
            raise QuiltException(str(exc)) from None
        if location.path or location.version_id is not None:
            raise QuiltException("Bucket URI shouldn't contain a path or a version ID")
        self.name = location.bucket
        self._clients: dict[bool, Any] = {}
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Bucket('s3://{self.name}')"

    def _get_client(self, anonymous: bool) -> Any:
        """A client of `get_boto3_session()`; unsigned if `anonymous` or if there are no credentials at all
        (so public buckets work without any), as quilt3 builds them."""
        with self._client_lock:
            if anonymous not in self._clients:
                from botocore import UNSIGNED
                from botocore.config import Config

                session = get_boto3_session()
                options: dict[str, Any] = {"max_pool_connections": _max_concurrency()}
                if anonymous or session.get_credentials() is None:
                    options["signature_version"] = UNSIGNED
                self._clients[anonymous] = session.client("s3", config=Config(**options))
            return self._clients[anonymous]

    @property
    def client(self) -> Any:
        """The signed client: every write, and every read it is allowed to make."""
        return self._get_client(anonymous=False)

    def _read_clients(self) -> _ReadClients:
        return _ReadClients(functools.partial(self._get_client, False), functools.partial(self._get_client, True))

    def _key_location(self, key: str) -> PhysicalKey:
        return _join(PhysicalKey("s3", self.name, ""), key)

    # -- listing -------------------------------------------------------------------------------------------

    def _list(self, prefix: str) -> list[dict[str, Any]]:
        return _list_objects(self._read_clients(), self.name, prefix)

    def keys(self) -> list[str]:
        """Every key in the bucket, in S3 order."""
        return [item.get("Key") for item in self._list("")]

    def ls(self, path: str | None = None, recursive: bool = False) -> tuple:
        """ListObjectVersions under `path/`: `(prefixes, versions, delete_markers)`, or with `recursive`
        `(versions, delete_markers)`; raw S3 dicts."""
        path = (path if path.endswith("/") else path + "/") if path else ""
        params: dict[str, Any] = {"Bucket": self.name, "Prefix": path}
        if not recursive:
            params["Delimiter"] = "/"
        client = self._read_clients().get(S3Api.LIST_OBJECT_VERSIONS, self.name, params)
        versions: list = []
        markers: list = []
        prefixes: list = []
        for page in client.get_paginator("list_object_versions").paginate(**params):
            versions += page.get("Versions", [])
            markers += page.get("DeleteMarkers", [])
            prefixes += page.get("CommonPrefixes", [])
        return (versions, markers) if recursive else (prefixes, versions, markers)

    # -- transfers -----------------------------------------------------------------------------------------

    def put_file(self, key: str, path: str) -> None:
        """Copy the file `path` (local, `file://` or `s3://`) to `key`; a `key` ending in `/` gets the file's
        name appended.  A `path` ending in `/` copies a whole directory or prefix (then `key` must end in `/`)."""
        self._copy(_location(path), self._key_location(key))

    def put_dir(self, key: str, directory: str) -> None:
        """Upload every file below the local `directory` to the prefix `key` (`''`: the bucket root)."""
        if key and key[-1] != "/":
            key += "/"
        src_path = pathlib.Path(directory)
        if not src_path.is_dir():
            raise QuiltException("Provided directory does not exist")
        self._copy(_local_location(str(src_path), directory=True), self._key_location(key))

    def fetch(self, key: str, path: str) -> None:
        """Download `key` to `path` (local, `file://`, or `s3://` for a server-side copy); a `key` ending in `/`
        copies the whole prefix into the directory `path` (which must end in `/`)."""
        self._copy(self._key_location(key), _location(path))

    def _copy(self, src: PhysicalKey, dest: PhysicalKey) -> None:
        """quilt3's `copy_file`: one file, or everything below a directory or prefix (`src` ending in `/`)."""
        clients = self._read_clients()
        if _is_dir(src):
            if not _is_dir(dest):
                raise ValueError("Destination path must end in /")
            tasks: list[Task] = []
            total = 0
            for rel_path, size in _list_tree(clients, src):
                _sanity_check(rel_path)
                tasks.append(self._transfer(clients, _join(src, rel_path), _join(dest, rel_path), size))
                total += size
            if not tasks:
                raise QuiltException("No objects to download.")
            _run(tasks, total)
            return
        if _is_dir(dest):
            dest = _join(dest, src.path.rsplit("/", 1)[-1])
        size, version_id = _size_and_version(clients, src)
        if src.version_id is None:
            src = dataclasses.replace(src, version_id=version_id)
        _run([self._transfer(clients, src, dest, size)], size)

    def _transfer(self, clients: _ReadClients, src: PhysicalKey, dest: PhysicalKey, size: int) -> Task:
        if dest.version_id is not None:
            raise ValueError("Cannot set VersionId on destination")
        if src.scheme == "file":
            return functools.partial(self._upload, clients, src.path, size, dest)
        if dest.scheme == "file":
            return functools.partial(self._download, clients, src, dest.path)
        return functools.partial(self._copy_object, src, dest)

    def _upload(self, clients: _ReadClients, src: str, size: int, dest: PhysicalKey, advance: Advance) -> None:
        if self._unchanged(clients, src, size, dest):
            advance(size)
            return
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import ClientError

        try:
            self.client.upload_file(src, dest.bucket, dest.path, ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                                    Config=_transfer_config(), Callback=advance)
        except S3UploadFailedError as exc:
            # boto3 wraps the S3 error; quilt3's callers get botocore's ClientError (e.g. AccessDenied) itself.
            if isinstance(exc.__context__, ClientError):
                raise exc.__context__ from None
            raise

    @staticmethod
    def _unchanged(clients: _ReadClients, src: str, size: int, dest: PhysicalKey) -> bool:
        """From 1 KiB on, HEAD the destination: True if it already holds the local file's bytes.  A missing
        or unreadable destination just means "upload"."""
        from botocore.exceptions import ClientError

        if size < UPLOAD_SKIP_THRESHOLD:
            return False
        params = {"Bucket": dest.bucket, "Key": dest.path}
        try:
            head = clients.get(S3Api.HEAD_OBJECT, dest.bucket, params).head_object(**params, ChecksumMode="ENABLED")
        except (ClientError, S3NoValidClientError):
            return False
        return _same_bytes(head, src, size)

    @staticmethod
    def _download(clients: _ReadClients, src: PhysicalKey, dest: str, advance: Advance) -> None:
        client = clients.get(S3Api.GET_OBJECT, src.bucket, {"Bucket": src.bucket, "Key": src.path})
        pathlib.Path(dest).parent.mkdir(parents=True, exist_ok=True)
        extra = {"VersionId": src.s3_version_id} if src.s3_version_id else None
        client.download_file(src.bucket, src.path, dest, ExtraArgs=extra, Config=_transfer_config(),
                             Callback=advance)

    def _copy_object(self, src: PhysicalKey, dest: PhysicalKey, advance: Advance) -> None:
        """Server-side copy with a SHA-256 checksum: CopyObject, or UploadPartCopy parts from 8 MiB on."""
        source = {"Bucket": src.bucket, "Key": src.path}
        if src.s3_version_id:
            source["VersionId"] = src.s3_version_id
        self.client.copy(source, dest.bucket, dest.path, ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                         Config=_transfer_config(), Callback=advance)

    # -- deletion ------------------------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        """Delete one object (HEAD first: a missing key raises botocore's ClientError 404)."""
        if not key:
            raise QuiltException("Must specify the key to delete")
        if key[-1] == "/":
            raise QuiltException("Must use delete_dir to delete directories")
        self._delete(key)

    def _delete(self, key: str) -> None:
        self.client.head_object(Bucket=self.name, Key=key)
        self.client.delete_object(Bucket=self.name, Key=key)

    def delete_dir(self, path: str) -> None:
        """Delete every object under the prefix `path` (which must end in `/`, or be `''`)."""
        if path and not path.endswith("/"):
            raise ValueError("Prefix must end with /")
        for item in self._list(path):
            self._delete(item["Key"])

    # -- search --------------------------------------------------------------------------------------------

    def search(self, query: str | dict, limit: int = 10) -> list[dict[str, Any]]:
        """Search this bucket and its packages through the catalog (`response["hits"]["hits"]`)."""
        return search_api(query, index=f"{self.name},{self.name}_packages", limit=limit)["hits"]["hits"]


__all__ = ["Bucket", "S3NoValidClientError"]
