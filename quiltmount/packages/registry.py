"""Quilt package registries, layout version 1, on any `ObjectStore` (spec sections 5.1-5.7).

```
<base>/.quilt/packages/<top_hash>                            manifest, content-addressed, shared by all packages
<base>/.quilt/named_packages/<namespace>/<name>/<timestamp>  pointer: the 64-hex top hash, no newline
<base>/.quilt/named_packages/<namespace>/<name>/latest
```

quilt3 behaves differently on S3 and on local registries (listing order, whether a missing package is an
error, empty-directory cleanup); a `Registry` follows the S3 rules unless its URL is a `file://` URL, whatever
store it is given (so a counting or caching wrapper changes nothing).

Deliberate differences from quilt3 (all about input quilt3 never writes itself):
* names are checked with `fullmatch` (quilt3's `re.match(...$)` accepts a trailing newline);
* `list_packages` skips names that are not valid package names (quilt3 yields e.g. `''` or `a/b/c` for
  stray objects, names it then refuses everywhere else); local registries are listed in sorted order, not
  `os.listdir` order;
* `list_package_versions` skips S3 pointer keys below a subdirectory of the package's (`ns/name/sub/x`, which
  quilt3 lists as a pointer `sub/x` and as a package `ns/name/sub`), and raises `InvalidPointer` for a
  pointer whose content is not a top hash (quilt3 returns the content as is, or fails the whole listing when
  it is not UTF-8), or that is larger than `MAX_POINTER_SIZE` (never downloaded);
* pointer contents are stripped of whitespace on local registries too (quilt3 strips only on S3);
* a full-length hash given to `resolve_hash` must be 64 lowercase hex digits (quilt3 uses it unchecked,
  which would let `../` into a key); only 64-hex names under `.quilt/packages/` count as manifests;
* `delete_package` of an unknown package on a local registry raises `NotFound` (quilt3: FileNotFoundError).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import IO, Any

from quiltmount.errors import NotFound, QuiltException, UserError
from quiltmount.names import LATEST, is_pointer_name, is_settable_pointer_name, is_valid_package_name
from quiltmount.packages.manifest import (
    Manifest, ManifestError, PhysicalKey, PhysicalKeyError, format_physical_key, is_top_hash, parse_manifest,
    parse_physical_key,
)
from quiltmount.storage.base import ObjectStore

__all__ = [
    "LATEST", "MAX_POINTER_SIZE", "InvalidPointer", "Registry", "RegistryError", "default_store_factory",
    "is_pointer_name", "is_settable_pointer_name", "is_valid_package_name", "registry_from_url",
    "validate_package_name", "validate_pointer_name",
]

_MIN_PREFIX = 6
#: A pointer holds 64 hex digits (quilt3 writes no newline); a larger pointer file is refused without reading it.
MAX_POINTER_SIZE = 1024


class RegistryError(UserError, QuiltException):
    """A registry operation quilt3 refuses with a `QuiltException`, with quilt3's message: a `QuiltException`
    for the quilt3-compatible API, a `UserError` (one line) for the command line."""


class InvalidPointer(RegistryError):
    """A pointer file whose content is not a top hash; only that package is affected."""


def validate_package_name(name: str) -> None:
    if not is_valid_package_name(name):
        raise RegistryError(f"Invalid package name: {name}.")


def validate_pointer_name(pointer: str, *, settable: bool = False) -> None:
    """Any pointer file's name (to read or delete one); `settable`: one quiltmount may write."""
    if settable and not is_settable_pointer_name(pointer):
        raise RegistryError(f"Invalid pointer name: {pointer!r} (expected Unix seconds or 'latest').")
    if not is_pointer_name(pointer):
        raise RegistryError(f"Invalid pointer name: {pointer!r}.")


def _find_method(store: ObjectStore, name: str) -> Callable[..., object] | None:
    """A backend-specific method, looked up through wrappers such as `CountingStore` (`.inner`)."""
    current: object | None = store
    while current is not None:
        method = getattr(current, name, None)
        if callable(method):
            return method
        current = getattr(current, "inner", None)
    return None


