"""`Bucket`: quilt3's `quilt3.Bucket` (spec section 7) on boto3 clients from `get_boto3_session()`.

Same edge cases, exceptions and messages as quilt3 8.0.0; S3 endpoints come from botocore's usual
configuration (`AWS_ENDPOINT_URL`, ...).  Uploads carry SHA-256 checksums (multipart with 8 MiB parts from
8 MiB on); a tqdm progress bar is shown on a terminal unless `QUILT_MINIMIZE_STDOUT=true`.
"""

from __future__ import annotations

import os
import pathlib
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse
from urllib.request import url2pathname

from quiltmount.catalog import QuiltException, search_api

PART_SIZE = 8 * 1024 * 1024


def _max_concurrency() -> int:
    try:
        value = int(os.environ.get("QUILT_TRANSFER_MAX_CONCURRENCY", "10"))
    except ValueError:
        return 10
    return value if value > 0 else 10


def _local_path(path: Any) -> str:
    """quilt3's `fix_url` + `PhysicalKey.from_url`: an absolute real path, trailing `/` kept."""
    if not path:
        raise ValueError("Empty URL")
    text = str(path)
    parsed = urlparse(text)
    if parsed.scheme and not os.path.splitdrive(text)[0]:
        if parsed.scheme != "file":
            raise QuiltException(f"Only local paths and file:// URLs are supported here, not {text!r}")
        if parsed.netloc not in ("", "localhost"):
            raise ValueError("Unexpected hostname")
        if not parsed.path.startswith("/"):
            raise ValueError("Relative paths are not allowed")
        local = url2pathname(parsed.path)
        trailing = parsed.path.endswith("/")
    else:
        local = str(pathlib.Path(text).expanduser().resolve().absolute())
        trailing = text.endswith(os.sep) or (os.altsep is not None and text.endswith(os.altsep))
    real = os.path.realpath(local)
    return real + "/" if trailing and not real.endswith("/") else real


def _sanity_check(rel_path: str) -> None:
    for part in rel_path.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"Invalid relative path: {rel_path!r}")


def _progress(total: int, desc: str | None = None):
    from tqdm import tqdm

    disabled = (os.environ.get("QUILT_MINIMIZE_STDOUT", "").lower() == "true"
                or not (sys.stderr is not None and sys.stderr.isatty()))
    return tqdm(desc=desc, total=total, unit="B", unit_scale=True, disable=disabled, file=sys.stderr)


