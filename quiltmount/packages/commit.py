"""Publishing a new revision of a package from a parent revision and a set of changes, as `quilt3 push` of
the browsed parent with those changes would (spec 5.2): new and changed files uploaded to `NS/NAME/<logical
key>` in the registry's bucket, the parent's other rows kept as they are, quilt3's header, entry order and top
hash, then the manifest, a timestamp pointer and `latest`, in that order.

This is the engine under package drafts: it knows registries and local files, not mounts.  Unchanged entries
are never read or re-hashed; only the files of `Changes.files` are (hashed locally, in one pass each, and
uploaded with S3 SHA-256 checksums by the store).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from quiltmount.errors import NotFound, QuiltException
from quiltmount.packages.manifest import (
    SHA2_256_CHUNKED, Entry, Manifest, PhysicalKey, format_physical_key, logical_key_problem, make_hasher,
    parse_physical_key, tree_order, write_manifest,
)
from quiltmount.packages.registry import LATEST, Registry, RegistryError, validate_package_name

#: `.quilt/workflows/config.yml`: with one, quilt3 validates every push against the registry's workflows.
WORKFLOW_CONFIG = ".quilt/workflows/config.yml"
#: Files hashed and uploaded at once (each large one also sends its parts in parallel).
UPLOAD_WORKERS = 8
#: Bytes read at a time while a new file is hashed.
HASH_BUFFER = 1 << 20


class _Keep:
    """The parent's value stays (a sentinel distinct from None, which is a value)."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


class PackageConflict(QuiltException):
    """`latest` moved since the parent was read (quilt3's `QuiltConflictException`, same message)."""


@dataclass
class NewFile:
    """The bytes of a new or changed entry, in a local file; `meta` is the entry's whole `meta` object
    (KEEP: the parent entry's, or none for a new logical key)."""

    path: str
    meta: Any = KEEP


@dataclass
class Changes:
    """What a revision changes in its parent: files added or replaced, logical keys deleted, the `meta` of
    unchanged entries, and the header's `user_meta` (KEEP: the parent's)."""

    files: dict[str, NewFile] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    entry_meta: dict[str, Any] = field(default_factory=dict)
    user_meta: Any = KEEP


@dataclass
class Committed:
    top_hash: str
    pointer: str | None  # the new timestamp pointer; None when `dedupe` found the revision already latest
    manifest: Manifest


def commit_revision(registry: Registry, name: str, parent: str | None, changes: Changes, *,
                    message: str | None, workflow: Any = ..., force: bool = False, dedupe: bool = False,
                    clock: Callable[[], float] = time.time) -> Committed:
    """Publish `parent` (a full top hash, or None for a new package) with `changes` as a new revision of
    `name`; `latest` moves only if it still names `parent` (unless `force`).  `workflow` as quilt3's: `...`
    (the default workflow) or None; registries with a workflow configuration are refused for now."""
    validate_package_name(name)
    if message is not None and not isinstance(message, str):
        raise RegistryError(f"the commit message must be a string, not {type(message).__name__}")
    _check_workflows(registry, workflow)
    base = registry.load_manifest(parent) if parent is not None else Manifest()
    _check_changes(base, changes)
    latest = _latest(registry, name) if not force or dedupe else None
    if not force:
        _check_conflict(latest, parent)
    new_entries = _upload(registry, name, base, changes)
    manifest = _revision(base, changes, new_entries, message)
    top_hash = manifest.top_hash
    if dedupe and top_hash == latest:
        return Committed(top_hash, None, manifest)
    data = write_manifest(manifest)
    if not force:  # again just before writing, as quilt3 does: the window for a lost update is the writes'
        _check_conflict(_latest(registry, name), parent)
    registry.store.put_object(registry.manifest_key(top_hash), data)
    pointer = str(int(clock()))
    registry.set_pointer(name, pointer, top_hash)
    registry.set_pointer(name, LATEST, top_hash)
    return Committed(top_hash, pointer, manifest)