class Registry:
    """One registry (layout v1) on `store`.

    `url` is the registry's URL (`s3://bucket` or `file:///dir`): it decides S3 or local semantics, names the
    registry in messages and keys revision indexes.  `prefix` is where `.quilt/` lives in the store ('' or
    ending in '/'; quilt3 allows `s3://bucket/some/prefix` registries).
    """

    def __init__(self, store: ObjectStore, url: str, *, prefix: str = "") -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.store = store
        self.url = url.rstrip("/")
        self.is_local = url.startswith("file:")
        self.prefix = prefix
        self._root = f"{prefix}.quilt/"
        self._pointers_root = f"{self._root}named_packages/"
        self._manifests_root = f"{self._root}packages/"

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

    # -- keys ------------------------------------------------------------------------------------------

    def _package_dir(self, name: str) -> str:
        return f"{self._pointers_root}{name}/"

    def _namespace_dir(self, name: str) -> str:
        return f"{self._pointers_root}{name.partition('/')[0]}/"

    def pointer_key(self, name: str, pointer: str) -> str:
        return f"{self._pointers_root}{name}/{pointer}"

    def manifest_key(self, top_hash: str) -> str:
        return f"{self._manifests_root}{top_hash}"

    def manifest_etag(self, top_hash: str) -> str:
        """The ETag of the manifest named `top_hash` as the registry holds it now (one HEAD): the top hash
        leaves physical keys out, so a manifest can be rewritten under its name.  `NotFound` if it is gone."""
        return self.store.head(self.manifest_key(top_hash)).etag

    def manifest_url(self, top_hash: str) -> str:
        """The manifest's URL as quilt3 spells it (also the name of quilt3's manifest cache file)."""
        if self.url.startswith("s3://"):
            bucket = parse_physical_key(self.url).bucket
            return format_physical_key(PhysicalKey("s3", bucket, self.manifest_key(top_hash)))
        return f"{self.url}/{self.manifest_key(top_hash)}"

    # -- listing ---------------------------------------------------------------------------------------

    def packages_in(self, namespace: str) -> list[str]:
        """The packages (`NS/NAME`) of `namespace`, as `list_packages` would name them: a listing of that
        namespace's package directories (one request per 1,000 packages), where `list_packages` lists every
        pointer of the registry."""
        root = f"{self._pointers_root}{namespace}/"
        return [name for page in self.store.list_dir(root) for prefix in page.prefixes
                if is_valid_package_name(name := prefix[len(self._pointers_root):-1])]

    def list_packages(self) -> list[str]:
        """Names of the packages that have pointer files (`quilt3.list_packages`), in `iter_packages` order."""
        return list(self.iter_packages())

    def iter_packages(self) -> Iterator[str]:
        """The names `list_packages` gives, yielded as the listing goes, as quilt3's generator does.

        S3: one recursive listing of `named_packages/`, in key order (`a/b-c` before `a/b`, since `-` < `/`).
        Local: namespace and package directories, sorted (quilt3 uses `os.listdir` order); a package
        directory without pointers is listed, as quilt3 does.
        """
        if self.is_local:
            for page in self.store.list_dir(self._pointers_root):
                for prefix in page.prefixes:
                    yield from self.packages_in(prefix[len(self._pointers_root):-1])
            return
        previous = None
        for info in self.store.list_keys(self._pointers_root):
            name = info.key[len(self._pointers_root):].rpartition("/")[0]
            # A package has several pointers: report each name once.  Invalid names (stray objects) are
            # skipped without becoming `previous`, so `a/b/1, a/b/x/y, a/b/latest` still yields `a/b` once.
            if name != previous and is_valid_package_name(name):
                previous = name
                yield name

    def _pointers(self, name: str) -> list[tuple[str, int]]:
        """(name, size) of every pointer file of a package, valid names or not, in listing order (S3:
        recursive, like quilt3)."""
        package_dir = self._package_dir(name)
        if self.is_local:
            infos = [info for page in self.store.list_dir(package_dir) for info in page.objects]
        else:
            infos = list(self.store.list_keys(package_dir))
        return [(info.key[len(package_dir):], info.size) for info in infos]

    def pointer_files(self, name: str) -> list[str]:
        """The names of every file in the package's pointer directory, whatever they hold: while there is one,
        quilt3 lists the package."""
        validate_package_name(name)
        return [pointer for pointer, _ in self._pointers(name)]

    def _read_listed_pointer(self, name: str, pointer: str, size: int) -> str:
        """The top hash in a pointer seen in a listing of `size` bytes; `InvalidPointer` (without a download)
        when it is too large to be one, `NotFound` if it is gone."""
        if size > MAX_POINTER_SIZE:
            raise InvalidPointer(f"pointer {pointer!r} of package {name} in {self.url} is {size} bytes, "
                                 "too large to contain a top hash")
        return self._decode_pointer(name, pointer, self.store.get_object(self.pointer_key(name, pointer)))

    def _read_pointer_bytes(self, name: str, pointer: str) -> bytes:
        try:
            return self.store.get_object(self.pointer_key(name, pointer))
        except NotFound:
            raise NotFound(f"package {name} has no revision {pointer!r} in {self.url}") from None

    def _decode_pointer(self, name: str, pointer: str, data: bytes) -> str:
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            text = None
        if text is None or not is_top_hash(text):
            raise InvalidPointer(f"pointer {pointer!r} of package {name} in {self.url} does not contain a top hash "
                                 f"(64 lowercase hex digits): {data[:80]!r}")
        return text

    def list_package_versions(self, name: str, on_invalid: Callable[[InvalidPointer], None] | None = None,
                              ) -> list[tuple[str, str]]:
        """`(pointer name, top hash)` of every revision pointer, `latest` included.

        Order: S3 key order (timestamps, then `latest`); local registries sorted the same way.  A pointer
        deleted between the listing and its read is skipped.  A pointer whose content is not a top hash (or
        that is over `MAX_POINTER_SIZE` bytes, never downloaded) raises `InvalidPointer`; with `on_invalid`,
        it is handed that error instead and skipped, so one broken pointer does not hide the others.
        """
        validate_package_name(name)
        versions = []
        for pointer, size in self._pointers(name):
            if not is_pointer_name(pointer):
                continue
            try:
                versions.append((pointer, self._read_listed_pointer(name, pointer, size)))
            except NotFound:
                continue
            except InvalidPointer as exc:
                if on_invalid is None:
                    raise
                on_invalid(exc)
        return versions

    # -- hashes ----------------------------------------------------------------------------------------

    def _manifest_hashes(self) -> list[str]:
        """Top hashes of all manifests of the registry (v1: shared by all packages)."""
        start = len(self._manifests_root)
        return [info.key[start:] for info in self.store.list_keys(self._manifests_root)
                if is_top_hash(info.key[start:])]

    def resolve_hash(self, name: str | None, hash_or_prefix: str) -> str:
        """The full top hash for a full hash or a unique prefix of at least 6 characters.

        A full hash is returned without checking that the manifest exists (as quilt3 does); a prefix is
        looked up among *all* manifests of the registry, not just this package's.  Errors are quilt3's.
        """
        if name is not None:
            validate_package_name(name)
        if not isinstance(hash_or_prefix, str):
            raise RegistryError(f"Invalid hash: {hash_or_prefix!r}")
        if len(hash_or_prefix) == 64:
            if not is_top_hash(hash_or_prefix):
                raise RegistryError(f"Invalid hash: {hash_or_prefix!r}")
            return hash_or_prefix
        if not _MIN_PREFIX <= len(hash_or_prefix) < 64:
            raise RegistryError(f"Invalid hash: {hash_or_prefix!r}")
        matches = [h for h in self._manifest_hashes() if h.startswith(hash_or_prefix)]
        if not matches:
            raise RegistryError(f"Found zero matches for {hash_or_prefix!r}")
        if len(matches) > 1:
            raise RegistryError(f"Found multiple matches: {hash_or_prefix!r}")
        return matches[0]

    def shorten_hash(self, top_hash: str) -> str:
        """The shortest prefix (at least 7 characters) unique among the registry's manifests, as quilt3
        prints it after a push; the full hash if no manifest has it."""
        hashes = [h for h in self._manifest_hashes() if h.startswith(top_hash[:7])]
        if top_hash not in hashes:
            return top_hash
        for length in range(7, 64):
            if sum(1 for h in hashes if h.startswith(top_hash[:length])) == 1:
                return top_hash[:length]
        return top_hash

    # -- pointers --------------------------------------------------------------------------------------

    def read_pointer(self, name: str, pointer: str = LATEST) -> str:
        """The top hash a pointer names; `NotFound` if the pointer does not exist, `InvalidPointer` if its
        content is not a top hash (surrounding whitespace is tolerated)."""
        validate_package_name(name)
        validate_pointer_name(pointer)
        return self._decode_pointer(name, pointer, self._read_pointer_bytes(name, pointer))

    def set_pointer(self, name: str, pointer: str, top_hash: str) -> None:
        """Write a pointer: exactly the 64 hex characters, no newline (quilt3 reads `latest` verbatim)."""
        validate_package_name(name)
        validate_pointer_name(pointer, settable=True)
        if not is_top_hash(top_hash):
            raise RegistryError(f"Invalid hash: {top_hash!r}")
        self.store.put_object(self.pointer_key(name, pointer), top_hash.encode("ascii"))

    def delete_pointer(self, name: str, pointer: str) -> None:
        """Delete one pointer file (no error if missing).  Deleting `latest` promotes nothing: see
        `delete_package` for quilt3's revision deletion.  Local registries drop emptied directories."""
        validate_package_name(name)
        validate_pointer_name(pointer)
        self.store.delete_object(self.pointer_key(name, pointer))
        self._prune_local(name)

    def _prune_local(self, name: str) -> None:
        if not self.is_local:
            return
        remove = _find_method(self.store, "remove_empty_dirs")
        if remove is not None:
            remove(self._package_dir(name))
            remove(self._namespace_dir(name))

    def delete_package(self, name: str, top_hash: str | None = None) -> list[str]:
        """Delete a package or one revision of it, exactly as `quilt3.delete_package`; return the pointer
        names deleted.

        Only pointer files are deleted, never manifests or data.  Without `top_hash`: every object under the
        package's pointer directory (S3: an unknown package is a no-op; local: `NotFound`).  With `top_hash`
        (full or prefix): every pointer naming that hash; if `latest` was one of them and pointers remain,
        `latest` becomes a copy of the remaining pointer with the greatest name; no match raises
        `RegistryError("No such package version exists in the given directory.")`.  Local registries then
        remove the package and namespace directories if they became empty.
        """
        validate_package_name(name)
        package_dir = self._package_dir(name)
        if top_hash is None:
            if self.is_local and not self.store.prefix_exists(package_dir):
                raise NotFound(f"package {name} not found in {self.url}")
            keys = [info.key for info in self.store.list_keys(package_dir)]
            for key in keys:
                self.store.delete_object(key)
            if self.is_local:
                remove = _find_method(self.store, "remove_empty_dirs")
                if remove is not None:
                    remove(package_dir, recursive=True)
                    remove(self._namespace_dir(name))
            return [key[len(package_dir):] for key in keys]

        resolved = self.resolve_hash(name, top_hash)
        deleted: list[str] = []
        remaining: list[str] = []
        for pointer, size in self._pointers(name):
            try:
                content = self._read_listed_pointer(name, pointer, size)
            except (NotFound, InvalidPointer):
                content = None  # never matches; like quilt3, it still counts as a remaining pointer
            (deleted if content == resolved else remaining).append(pointer)
        if not deleted:
            raise RegistryError("No such package version exists in the given directory.")
        for pointer in deleted:
            self.store.delete_object(self.pointer_key(name, pointer))
        if LATEST in deleted and remaining:
            # quilt3 compares pointer names as strings ("fine till year 2286") and copies the object verbatim.
            newest = max(remaining)
            self.store.put_object(self.pointer_key(name, LATEST),
                                  self.store.get_object(self.pointer_key(name, newest)))
        self._prune_local(name)
        return deleted

    # -- manifests -------------------------------------------------------------------------------------

    def open_manifest(self, top_hash: str) -> IO[bytes]:
        """The manifest named `top_hash` as a stream of bytes, unverified (its reader checks the top hash).
        Raises `NotFound` if the registry has no such manifest."""
        if not is_top_hash(top_hash):
            raise RegistryError(f"Invalid hash: {top_hash!r}")
        try:
            return self.store.open_object(self.manifest_key(top_hash))
        except NotFound:
            raise NotFound(f"manifest {top_hash} not found in {self.url}") from None

    def load_manifest(self, top_hash: str) -> Manifest:
        """The manifest named `top_hash` (a full hash), whole and verified: its computed top hash must be its
        name.  (Mounts stream manifests into an index instead: `packages.index`.)  Raises `NotFound` if the
        registry has no such manifest and `ManifestError` if it is malformed or does not hash to its name.
        """
        if not is_top_hash(top_hash):
            raise RegistryError(f"Invalid hash: {top_hash!r}")
        try:
            data = self.store.get_object(self.manifest_key(top_hash))
        except NotFound:
            raise NotFound(f"manifest {top_hash} not found in {self.url}") from None
        try:
            # Manifests already in a registry are read whatever their line sizes (quilt3 only checks on write).
            manifest = parse_manifest(data, max_record_size=None)
        except ManifestError as exc:
            raise ManifestError(f"{self.manifest_url(top_hash)}: {exc}") from None
        computed = manifest.top_hash
        if computed != top_hash:
            raise ManifestError(f"{self.manifest_url(top_hash)}: content hashes to {computed}, "
                                f"not to its name {top_hash}")
        return manifest


