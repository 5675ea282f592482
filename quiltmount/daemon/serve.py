"""One mount's life: checks, stores, the layers and caches, the FUSE loop, and draining uploads at the end."""

from __future__ import annotations

import gc
import logging
import os
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any

from quiltmount import mountpoint as mp, state
from quiltmount.cache.disk import DiskCache
from quiltmount.errors import UserError
from quiltmount.fs.blockcache import BlockCache
from quiltmount.fs.handles import FileOpener
from quiltmount.fs.mounttree import with_control
from quiltmount.fs.overlay import WritableBucketTree
from quiltmount.fs.prefetch import Prefetcher
from quiltmount.fs.readahead import BlockFetcher
from quiltmount.fs.tree import ttl_for_kernel
from quiltmount.daemon.launcher import READY_TIMEOUT, MountOptions, ReadySignal
from quiltmount.daemon.stopping import Stopper
from quiltmount.daemon.stack import stack_session, use_api_key
from quiltmount.daemon.layers import VIEW_MODES, build_layers, object_modes
from quiltmount.paths import default_cache_dir, disk_cache_dir, make_private_dir
from quiltmount.daemon.status import StatusRecord
from quiltmount.storage.stores import StoreSet
from quiltmount.version import __version__

if TYPE_CHECKING:
    from quiltmount.fs.operations import MountOperations

log = logging.getLogger("quiltmount")

IMMUTABLE_KERNEL_TTL = 24 * 3600.0


