"""The status record of a live mount: what `quiltmount status` shows and `umount` watches (pending uploads),
written by the daemon once the mount is live and then every STATUS_INTERVAL seconds (`state` stores it)."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quiltmount import state
from quiltmount.fs.blockcache import BlockCache
from quiltmount.fs.overlay import WritableBucketTree
from quiltmount.fs.packagetree import PackagesTree
from quiltmount.fs.readahead import BlockFetcher
from quiltmount.daemon.process import rss_bytes
from quiltmount.storage.stores import StoreSet
from quiltmount.version import __version__

if TYPE_CHECKING:  # both load libfuse, which the daemon loads only when it mounts
    from quiltmount.fs.binding import CallCounts, KernelCacheTrim
    from quiltmount.fs.operations import MountOperations

log = logging.getLogger("quiltmount")

STATUS_INTERVAL = 1.0


@dataclass
class StatusRecord:
    """The parts of one mount whose figures the record shows."""

    source_url: str
    package: str | None  # `ns/name` of a single-package mount
    mountpoint: str
    log_file: str
    cache_dir: str
    read_only: bool
    cache: BlockCache
    fetcher: BlockFetcher
    stores: StoreSet
    calls: CallCounts
    trim: KernelCacheTrim | None
    packages: PackagesTree
    writes: WritableBucketTree | None
    started: float = field(default_factory=time.time)

    def snapshot(self, operations: MountOperations) -> dict[str, Any]:
        uploads = self.writes.stats() if self.writes is not None else {"pending_uploads": 0}
        return {"pid": os.getpid(), "version": __version__, "source": self.source_url, "package": self.package,
                "mountpoint": self.mountpoint, "log_file": self.log_file, "cache_dir": self.cache_dir,
                "started_at": self.started, "read_only": self.read_only, "rss_bytes": rss_bytes(),
                "open_files": operations.open_handles(), "cache": self.cache.stats(),
                "read_ahead": self.fetcher.stats(), "requests": self.stores.stats.snapshot(),
                "fuse_calls": self.calls.snapshot(),
                "kernel_cache_trims": self.trim.trims if self.trim is not None else 0,
                "indexes": self.packages.index_stats(), "drafts": self.packages.draft_stats(), **uploads}

    def write(self, operations: MountOperations) -> None:
        state.write_record(self.mountpoint, self.snapshot(operations))

    def keep_writing(self, operations: MountOperations, stop: threading.Event) -> None:
        """Rewrite the record every STATUS_INTERVAL seconds until `stop` is set."""
        while not stop.wait(STATUS_INTERVAL):
            try:
                self.write(operations)
            except OSError as exc:
                log.warning("cannot write status record: %s", exc)
