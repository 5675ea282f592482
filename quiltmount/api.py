"""The quilt3-compatible control API (no FUSE here).  Re-exported at the package top level.

Configuration, login, API keys, search and `Bucket` come from their own modules; the package functions below
keep quilt3's signatures and semantics (spec section 5): `registry=None` means the `default_local_registry`
of quilt3's config, as in quilt3.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator

from quiltmount import api_keys  # noqa: F401  (quilt3.api_keys)
from quiltmount.auth import (  # noqa: F401
    clear_api_key, get_boto3_session, logged_in, login, login_with_api_key, logout,
)
from quiltmount.bucket import Bucket  # noqa: F401
from quiltmount.draftctl import commit_draft, diff_draft, open_draft  # noqa: F401
from quiltmount.prefetchctl import prefetch  # noqa: F401
from quiltmount.errors import QuiltException  # noqa: F401
from quiltmount.quiltconfig import config, default_local_registry  # noqa: F401
from quiltmount.packages.index import index_name, open_or_build
from quiltmount.packages.registry import InvalidPointer, Registry, default_store_factory, registry_from_url
from quiltmount.paths import index_dir, make_private_dir
from quiltmount.storage.base import ObjectStore
from quiltmount.catalog_search import search  # noqa: F401


def _store(scheme: str, location: str) -> ObjectStore:
    """The store of a registry, reached as quilt3 reaches it: S3 through `get_boto3_session()`, so with the
    catalog login's AWS credentials if there are any, else with the default credential chain."""
    return default_store_factory(scheme, location, session=get_boto3_session() if scheme == "s3" else None)


def _registry(registry: str | None) -> Registry:
    return registry_from_url(registry or default_local_registry(), store_factory=_store)


def list_packages(registry: str | None = None) -> Iterator[str]:
    """Names (`namespace/name`) of the packages in `registry`, listed as they are consumed (like quilt3's)."""
    return _registry(registry).iter_packages()


def list_package_versions(name: str, registry: str | None = None) -> Iterator[tuple[str, str]]:
    """`(pointer, top_hash)` for every pointer of package `name`, `latest` included, whatever its name.

    A pointer that holds no top hash is skipped with a `UserWarning` and the others are listed: quilt3 would
    return its text as a hash, which nothing can open (and fail the whole listing if it is not UTF-8)."""
    def skip(exc: InvalidPointer) -> None:
        warnings.warn(f"skipping {exc}", UserWarning, stacklevel=3)

    return iter(_registry(registry).list_package_versions(name, on_invalid=skip))


def delete_package(name: str, registry: str | None = None, top_hash: str | None = None) -> None:
    """Delete package `name` (every pointer) or, with `top_hash` (full or a 6+ character prefix), the pointers
    to that revision, promoting the newest remaining timestamp to `latest`.  Manifests and data stay."""
    _registry(registry).delete_package(name, top_hash=top_hash)


def index_package(name: str, registry: str | None = None, top_hash: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, object]:
    """Build the on-disk index of revision `top_hash` (full or a 6+ character prefix; default: latest) of
    package `name`, as a mount would on first access, so that the mount's first listing of it is instant.

    An index already built is checked and kept.  `progress(entries, manifest_bytes)` is called while the
    manifest streams in.  Returns the revision's `top_hash`, `entries`, index `path` and `disk_bytes`.
    """
    reg = _registry(registry)
    full_hash = reg.resolve_hash(name, top_hash) if top_hash else reg.read_pointer(name)
    make_private_dir(index_dir())
    path = os.path.join(index_dir(), index_name(reg.url, full_hash))
    index = open_or_build(path, lambda: reg.open_manifest(full_hash), top_hash=full_hash,
                          manifest_url=reg.manifest_url(full_hash), progress=progress,
                          manifest_etag=lambda: reg.manifest_etag(full_hash))
    try:
        return {"name": name, "top_hash": full_hash, "entries": index.entries, "path": path,
                "disk_bytes": index.disk_bytes}
    finally:
        index.close()