def serve(options: MountOptions, log_file: str, signal: ReadySignal, stopper: Stopper) -> int:
    """Mount `options.source` and serve it until unmounted (or stopped by a signal: `stopper`); `signal` gets
    READY once the mount is live.  Returns the exit status: 0, or 1 if files are left staged; what the user
    can fix raises `UserError`."""
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    from quiltmount.fs.binding import (  # loads libfuse
        FUSE, CallCounts, KernelCacheTrim, KernelInvalidation, escape_option_value,
    )
    from quiltmount.fs.operations import AttrPolicy, MountOperations

    mp.check_environment()
    use_api_key(options.api_key_env)
    source = options.source
    mountpoint = mp.prepare_mountpoint(options.mountpoint)
    stores = StoreSet(profile=options.profile, region=options.region, endpoint_url=options.endpoint_url,
                      timeout=options.s3_timeout, session=stack_session() if options.quilt_credentials else None,
                      part_workers=options.part_workers)
    store = stores.bucket(source.location) if source.scheme == "s3" else stores.directory(source.location)
    store.check_access()

    cache_dir = options.cache_dir or default_cache_dir(source.url, store.endpoint_url)
    make_private_dir(cache_dir)
    with signal.working():
        layers = build_layers(source, store, stores, cache_dir, options)
    if layers.writes is not None:
        state.discard_report(mountpoint, layers.writes.stranded_dir)
    disk = _open_disk_cache(options)
    # A quarter of the memory budget for read-ahead in flight, the rest for cached blocks.
    prefetch_budget = max(options.memory_cache_size // 4, 8 << 20)
    # Blocks loaded from the disk cache: as many in memory as read-ahead may have in flight.
    cache = BlockCache(options.memory_cache_size - prefetch_budget, disk, loaded_capacity=prefetch_budget)
    fetcher = BlockFetcher(cache, prefetch_budget=prefetch_budget, workers=options.fetch_workers)
    object_file_mode, object_dir_mode = object_modes(source, options)
    attrs = AttrPolicy(uid=os.geteuid() if options.uid is None else options.uid,
                       gid=os.getegid() if options.gid is None else options.gid,
                       file_mode=VIEW_MODES[0] if options.file_mode is None else options.file_mode,
                       dir_mode=VIEW_MODES[1] if options.dir_mode is None else options.dir_mode,
                       object_file_mode=object_file_mode, object_dir_mode=object_dir_mode)
    calls = CallCounts()
    trim = KernelCacheTrim(options.kernel_cache_entries) if options.kernel_cache_entries else None
    status = StatusRecord(source_url=source.url, package=source.package_name, mountpoint=mountpoint,
                          log_file=log_file, cache_dir=cache_dir,
                          read_only=layers.read_only, cache=cache, fetcher=fetcher, stores=stores, calls=calls,
                          trim=trim, packages=layers.packages, writes=layers.writes)
    stop = threading.Event()

    def after_init(operations: MountOperations) -> None:
        threading.Thread(target=_go_live, args=(status, operations, signal, stop), name="status",
                         daemon=True).start()

    # An immutable package revision can be cached by the kernel for as long as the mount lives.
    kernel_ttl = IMMUTABLE_KERNEL_TTL if layers.immutable else ttl_for_kernel(options.metadata_ttl)
    # `quiltmount prefetch`: into the disk cache, with as many bytes in flight as read-ahead at most.
    prefetcher = Prefetcher(cache, block_size=fetcher.block_size,
                            part_size=fetcher.block_size * fetcher.blocks_per_part, budget=prefetch_budget)
    tree = with_control(layers.tree, prefetcher)
    invalidation = KernelInvalidation()
    files = FileOpener(tree, fetcher, max_read_window=prefetch_budget // 2,
                       hash_workers=options.hash_workers, kernel=invalidation)
    operations = MountOperations(tree, files, attrs, on_init=after_init)
    fuse_options: dict[str, Any] = {
        "fsname": escape_option_value(options.source_argument or source.url), "subtype": "quiltmount",
        "default_permissions": True,
        # The kernel keeps no "not found" of a bucket mount: it would add its timeout to the negative TTL.
        "attr_timeout": kernel_ttl, "entry_timeout": kernel_ttl,
        "negative_timeout": kernel_ttl if layers.immutable else 0.0,
        "max_read": 1 << 20, "ro": layers.read_only, ("kernel_cache" if layers.immutable else "auto_cache"): True,
    }
    if options.allow_other:
        fuse_options["allow_other"] = True
    if options.noexec:
        fuse_options["noexec"] = True
    log.info("quiltmount %s mounting %r at %r (log %r)", __version__, source.url, mountpoint, log_file)
    writes = layers.writes

    def report_staged(unfinished: bool) -> int:
        return 0 if writes is None else _report_staged(writes, mountpoint, unfinished)

    stopper.serving(mountpoint, report_staged)
    try:
        FUSE(operations, mountpoint, calls=calls, trim=trim, invalidation=invalidation, foreground=True,
             nothreads=False, **fuse_options)
    except RuntimeError as exc:
        raise UserError(f"cannot mount {mountpoint}: libfuse error {exc} (details in {log_file})") from None
    finally:
        stopper.loop_ended()
        if writes is not None:
            _finish_uploads(writes)
        left = stopper.final_report()
        stop.set()
        state.remove_record(mountpoint)
        files.close()
        prefetcher.close()
        fetcher.close()
        if disk is not None:
            disk.close()
        layers.tree.close()
        stores.close()
    log.info("unmounted %r", mountpoint)
    return 1 if left else 0


def _open_disk_cache(options: MountOptions) -> DiskCache | None:
    """The disk cache shared by the user's mounts, with the cap given (kept for the others); None if off."""
    if options.disk_cache_size == 0:
        return None
    root = options.disk_cache_dir or disk_cache_dir()
    try:
        disk = DiskCache(root, options.disk_cache_size)
    except (OSError, sqlite3.Error) as exc:
        raise UserError(f"cannot use the disk cache at {root}: {exc} (--disk-cache-dir DIR to use another, "
                        "--disk-cache-size 0 for none)") from None
    log.info("disk cache %r: %d of %d bytes used", root, disk.used, disk.capacity)
    return disk


def _go_live(status: StatusRecord, operations: MountOperations, signal: ReadySignal, stop: threading.Event) -> None:
    """Once the kernel shows the mount: its first status record, then READY, then a fresh record every
    second until `stop`."""
    mountpoint = status.mountpoint
    deadline = time.monotonic() + READY_TIMEOUT
    while not mp.is_fuse_mount(mountpoint):  # (another file system may be under it: systemd's autofs)
        if time.monotonic() > deadline:
            signal.fail("the kernel did not show the mount in time")
            return
        time.sleep(0.01)
    if mp.raise_kernel_readahead(mountpoint):
        log.debug("kernel read-ahead raised to 1 MiB")
    status.write(operations)
    # What exists now (modules, boto3's service models, the tree) lives as long as the mount: out of
    # the collector's reach, so that full collections, which botocore's garbage triggers every few
    # requests, scan only what came since.
    gc.freeze()
    log.info("mounted %r at %r (cache %r)", status.source_url, mountpoint, status.cache_dir)
    signal.ready(f"mounted {status.source_url} at {mountpoint}")
    status.keep_writing(operations, stop)


def _finish_uploads(writes: WritableBucketTree) -> None:
    """After unmount: wait for every staged upload (a stop signal bounds the wait: `Stopper`)."""
    pending = writes.uploader.pending()
    if pending:
        log.info("unmounted; finishing %d pending upload(s)", pending)
    writes.uploader.drain()


def _report_staged(writes: WritableBucketTree, mountpoint: str, unfinished: bool) -> int:
    """Log every file still staged and leave their list for `umount`; return how many.  `unfinished`: the
    daemon stops before its uploads are done (--stop-timeout), so those still running, and files still open
    for writing, are listed too."""
    stats = writes.stats()
    failed = stats["failed_uploads"] + (writes.unfinished() if unfinished else [])
    still_open = writes.open_for_writing() if unfinished else []
    state.write_report(mountpoint, {"failed_uploads": failed, "still_open": still_open,
                                    "stranded_dir": writes.stranded_dir})
    for failure in failed + still_open:
        log.error("not uploaded: %r (staged at %r): %s", failure["key"], failure["staged"], failure["error"])
    return len(failed) + len(still_open)