def _check_workflows(registry: Registry, workflow: Any) -> None:
    try:
        registry.store.head(registry.prefix + WORKFLOW_CONFIG)
    except NotFound:
        if workflow is not ... and workflow is not None:  # quilt3's rule: a workflow needs a configuration
            raise QuiltException(f"``workflow`` argument provided, but workflows are not configured. "
                                 f"Workflows config failed to load from {registry.url}/{WORKFLOW_CONFIG}") from None
        return
    raise RegistryError(f"{registry.url} has a workflow configuration ({WORKFLOW_CONFIG}): committing to a "
                        "registry with workflows is not supported yet; push with quilt3")


def _check_changes(base: Manifest, changes: Changes) -> None:
    present = {entry.logical_key for entry in base.entries}
    for logical_key in changes.files:
        problem = logical_key_problem(logical_key)
        if problem:
            raise RegistryError(f"invalid logical key {logical_key!r}: {problem}")
    for logical_key in (*changes.deleted, *changes.entry_meta):
        if logical_key not in present:
            raise RegistryError(f"{logical_key!r} is not in the parent revision")
    if changes.deleted & changes.files.keys():
        raise RegistryError("a logical key cannot be both deleted and written")


def _latest(registry: Registry, name: str) -> str | None:
    try:
        return registry.read_pointer(name, LATEST)
    except NotFound:
        return None


def _check_conflict(latest: str | None, parent: str | None) -> None:
    if latest is not None and latest != parent:
        raise PackageConflict(f"Package with hash {latest!r} already exists at the destination; "
                              f"expected {parent!r}. Use force=True (Python) or --force (CLI) to overwrite.")


def _upload(registry: Registry, name: str, base: Manifest, changes: Changes) -> dict[str, Entry]:
    """Hash and upload every new file to `NS/NAME/<logical key>`; its entry, by logical key."""
    old_meta = {entry.logical_key: entry.meta for entry in base.entries}
    location = parse_physical_key(registry.url)  # s3://bucket or file:///dir

    def one(logical_key: str, new: NewFile) -> Entry:
        size = os.path.getsize(new.path)
        hasher = make_hasher(SHA2_256_CHUNKED, size)
        with open(new.path, "rb") as file:
            while chunk := file.read(HASH_BUFFER):
                hasher.update(chunk)
        key = f"{registry.prefix}{name}/{logical_key}"
        info = registry.store.put_file(key, new.path)
        if location.scheme == "s3":
            physical = PhysicalKey("s3", location.bucket, key, info.version_id)
        else:
            physical = PhysicalKey("file", None, os.path.join(location.path, key))
        meta = old_meta.get(logical_key, {}) if new.meta is KEEP else new.meta
        return Entry(logical_key, format_physical_key(physical), size, SHA2_256_CHUNKED, hasher.value(),
                     copy.deepcopy(meta))

    with ThreadPoolExecutor(UPLOAD_WORKERS, thread_name_prefix="commit") as pool:
        futures = {key: pool.submit(one, key, new) for key, new in changes.files.items()}
        return {key: future.result() for key, future in futures.items()}


def _revision(base: Manifest, changes: Changes, new_entries: dict[str, Entry], message: str | None) -> Manifest:
    """The new manifest: quilt3's header (the parent's, `user_meta` then `message` set, no `workflow`), the
    parent's rows that stay, the new ones, in tree order; directory metadata of directories that still hold
    an entry."""
    header = copy.deepcopy(base.header)
    if changes.user_meta is not KEEP:
        header["user_meta"] = changes.user_meta
    header["message"] = message
    header.pop("workflow", None)
    entries = []
    for entry in base.entries:
        if entry.logical_key in changes.deleted or entry.logical_key in new_entries:
            continue
        if entry.logical_key in changes.entry_meta:
            entry = copy.copy(entry)
            entry.meta = changes.entry_meta[entry.logical_key]
        entries.append(entry)
    entries.extend(new_entries.values())
    directories = {key[:index + 1] for entry in entries for key in (entry.logical_key,)
                   for index, char in enumerate(key) if char == "/"}
    dir_meta = {path: meta for path, meta in base.dir_meta.items() if path in directories}
    return Manifest(header, tree_order(entries), dir_meta)
