"""The tree a mount serves: one package revision (with its package's draft in `.draft` unless --read-only),
or the bucket (writable unless --read-only or --as-of; as it was at a moment with --as-of) with its
`.packages` and `.search` views and the `.versions` of its files."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from quiltmount.errors import StorageError, UserError
from quiltmount.fs.mounttree import MountTree
from quiltmount.fs.node import Tree
from quiltmount.fs.overlay import WritableBucketTree
from quiltmount.fs.draftview import DraftView
from quiltmount.fs.packagetree import PackagesTree, RevisionTree
from quiltmount.fs.posixtree import MountDefaults, PosixTree
from quiltmount.fs.searchtree import SearchTree
from quiltmount.fs.staging import StagingArea
from quiltmount.fs.tree import BucketTree
from quiltmount.fs.versions import VersionsTree
from quiltmount.daemon.launcher import MountOptions
from quiltmount.daemon.stack import bucket_search
from quiltmount.packages.registry import Registry
from quiltmount.paths import index_dir
from quiltmount.storage import ObjectStore, Source
from quiltmount.storage.asof import AsOfStore, format_moment
from quiltmount.storage.stores import StoreSet

log = logging.getLogger("quiltmount")


#: Where a single-package mount shows its package's draft.
PACKAGE_DRAFT = ".draft"
#: The permissions of the views (`.packages`, `.search`, `.versions`, a package revision): readable by all.
VIEW_MODES = (0o644, 0o755)
#: s3fs's permissions for objects and directories that keep none of their own.
S3FS_MODES = (0o640, 0o750)


def object_modes(source: Source, options: MountOptions) -> tuple[int, int]:
    """The (file, directory) permissions of the mount's own objects and directories where they keep none:
    `--file-mode`/`--dir-mode`, else s3fs's 0640/0750, so that a tree shows as s3fs shows it.  A mount shared
    with other users (`--allow-other`) shows the views' 0644/0755 instead: with `default_permissions` the
    kernel would otherwise keep those users out of what they were given the mount for (s3fs users set
    `umask` for it).  A package revision's files are a view."""
    defaults = VIEW_MODES if source.package or options.allow_other else S3FS_MODES
    return (defaults[0] if options.file_mode is None else options.file_mode,
            defaults[1] if options.dir_mode is None else options.dir_mode)


@dataclass
class Layers:
    """The mount's root tree, its write-back layer (None when the bucket is not mounted writable) and its
    `.packages` view (whose open indexes and drafts `status` shows)."""

    tree: Tree
    writes: WritableBucketTree | None
    packages: PackagesTree
    read_only: bool
    immutable: bool  # one package revision, read-only: the kernel may cache it for as long as the mount lives


def build_layers(source: Source, store: ObjectStore, stores: StoreSet, cache_dir: str,
                 options: MountOptions) -> Layers:
    """The layers for `source`; a writable bucket first recovers what a previous mount left staged."""
    past = None if options.as_of is None else _as_of(source, store, options.as_of)
    if options.posix_metadata:
        _check_posix_metadata(source, past)
    read_only = options.read_only or past is not None
    packages = PackagesTree(Registry(store, source.registry_url), stores, index_dir=index_dir(),
                            metadata_ttl=options.metadata_ttl,
                            drafts_dir=None if read_only else os.path.join(cache_dir, "drafts"))
    if source.package:
        revision = _package_revision(packages, source.package)
        if read_only:
            return Layers(revision, None, packages, read_only=True, immutable=True)
        draft = DraftView(packages, source.package_name, revision.top_hash)
        tree = MountTree(revision, {PACKAGE_DRAFT: draft}, reserved=frozenset({PACKAGE_DRAFT}))
        return Layers(tree, None, packages, read_only=False, immutable=False)
    shown = store if past is None else past
    # The past does not change: as of a moment, what is missing stays missing and listings stay true for the
    # whole metadata TTL (a version listing costs more than a plain one).
    negative_ttl = options.metadata_ttl if past is not None else options.negative_metadata_ttl
    bucket = BucketTree(shown, source.prefix, metadata_ttl=options.metadata_ttl,
                        negative_ttl=negative_ttl, lookup_workers=options.lookup_workers,
                        pin_versions=past is not None)
    views = {".packages": packages, ".search": _search_view(source, options)}
    if read_only:
        versions = VersionsTree(bucket, shown, source.prefix, metadata_ttl=options.metadata_ttl)
        shown_tree = _with_posix(bucket, bucket, None, source, options)
        return Layers(MountTree(shown_tree, views, versions=versions), None, packages, read_only=True,
                      immutable=False)
    writes = WritableBucketTree(bucket, StagingArea(os.path.join(cache_dir, "staging"), store.cache_name,
                                                                 former_owner=store.name),
                                os.path.join(cache_dir, "stranded"), sync_on_close=options.sync_on_close,
                                upload_attempts=options.upload_attempts, upload_workers=options.upload_workers)
    writes.recover()
    versions = VersionsTree(writes, store, source.prefix, metadata_ttl=options.metadata_ttl)
    shown_tree = _with_posix(writes, bucket, writes, source, options)
    return Layers(MountTree(shown_tree, views, versions=versions), writes, packages, read_only=False,
                  immutable=False)