class Bucket:
    """An S3 bucket, like `quilt3.Bucket`."""

    def __init__(self, bucket_uri: str) -> None:
        parsed = urlparse(str(bucket_uri))
        if parsed.scheme != "s3":
            raise QuiltException("Bucket URI must be an S3 URI")
        if not parsed.netloc:
            raise QuiltException("Missing bucket")
        query = parse_qs(parsed.query)
        version_id = query.pop("versionId", [None])[0]
        if query:
            raise QuiltException(f"Unexpected S3 query string: {parsed.query!r}")
        if unquote(parsed.path)[1:] or version_id is not None:
            raise QuiltException("Bucket URI shouldn't contain a path or a version ID")
        self.name = parsed.netloc
        self._client = None
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Bucket('s3://{self.name}')"

    @property
    def client(self):
        with self._client_lock:
            if self._client is None:
                from botocore.config import Config

                from quiltmount.auth import get_boto3_session

                self._client = get_boto3_session().client(
                    "s3", config=Config(max_pool_connections=_max_concurrency()))
            return self._client

    # -- listing -------------------------------------------------------------------------------------------

    def _list(self, prefix: str) -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
            objects += page.get("Contents", [])
        return objects

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
        versions: list = []
        markers: list = []
        prefixes: list = []
        for page in self.client.get_paginator("list_object_versions").paginate(**params):
            versions += page.get("Versions", [])
            markers += page.get("DeleteMarkers", [])
            prefixes += page.get("CommonPrefixes", [])
        return (versions, markers) if recursive else (prefixes, versions, markers)

    # -- transfers -----------------------------------------------------------------------------------------

    def _run(self, jobs: list[tuple], total: int, work) -> None:
        with _progress(total) as bar:
            lock = threading.Lock()

            def advance(count: int) -> None:
                with lock:
                    bar.update(count)

            if len(jobs) == 1:
                work(*jobs[0], advance)
                return
            with ThreadPoolExecutor(max_workers=_max_concurrency()) as pool:
                for future in [pool.submit(work, *job, advance) for job in jobs]:
                    future.result()

    def _upload(self, src: str, key: str, advance) -> None:
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                max_concurrency=_max_concurrency())
        self.client.upload_file(src, self.name, key, ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                                Config=config, Callback=advance)

    def _download(self, key: str, version_id: str | None, dest: str, advance) -> None:
        from boto3.s3.transfer import TransferConfig

        pathlib.Path(dest).parent.mkdir(parents=True, exist_ok=True)
        extra = {"VersionId": version_id} if version_id else None
        config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                max_concurrency=_max_concurrency())
        self.client.download_file(self.name, key, dest, ExtraArgs=extra, Config=config, Callback=advance)

    @staticmethod
    def _join(key: str) -> str:
        return key.lstrip("/")

    def put_file(self, key: str, path: str) -> None:
        """Upload the local file `path` to `key` (a `key` ending in `/` gets the file's name appended)."""
        dest = self._join(key)
        src = _local_path(path)
        if src.endswith("/"):
            self._put_tree(src, dest)
            return
        if dest.endswith("/") or dest == "":
            dest += src.rsplit("/", 1)[-1]
        if not os.path.isfile(src):
            raise QuiltException(f"Not a file: {src!r}")
        self._run([(src, dest)], os.path.getsize(src), self._upload)

    def put_dir(self, key: str, directory: str) -> None:
        """Upload every file below `directory` to the prefix `key` (`''`: the bucket root)."""
        if key and key[-1] != "/":
            key += "/"
        src_path = pathlib.Path(directory)
        if not src_path.is_dir():
            raise QuiltException("Provided directory does not exist")
        self._put_tree(os.path.realpath(str(src_path)) + "/", self._join(key))

    def _put_tree(self, src: str, dest: str) -> None:
        if not (dest.endswith("/") or dest == ""):
            raise ValueError("Destination path must end in /")
        jobs = []
        total = 0
        root = pathlib.Path(src)
        for file in root.rglob("*"):
            try:
                if file.is_file():
                    size = file.stat().st_size
                else:
                    continue
            except FileNotFoundError:
                continue
            rel = file.relative_to(root).as_posix()
            _sanity_check(rel)
            jobs.append((str(file), dest + rel))
            total += size
        if not jobs:
            raise QuiltException("No objects to download.")
        self._run(jobs, total, self._upload)

    def fetch(self, key: str, path: str) -> None:
        """Download `key` to `path`; a `key` ending in `/` downloads the whole prefix into the directory
        `path` (which must end in `/`)."""
        src = self._join(key)
        dest = _local_path(path)
        if src == "" or src.endswith("/"):
            if not dest.endswith("/"):
                raise ValueError("Destination path must end in /")
            jobs = []
            total = 0
            for item in self._list(src):
                name = item["Key"]
                if not name.startswith(src):
                    raise ValueError(f"Unexpected key: {name!r}")
                rel = name[len(src):]
                _sanity_check(rel)
                jobs.append((name, None, dest + rel))
                total += item.get("Size", 0)
            if not jobs:
                raise QuiltException("No objects to download.")
            self._run(jobs, total, self._download)
            return
        if dest.endswith("/"):
            dest += src.rsplit("/", 1)[-1]
        head = self.client.head_object(Bucket=self.name, Key=src)
        self._run([(src, head.get("VersionId"), dest)], head["ContentLength"], self._download)

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


__all__ = ["Bucket"]
