"""Local-directory backend: a directory tree served with the same interface as a bucket.

Used by the quickstart and by tests that need no cloud.  An object's identity is its inode, mtime and size,
so a file replaced after it was opened is detected like a changed ETag.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator, Mapping

from quiltmount.errors import AccessDenied, NotFound, ObjectChanged, StorageError, UserError
from quiltmount.files import atomic_file, file_mode
from quiltmount.storage.base import ListPage, ObjectInfo, ObjectStore, ObjectStream, UploadStarted

#: Entries per listing page, as S3 pages its listings.
PAGE_SIZE = 1000
COPY_BUFFER = 1 << 20


def _fingerprint(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


class LocalStore(ObjectStore):
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.name = f"file://{self.root}"
        self.remote = False

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def check_access(self) -> None:
        if not os.path.isdir(self.root):
            raise UserError(f"source directory does not exist: {self.root}")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise UserError(f"source directory is not readable: {self.root}")

    def _fail(self, action: str, key: str, exc: OSError) -> StorageError:
        if isinstance(exc, FileNotFoundError | NotADirectoryError):
            return NotFound(f"{action} {self.name}/{key}: not found")
        if isinstance(exc, PermissionError):
            return AccessDenied(f"{action} {self.name}/{key}: permission denied")
        return StorageError(f"{action} {self.name}/{key}: {exc}", exc.errno or 5)

    def list_dir(self, prefix: str) -> Iterator[ListPage]:
        page = ListPage()
        try:
            entries = sorted(os.scandir(self._path(prefix.rstrip("/")) if prefix else self.root),
                             key=lambda entry: entry.name)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError | NotADirectoryError):
                return
            raise self._fail("list", prefix, exc) from exc
        for entry in entries:
            try:
                st = entry.stat()  # follows symlinks; a broken link is skipped below
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                page.prefixes.append(f"{prefix}{entry.name}/")
            elif stat.S_ISREG(st.st_mode):
                page.objects.append(ObjectInfo(prefix + entry.name, st.st_size, st.st_mtime, _fingerprint(st)))
            if len(page.objects) + len(page.prefixes) >= PAGE_SIZE:
                yield page
                page = ListPage()
        if page.objects or page.prefixes:
            yield page

    def head(self, key: str, *, checksum: bool = False) -> ObjectInfo:
        """The file at `key`; local files have no stored checksum, so `checksum` changes nothing."""
        try:
            st = os.stat(self._path(key))
        except OSError as exc:
            raise self._fail("head", key, exc) from exc
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"head {self.name}/{key}: not a file")
        return ObjectInfo(key, st.st_size, st.st_mtime, _fingerprint(st))

    def prefix_exists(self, prefix: str) -> bool:
        return os.path.isdir(self._path(prefix.rstrip("/")))

    def list_keys(self, prefix: str) -> Iterator[ObjectInfo]:
        base, _, _ = prefix.rpartition("/")
        directory = self._path(base) if base else self.root
        found: list[ObjectInfo] = []
        for dirpath, _, filenames in os.walk(directory, followlinks=False):
            relative_dir = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            relative_dir = "" if relative_dir == "." else relative_dir + "/"
            for name in filenames:
                key = relative_dir + name
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.append(ObjectInfo(key, st.st_size, st.st_mtime, _fingerprint(st)))
        yield from sorted(found, key=lambda obj: obj.key)  # S3's order: `a/b-c/x` before `a/b/x`

    def get_object(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as file:
                return file.read()
        except OSError as exc:
            raise self._fail("get", key, exc) from exc

    def open_object(self, key: str) -> ObjectStream:
        try:
            file = open(self._path(key), "rb")
            st = os.fstat(file.fileno())
        except OSError as exc:
            raise self._fail("get", key, exc) from exc
        return ObjectStream(file.read, file.close, lambda exc: self._fail("read", key, exc), (OSError,),
                            etag=_fingerprint(st), mtime=st.st_mtime)

    def put_object(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None) -> None:
        self._no_metadata(key, metadata)
        path = self._path(key)
        if key.endswith("/"):  # a directory marker is a directory here
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise self._fail("mkdir", key, exc) from exc
            return
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with atomic_file(path, mode=file_mode()) as file:
                file.write(data)
        except OSError as exc:
            raise self._fail("put", key, exc) from exc

    def delete_object(self, key: str) -> None:
        try:
            if key.endswith("/"):
                os.rmdir(self._path(key))
                return
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._fail("delete", key, exc) from exc

    def put_file(self, key: str, path: str, *, metadata: Mapping[str, str] | None = None,
                 on_start: UploadStarted | None = None) -> ObjectInfo:
        """(A copy into place: no multipart upload, so `on_start` is never called.)"""
        self._no_metadata(key, metadata)
        target = self._path(key)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with atomic_file(target, mode=file_mode()) as file, open(path, "rb") as source:
                shutil.copyfileobj(source, file, COPY_BUFFER)
            return self.head(key)
        except OSError as exc:
            raise self._fail("upload", key, exc) from exc

    def copy_object(self, source_key: str, key: str, *, metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        return self.put_file(key, self._path(source_key), metadata=metadata)

    def _no_metadata(self, key: str, metadata: Mapping[str, str] | None) -> None:
        """Local files keep no user metadata (`--posix-metadata` needs a bucket): refuse rather than drop it."""
        if metadata is not None:
            raise StorageError(f"{self.name}/{key}: a local directory keeps no object metadata", errno.ENOTSUP)

    def remove_empty_dirs(self, prefix: str, *, recursive: bool = False) -> None:
        """Remove the directory `prefix` if it is empty (with `recursive`, empty subdirectories first).

        Directories have no S3 counterpart, so deleting the last object under a prefix leaves one behind;
        the package registry calls this to clean up as quilt3 does.  Non-empty or missing directories are
        left alone; the store root itself is never removed.
        """
        top = self._path(prefix.strip("/")) if prefix.strip("/") else self.root
        if os.path.abspath(top) == self.root or not os.path.isdir(top) or os.path.islink(top):
            return
        if recursive:
            for dirpath, _, _ in os.walk(top, topdown=False, followlinks=False):
                if dirpath != top:
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        pass
        try:
            os.rmdir(top)
        except OSError:
            pass

    def get_range(self, obj: ObjectInfo, start: int, end: int) -> bytes:
        try:
            fd = os.open(self._path(obj.key), os.O_RDONLY)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise ObjectChanged(f"{self.name}/{obj.key} was deleted since it was opened") from exc
            raise self._fail("read", obj.key, exc) from exc
        try:
            if obj.etag and _fingerprint(os.fstat(fd)) != obj.etag:
                raise ObjectChanged(f"{self.name}/{obj.key} changed since it was opened")
            data = os.pread(fd, end - start, start)
        except OSError as exc:
            raise self._fail("read", obj.key, exc) from exc
        finally:
            os.close(fd)
        if len(data) != end - start:
            raise ObjectChanged(f"{self.name}/{obj.key}: expected {end - start} bytes, got {len(data)}")
        return data