StoreFactory = Callable[[str, str], ObjectStore]


def default_store_factory(scheme: str, location: str, *, session: Any = None) -> ObjectStore:
    """An `S3Store` on `session` (a boto3 session; None: the default credential chain), or a `LocalStore`."""
    if scheme == "s3":
        from quiltmount.storage.s3 import S3Store

        return S3Store(location, session=session)
    from quiltmount.storage.local import LocalStore

    return LocalStore(location)


def registry_from_url(url: str, *, store_factory: StoreFactory | None = None) -> Registry:
    """A `Registry` for `s3://bucket[/prefix]`, `file:///dir` or a plain directory path (`~` expanded).

    `store_factory(scheme, location)` builds the store: `("s3", bucket)` or `("file", absolute_dir)`; the
    default makes an `S3Store` (default credentials and endpoint) or a `LocalStore`.
    """
    factory = store_factory or default_store_factory
    if "://" not in url:
        url = format_physical_key(PhysicalKey("file", None, os.path.realpath(os.path.expanduser(url))))
    try:
        pk = parse_physical_key(url)
    except PhysicalKeyError as exc:
        raise RegistryError(f"Invalid registry URL {url!r}: {exc}") from None
    if pk.version_id is not None:
        raise RegistryError(f"Invalid registry URL {url!r}: a registry cannot have a version ID")
    if pk.scheme == "s3":
        prefix = pk.path.strip("/")
        registry_url = f"s3://{pk.bucket}" + (f"/{prefix}" if prefix else "")
        return Registry(factory("s3", pk.bucket or ""), registry_url,
                        prefix=f"{prefix}/" if prefix else "")
    path = os.path.normpath(pk.path)
    return Registry(factory("file", path), format_physical_key(PhysicalKey("file", None, path)))