def _check_posix_metadata(source: Source, past: AsOfStore | None) -> None:
    """--posix-metadata keeps attributes in a bucket's object metadata: nothing else has any."""
    if source.package:
        raise UserError("--posix-metadata applies to bucket mounts; a package revision keeps no POSIX attributes")
    if source.scheme != "s3":
        raise UserError(f"--posix-metadata needs an S3 bucket: {source.location} is a local directory")
    if past is not None:
        raise UserError("--posix-metadata cannot be used with --as-of")


def _with_posix(tree: Tree, bucket: BucketTree, writes: WritableBucketTree | None, source: Source,
                options: MountOptions) -> Tree:
    """The bucket's tree, with the POSIX attributes of its objects if --posix-metadata."""
    if not options.posix_metadata:
        return tree
    file_mode, dir_mode = object_modes(source, options)
    defaults = MountDefaults(uid=os.geteuid() if options.uid is None else options.uid,
                             gid=os.getegid() if options.gid is None else options.gid,
                             file_mode=file_mode, dir_mode=dir_mode, started_ns=time.time_ns())
    return PosixTree(tree, bucket, writes, defaults, metadata_ttl=options.metadata_ttl)


def _as_of(source: Source, store: ObjectStore, moment: float) -> AsOfStore:
    """The bucket as it was at `moment` (--as-of), once one listing of its versions has worked."""
    if source.package:
        raise UserError("--as-of shows a bucket as it was; a package revision never changes: "
                        "mount it without --as-of")
    if source.scheme != "s3":
        raise UserError(f"--as-of needs an S3 bucket: {source.location} is a local directory, which keeps "
                        "no object versions")
    try:
        next(store.list_versions(source.prefix), None)
    except StorageError as exc:
        raise UserError(f"--as-of needs the bucket's object versions: {exc}") from None
    log.info("showing %r as of %s, read-only", source.url, format_moment(moment))
    return AsOfStore(store, moment)


def _package_revision(packages: PackagesTree, spec: str) -> RevisionTree:
    try:
        return packages.revision_for_spec(spec)
    except StorageError as exc:  # NotFound too
        raise UserError(f"cannot mount {spec}: {exc}") from None


def _search_view(source: Source, options: MountOptions) -> SearchTree:
    """`.search/`: the catalog's search of the mounted bucket."""
    if source.scheme != "s3":
        return SearchTree(None, bucket="", metadata_ttl=options.metadata_ttl,
                          unavailable="search needs a mount of an S3 bucket (s3://BUCKET); this is a local directory")
    return SearchTree(bucket_search(source.location), bucket=source.location, key_prefix=source.prefix,
                      limit=options.search_limit, metadata_ttl=options.metadata_ttl)
