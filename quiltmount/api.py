"""The quilt3-compatible control API (no FUSE here).  Re-exported at the package top level.

Configuration, login, API keys, search and `Bucket` come from their own modules; the package functions below
keep quilt3's signatures and semantics (spec section 5): `registry=None` means the `default_local_registry`
of quilt3's config, as in quilt3.
"""

from __future__ import annotations

from collections.abc import Iterator

from quiltmount import api_keys  # noqa: F401  (quilt3.api_keys)
from quiltmount.auth import (  # noqa: F401
    clear_api_key, get_boto3_session, logged_in, login, login_with_api_key, logout,
)
from quiltmount.bucket import Bucket  # noqa: F401
from quiltmount.catalog import QuiltException  # noqa: F401
from quiltmount.quiltconfig import config, default_local_registry  # noqa: F401
from quiltmount.packages.registry import Registry, registry_from_url
from quiltmount.catalog_search import search  # noqa: F401


def _registry(registry: str | None) -> Registry:
    return registry_from_url(registry or default_local_registry())


def list_packages(registry: str | None = None) -> Iterator[str]:
    """Names (`namespace/name`) of the packages in `registry`."""
    return iter(_registry(registry).list_packages())


def list_package_versions(name: str, registry: str | None = None) -> Iterator[tuple[str, str]]:
    """`(pointer, top_hash)` for every pointer of package `name`, `latest` included."""
    return iter(_registry(registry).list_package_versions(name))


def delete_package(name: str, registry: str | None = None, top_hash: str | None = None) -> None:
    """Delete package `name` (every pointer) or, with `top_hash` (full or a 6+ character prefix), the pointers
    to that revision, promoting the newest remaining timestamp to `latest`.  Manifests and data stay."""
    _registry(registry).delete_package(name, top_hash=top_hash)
