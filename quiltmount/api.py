"""The quilt3-compatible control API (no FUSE here).  Re-exported at the package top level.

Configuration, login, API keys, search and `Bucket` come from their own modules; the package functions below
keep quilt3's signatures and semantics (spec section 5): `registry=None` means the `default_local_registry`
of quilt3's config, as in quilt3.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from quiltmount import api_keys  # noqa: F401  (quilt3.api_keys)
from quiltmount.auth import (  # noqa: F401
    clear_api_key, get_boto3_session, logged_in, login, login_with_api_key, logout,
)
from quiltmount.bucket import Bucket  # noqa: F401
from quiltmount import state
from quiltmount.errors import QuiltException  # noqa: F401
from quiltmount.fs.draft import read_changes
from quiltmount.quiltconfig import config, default_local_registry  # noqa: F401
from quiltmount.packages.commit import COMMIT_RESULT_XATTR, COMMIT_XATTR
from quiltmount.packages.index import index_name, open_or_build
from quiltmount.packages.registry import Registry, registry_from_url
from quiltmount.paths import index_dir, make_private_dir
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
                          manifest_url=reg.manifest_url(full_hash), progress=progress)
    try:
        return {"name": name, "top_hash": full_hash, "entries": index.entries, "path": path,
                "disk_bytes": index.disk_bytes}
    finally:
        index.close()


def commit_draft(path: str, message: str | None = None, *, meta: Any = ..., workflow: Any = ...,
                 force: bool = False, dedupe: bool = False) -> dict[str, Any]:
    """Commit the package draft at `path` (`MOUNT/.packages/NS/NAME/draft`) as a new revision, in the daemon of
    the mount that holds it.  `meta` replaces the header's user_meta (default: the draft's); `workflow`,
    `force` and `dedupe` as `quilt3 push`.  Returns the outcome (`package`, `top_hash`, `pointer`: None when
    `dedupe` found it already latest, `entries`); raises `QuiltException` with the reason in one line."""
    _draft_location(path)
    options: dict[str, Any] = {"message": message, "force": force, "dedupe": dedupe}
    if meta is not ...:
        options["meta"] = meta
    if workflow is not ...:
        options["workflow"] = workflow
    try:
        os.setxattr(path, COMMIT_XATTR, json.dumps(options).encode("utf-8"))
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENOENT, errno.ENOTDIR, errno.EROFS):
            raise _not_a_draft(path) from None
        reason = _commit_result(path).get("error")
        raise QuiltException(reason or f"{path}: {os.strerror(exc.errno or errno.EIO)}") from None
    return _commit_result(path)


def _commit_result(path: str) -> dict[str, Any]:
    try:
        return json.loads(os.getxattr(path, COMMIT_RESULT_XATTR))
    except (OSError, ValueError):
        return {}


def diff_draft(path: str) -> list[tuple[str, str]]:
    """What committing the draft at `path` would change, as `git status --short` does: (`A`, `M`, `D` or `R`,
    logical key; `old -> new` for `R`), by key.  `M` is new bytes or new metadata."""
    mountpoint, name = _draft_location(path)
    record = state.read_record(mountpoint)
    if record is None or not record.get("cache_dir"):
        raise _not_a_draft(path)
    changes = read_changes(os.path.join(record["cache_dir"], "drafts", *name.split("/")))
    revision = os.path.join(mountpoint, ".packages", name, f"@{changes.parent}") if changes.parent else None

    def in_parent(key: str) -> bool:
        return revision is not None and os.path.isfile(os.path.join(revision, key))

    found = [("M" if in_parent(key) else "A", key) for key in changes.written]
    found += [("R", f"{old} -> {new}") for new, old in changes.renamed.items()]
    gone = changes.deleted - set(changes.written) - changes.renamed.keys() - set(changes.renamed.values())
    found += [("D", key) for key in gone]
    found += [("M", key) for key in changes.meta_changed - set(changes.written) - changes.deleted]
    return sorted(found, key=lambda item: item[1].rpartition(" -> ")[2])


def _not_a_draft(path: str) -> QuiltException:
    return QuiltException(f"{path}: not the draft of a package in a quiltmount mount (MOUNT/.packages/NS/NAME/draft)")


def _draft_location(path: str) -> tuple[str, str]:
    """(mountpoint, package name) of the draft at `path`; QuiltException if it is not one."""
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    if len(parts) < 5 or parts[-1] != "draft" or parts[-4] != ".packages":
        raise _not_a_draft(path)
    try:
        os.getxattr(path, "user.quilt.parent")  # only a mount's drafts have it
    except OSError:
        raise _not_a_draft(path) from None
    return os.sep.join(parts[:-4]) or os.sep, f"{parts[-3]}/{parts[-2]}"
