#!/usr/bin/env python3
"""Benchmark quiltmount against direct boto3 access to the same S3 server, in one run.

Run (as root, with /dev/fuse and fusermount3; from the project's virtualenv)::

    python scripts/bench.py                 # full run: 512 MiB object, 5,000 small files, 256 MiB and
                                            # 2 GiB copied in (~5 min; + ~7 min for the scale test, 12.,
                                            # + ~13 min for the disk cache, 15.)
    python scripts/bench.py --quick         # smoke run: 64 MiB object, 500 small files, 50 preads,
                                            # a 1,000-entry package, 64 MiB and 100 files written,
                                            # 100,000-entry revisions for the scale test
    python scripts/bench.py --only scale    # the revision index at 1,000,000 entries (~5-10 min)
    python scripts/bench.py --only commit   # package commits (engine level) on a 10,000-entry revision
    python scripts/bench.py --only draft    # the same through a mount: mkdir draft, cp, quiltmount packages commit
    python scripts/bench.py --only cache    # the persistent disk cache: re-reads across mounts, prefetch, RSS (~13 min)
    python scripts/bench.py --only cache-reread --rounds 2   # 15.(a) alone: cold read into the cache, re-read (~2 min)
    python scripts/bench.py --only posix-listing --small-files 1000   # ls -l with --posix-metadata vs without
    python scripts/bench.py --endpoint-url http://127.0.0.1:9000   # use a running S3 server

Without ``--endpoint-url`` it starts the project's moto test server (``tests/s3server.py``,
class ``S3TestServer``, with the ranged-GET fix) in a child process, so that the server does not
share this process's GIL with the boto3 baselines; ``--in-process-server`` runs it in this process
instead; ``--server-keeps-memory`` starts it with its objects in memory and its freed memory kept for reuse
(``SERVER_KEEPS_MEMORY``: its CPU then no longer depends on what the client did with memory just before, on
VMs where new memory is dear).  AWS credentials default to moto's dummy ones (``testing``/``testing``, us-east-1).

What it measures, each against a baseline taken in the same run (MB = 10^6 bytes).  Measurements 1, 3, 4,
9, 13, 14 and 15 run ``--rounds`` times (3), baseline then mount in each round; the table gives the medians (the
ratio is the median of the rounds' ratios) and the JSON every round.

The persistent disk cache (issue 16) is on by default in quiltmount, shared by every mount of a user.  The bench
never uses the user's: every mount it makes is given a ``--disk-cache-dir`` under the run's temporary directory.
Measurements 1-14 mount with ``--disk-cache-size 0`` (no disk cache), so that they measure what they measured
before it existed, and their cold reads (each round on a fresh mount) stay cold: with a shared cache the second
round would read the first's blocks from disk.  Only 15 turns it on, each time in a new, empty directory (and
gives the cost of filling the cache during a cold read, on vs off).  The measurements:

1. cold sequential read of the big object through a fresh mount (1 MiB reads) vs boto3
   ``download_fileobj`` (default ``TransferConfig``) into a null sink;
2. warm re-read of the same file on the same mount;
3. random ``os.pread`` calls (4 KiB-1 MiB, fixed seed) on a fresh mount vs the same ranges as
   ``get_object(Range=...)``;
4. ``ls -l`` and ``find`` of the small-file prefix, each on a fresh mount, vs one paginated
   ListObjectsV2 walk, plus the HEAD requests the daemon sent during ``ls -l``;
5. reading every small file (one thread) through a mount vs ``get_object`` of each key;
6. a Quilt package of ``--package-entries`` entries (10,000; 1 KiB each, the small objects reused,
   in 100 directories), written with boto3 and quiltmount's manifest writer: on fresh mounts, one ``ls``
   of the revision (which loads the manifest), then ``find -L`` (one mount) and ``du -sL`` (another) of
   ``.packages/bench/many/latest``, each vs one boto3 GET of the manifest plus ``parse_manifest`` (what a
   boto3 client needs to learn every name and size), and the S3 requests the daemons made after the
   manifest was loaded (target 0);
7. the big object as entry ``big.bin`` of package ``bench/large``: cold sequential read through
   ``.packages/bench/large/latest/big.bin`` (reads of package files are verified against the
   manifest's sha2-256-chunked hash) vs ``download_fileobj``, and the daemon's CPU seconds per GB for
   it vs for the plain bucket read of measurement 1;
8. the peak RSS of every daemon but those of 12 (``/proc/PID/status`` sampled every 0.1 s) vs the memory
   budget;
9. ``cp`` of a ``--write-mib`` (256) MiB file of random bytes, from the run's temporary directory on local
   disk, into a fresh mount (``bench/write/``) until it is durable, vs boto3 ``upload_file`` (default
   ``TransferConfig``) of the same file to another key, measured just before (target ratio >= 0.8); also
   vs ``upload_file`` with ``ChecksumAlgorithm=SHA256``, the checksum the mount sends (its default is CRC32);
10. ``--write-files`` (500) files of 1 KiB written into a fresh mount one after another (Python
    open/write/close, one thread) until all are durable, vs a ``put_object`` call per file (one thread);
11. full run only (``--rss-write-mib``, 2048; 0 skips it): ``cp`` of a 2 GiB random file into a mount with
    ``--memory-cache-size 256M`` (``--write-memory-cache-size``) until durable, the daemon's RSS sampled
    every 0.1 s throughout: its peak vs the budget + 150 MiB;
12. the on-disk revision index at scale (``--scale-entries``, 1,000,000; 100,000 with ``--quick``; 0 skips
    it; ``--only scale``): three packages ``bench/scale1``-``scale3`` of that many 1 KiB entries
    (``dirNNNN/fileNNNN.bin``, 1,000 per directory, physical keys cycling through 16 of the small objects),
    their manifests written line by line to local files (the top hash computed as they are written, checked
    first at 2,000 entries against ``Manifest.top_hash`` and ``write_manifest``) and uploaded with
    ``upload_file``.  Every daemon of the run has a private ``XDG_CACHE_HOME`` under the run's temporary
    directory, so the indexes (``$XDG_CACHE_HOME/quiltmount/indexes/``) start absent; each measurement is on a
    fresh mount of the bucket: (a) the first ``ls`` of ``.packages/bench/scale1/latest/`` with its index
    removed first (the daemon builds it) and the daemon's peak RSS meanwhile; (b) with the index built, the
    first ``ls`` of the revision, and, on another mount after only an ``ls`` of ``.packages/bench/scale1/``,
    ``os.stat`` of 5 deep entries in 5 directories never listed (median and max); (c) ``find -L
    .../latest/ | wc -l`` (the count must be entries + directories + 1), the S3 requests the daemon made
    during it (after one ``ls`` of the revision) and the daemon's RSS after it; (a)-(c) run ``--rounds``
    times, the table gives the median times and the largest RSS and request counts; (d) all three revisions
    browsed in one mount (``ls`` and ``find -L`` of each; scale1's index built, scale2's and scale3's built
    cold in this mount): the daemon's peak RSS over the whole mount and its RSS at the end; (e) index and
    manifest sizes.  For 12 the baseline column is not measured in the run: it is the figure measured on
    main before the revision index (issue 13), when every fresh mount parsed the whole manifest into memory
    (1,000,000 and 100,000 entries only);
13. package commits (issue 15) at the engine level, without the mount (14. goes through one): a ``Draft``
    (``fs/draft.py``) is made on the revision, the file staged in it as ``cp`` into a draft stages it, and
    ``commit_draft`` timed until ``latest`` names the new revision (``--commit-entries``, 10,000; 1,000 with
    ``--quick``; 0 skips it; ``--only commit``).  The parent: that many files of 1 KiB of random bytes, put
    once where ``quilt3 push`` puts them (``bench/commit/<logical key>``, the keys of 12.), and a manifest
    listing them written with quiltmount's writer.  ``--rounds`` times: (a) ``quilt3`` ``Package.browse`` of
    ``latest``, ``set`` of one file to 1 KiB of new bytes and ``push`` to the same registry (one boto3
    session for all its operations, as the tests run it), then the same change committed by the engine on
    the revision quilt3 just wrote: the engine's time (target <= 2 s), its requests by kind (``CountingStore``:
    the PUTs must be the file + the manifest, the timestamp pointer and ``latest``) and every S3 call either
    made (botocore events: none may read the parent's files); then ``--rounds`` times: (b) ``upload_file``
    (default ``TransferConfig``; then again with ``ChecksumAlgorithm=SHA256``) of ``--write-mib`` (256) MiB of
    new random bytes staged in a draft of the current revision, then the commit of that draft, which adds
    them as one file in the first round and replaces it in the others (target ratio >= 0.8).  At the end
    quilt3 browses the last revision; the package, its files and manifests are deleted;
14. package drafts through a mount, end to end (issue 15; ``--only draft``; the parent as in 13., made
    again): each round on a fresh mount of the bucket, ``mkdir MOUNT/.packages/bench/commit/draft``, ``cp`` of
    a local file into it, the commit and a boto3 GET of ``latest`` that must name the new revision, each timed
    apart (the daemon's requests by kind and the CPU seconds of each, from its status record, which needs
    pauses between them) and summed (``total``).  Every round is run twice, once per way to commit: ``quiltmount
    packages commit DRAFT -m MSG --json`` (a subprocess: it pays Python's start-up and imports, also measured
    alone) and ``quiltmount.commit_draft`` in this process (as the baselines run).  ``--rounds`` times: (a)
    quilt3 browse + set + push of one changed 1 KiB file as in 13., then the same change through the mount on
    quilt3's revision (target: total <= 2 s, the commit's PUTs the file + 3).  This mount talks to the server
    through tests/faultproxy.py's proxy, which records every request's operation and key (a little slower than
    straight to the server; quilt3 is not proxied): no request of mkdir, cp or the commit may touch another
    file of the package than the changed one, nor GET any; then ``--rounds`` times: (b) ``upload_file``
    (default, then with SHA-256) of ``--write-mib`` MiB of new random bytes from local disk, then mkdir,
    ``cp`` of that file (the mount sends its parts while it is written, into the multipart upload the commit
    completes) and the commit through a mount straight to the server (target ratio >= 0.8 for the total; the
    commit alone is also given).  After each commit the mount must show the new revision as
    ``latest`` and the draft on it.  At the end quilt3 browses the last revision;
15. the persistent disk cache (issue 16; ``--only cache``), each part with a new, empty ``--disk-cache-dir`` at
    the daemon's default cap unless said: (a) ``--rounds`` times, ``download_fileobj`` of the big object, its cold
    read on a fresh mount without the disk cache, then on one with it (empty), ``quiltmount umount`` (the daemon
    writes the blocks still queued before it exits), the page cache dropped (``sync; echo 3 >
    /proc/sys/vm/drop_caches``, which needs root; elsewhere ``posix_fadvise`` DONTNEED of the cache's files, and
    the details say so) and the re-read on a fresh mount of the same cache: target >= 2x the cold read with the
    cache (empty) of the same round, and 0 GETs.  The mount without the disk cache (its memory cache twice the
    object) reads the file a second time, from the blocks then in its memory: the most a daemon serves through
    FUSE, the re-read's ceiling.  The S3 server's copy is dropped too, but the next round's
    ``download_fileobj`` reads it back before the cold reads; (b) two revisions of ``bench/cache``,
    ``--cache-entries`` (10,000; 1,000 with ``--quick``; 0 skips b and c) files of 1 KiB each of different random
    bytes, written directly (objects put with boto3, manifests with quiltmount's writer); the second has every
    100th file changed (new bytes at a new key; the others at the same keys, as quilt3 pushes them).  Every file of
    the first is read through a fresh mount (8 threads, bytes checked), umount, then every file of the second on
    a fresh mount of the same cache: target at most 100 GETs (the changed files), against the first's GETs; (c)
    ``--rounds`` times, ``get_object`` of every file of the second revision (bytes read whole) on a
    ``ThreadPoolExecutor(8)`` vs ``quiltmount prefetch MOUNT/.packages/bench/cache/@<top hash> --json`` on a fresh
    mount with an empty cache, timed as a subprocess (its start-up included): target ratio >= 1.0 (files/s);
    then every file read through that mount (target 0 GETs) and again on a fresh mount of the same cache
    (reported); (d) ``--rounds`` times, the peak RSS (sampled every 0.1 s and VmHWM) of a daemon with
    ``--memory-cache-size`` ``--cache-memory-cache-size`` (128M, small so that what the disk cache holds in memory
    is not lost in the memory cache's share) doing the cold read of the big object, then reading every file of
    the second revision, then unmounting, with the disk cache capped at 64M and at 10G (the order alternates):
    target: the 10G peak <= 1.1x the 64M one.  The package is deleted at the end;
16. ``ls -l`` of the small-file prefix (``--only posix-listing``) on a fresh mount with ``--posix-metadata``
    (attributes from a HEAD of each object, 16 at a time) vs one without (the listing only), one after the
    other in each round (``--rounds``), and the HEADs the daemon sent; no target: it tells what the option
    costs.

"Durable" in 9-11 is when ``quiltmount umount`` returns: it unmounts, then waits for the daemon to
finish every pending upload and exit, and fails if one did not land.  The time runs from the start of
the writes (``cp``, the first ``open``) to the end of ``umount``, so it includes the unmount and the
daemon's exit: the details give ``umount_idle_seconds`` (umount of a fresh mount that has nothing to
upload) and, for 9, the moment a HEAD poll (every 0.1 s) first saw the whole object in S3.  (Not
``fsync`` on a new descriptor after ``close``: the daemon submits a file's upload on FUSE ``release``,
which the kernel sends after ``close`` returns, so such an ``fsync`` can return before the upload has
even been queued.  Not ``status --json``: it is rewritten once a second.)  Then the objects are
checked: the size with HEAD, and the SHA-256 of sampled 1 MiB ranges (first, last, across the first part
boundary and 8 random) against the local file; for 10, a listing of every size and the bytes of 25
files.  Written objects are deleted after each measurement.

It prints a table and writes every figure to ``--json-out``, with, for each measurement through a
mount, the daemon's S3 requests and bytes read (from ``quiltmount status --json``) and the CPU
seconds of the daemon, the reader and the server.  Missed targets do not change the exit status: it
is 0 unless something failed (a mount, a read, wrong data, a timeout).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import io
import itertools
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

import quiltmount
from quiltmount import state as qm_state
from quiltmount.fs.draft import Draft, commit_draft
from quiltmount.fs.staging import CLOSED
from quiltmount.packages import manifest as mf
from quiltmount.packages.registry import Registry
from quiltmount.storage.counting import CountingStore
from quiltmount.storage.s3 import S3Store

REPO = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO / "tests"

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
MB = 1_000_000

BIG_KEY = "bench/big.bin"
SMALL_PREFIX = "bench/small/"
SMALL_FILE_SIZE = 1 * KiB
READ_CHUNK = 1 * MiB
UPLOAD_CHUNK = 8 * MiB
UPLOAD_THREADS = 16
PREAD_MIN, PREAD_MAX = 4 * KiB, 1 * MiB
PREAD_SEED = 20240611
RSS_INTERVAL = 0.1
RSS_SLACK = 150 * MiB
STATUS_SETTLE = 2.2  # the daemon rewrites its status record every 1 s
#: Kernel calls a phase reports (status fuse_calls): reads and writes tell the request sizes the kernel chose.
FUSE_CALLS_SHOWN = ("read", "write", "getattr", "lookup")
MOUNT_TIMEOUT = 120.0
MANY_PACKAGE = "bench/many"  # --package-entries entries of 1 KiB (the small objects, reused)
LARGE_PACKAGE = "bench/large"  # one entry: the big object
LARGE_ENTRY = "big.bin"
PACKAGE_DIRS = 100
HASH_CHUNK = 8 * MiB
WRITE_PREFIX = "bench/write/"  # objects written by measurements 9-11 (deleted afterwards)
WRITE_PART = 8 * MiB  # the daemon's multipart part size (verification samples straddle part boundaries)
VISIBILITY_POLL = 0.1  # seconds between the HEADs that watch for a written object to appear in S3
VERIFY_RANGES = 8  # random 1 MiB ranges (besides the first, last and a part-straddling one) compared by SHA-256
VERIFY_RANGE = 1 * MiB
VERIFY_SEED = 20240612
SMALL_VERIFY = 25  # small written files whose bytes are read back with get_object
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SCALE_PACKAGES = ("bench/scale1", "bench/scale2", "bench/scale3")  # 12.: three revisions of --scale-entries
SCALE_DIR_ENTRIES = 1000  # entries per directory: dirNNNN/fileNNNN.bin
SCALE_OBJECTS = 16  # the small objects the scale entries point at (only a few are read)
SCALE_CHECK_ENTRIES = 2000  # the streamed manifest writer is checked against Manifest.top_hash at this size
SCALE_DEEP_STATS = 5  # deep paths stat'ed on a fresh mount, each in a directory never listed
SCALE_RSS_TARGET = 250 * MiB
COMMIT_PACKAGE = "bench/commit"  # 13.: a revision of --commit-entries files, and the drafts committed on it
COMMIT_BIG_KEY = "new/big.bin"  # 13.: the logical key of the --write-mib MiB file committed each round
COMMIT_WRITES = 3  # what a commit writes besides its files: the manifest, a timestamp pointer, `latest`
COMMIT_SMALL_SECONDS = 2.0  # issue 15: one changed 1 KiB file in a draft of a 10,000-entry revision
DISK_CACHE_OFF_DIR = "disk-cache-off"  # the --disk-cache-dir of mounts without the disk cache (never created)
#: The block caches' counters a phase reports (status `cache`), when the mount has the disk cache.
CACHE_COUNTERS = ("memory_hits", "memory_misses", "disk_hits", "disk_misses", "disk_dropped", "disk_used",
                  "disk_limit", "disk_enabled")
CACHE_PACKAGE = "bench/cache"  # 15.: two revisions of --cache-entries files sharing all but CACHE_CHANGED_SHARE
CACHE_CHANGED_SHARE = 100  # one entry in this many differs between the two revisions (100 of 10,000)
CACHE_READERS = 8  # threads reading a revision's files through a mount, and of prefetch's boto3 baseline
CACHE_REREAD_RATIO = 2.0  # issue 16: re-read from the disk cache vs the cold read of the same run
CACHE_RSS_SIZES = ("64M", "10G")  # issue 16: the daemon's peak RSS must not grow with the disk cache's cap
CACHE_RSS_RATIO = 1.1
#: measured on main before the revision index (issue 13): entries -> first `ls` of the revision (the daemon
#: downloaded and parsed the whole manifest on every fresh mount), daemon RSS after browsing it, its peak RSS,
#: `find -L` of the revision.
SCALE_REFERENCE: dict[int, dict[str, float]] = {
    1_000_000: {"first_ls_seconds": 54.0, "rss_after_bytes": 1.48 * GiB, "peak_rss_bytes": 2.2 * GiB,
                "find_seconds": 16.0},
    100_000: {"first_ls_seconds": 4.2, "rss_after_bytes": 186 * MiB, "peak_rss_bytes": 259 * MiB,
              "find_seconds": 1.5},
}


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A pass condition on the ratio (value / baseline) or on the value itself."""

    on: str  # "ratio" or "value"
    op: str  # ">=", "<=" or "=="
    threshold: float

    def check(self, value: float | None, ratio: float | None) -> bool | None:
        subject = ratio if self.on == "ratio" else value
        if subject is None:
            return None
        if self.op == ">=":
            return subject >= self.threshold
        if self.op == "<=":
            return subject <= self.threshold
        return subject == self.threshold

    def describe(self, unit: str) -> str:
        if self.on == "ratio":
            return f"ratio {self.op} {self.threshold:g}"
        return f"{self.op} {self.threshold:g} {unit}"


@dataclass
class Result:
    """One line of the final table (value from the mount, baseline from boto3)."""

    name: str
    unit: str
    value: float | None
    baseline: float | None = None
    target: Target | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    #: (value, baseline) of each round, measured one right after the other: the ratio is their median
    rounds: list[tuple[float, float]] = field(default_factory=list)

    @classmethod
    def of_rounds(cls, name: str, unit: str, rounds: list[tuple[float, float]], target: Target | None,
                  details: dict[str, Any]) -> Result:
        """Value and baseline: the medians of the rounds'."""
        return cls(name, unit, statistics.median(v for v, _ in rounds), statistics.median(b for _, b in rounds),
                   target, details, rounds=rounds)

    @property
    def ratio(self) -> float | None:
        if self.rounds:
            return statistics.median(value / baseline for value, baseline in self.rounds)
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool | None:
        if self.error is not None:
            return False
        return self.target.check(self.value, self.ratio) if self.target else None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = self.target.describe(self.unit) if self.target else None
        data["ratio"] = self.ratio
        data["passed"] = self.passed
        return data


# --------------------------------------------------------------------------------------------------
# Helpers: S3 server, clients, data
# --------------------------------------------------------------------------------------------------


def import_from_tests(name: str) -> ModuleType:
    """A module of the project's tests/ (not a package): `s3server`, the test server; `faultproxy`."""
    if str(TESTS_DIR) not in sys.path:
        sys.path.insert(0, str(TESTS_DIR))
    return importlib.import_module(name)


#: The test server's environment with --server-keeps-memory.  On VMs whose host takes back the memory a guest
#: frees (free page reporting), a page used for the first time costs the guest far more than a page used
#: again (here 1.4-1.8 s per GiB against 0.2 s), and moto takes ~1 GiB of new memory per 256 MiB uploaded
#: (parts and the assembled object in temporary files, buffers from mmap).  That cost lands on the server's
#: CPU, shared with the client on the same cores, and depends on what any process freed just before.  With
#: objects in memory and glibc keeping what it frees (one arena, no mmap, no trimming), the server reuses its
#: own pages, and its CPU no longer depends on the client's memory history (README, measurement 14).
SERVER_KEEPS_MEMORY = {"MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(1 << 30), "MALLOC_ARENA_MAX": "1",
                       "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


@contextlib.contextmanager
def s3_endpoint(args: argparse.Namespace) -> Iterator[tuple[str, int | None]]:
    """Yield (endpoint URL, server pid if it is our child): the given server or an S3TestServer."""
    if args.endpoint_url:
        yield args.endpoint_url, None
        return
    if args.in_process_server:
        with import_from_tests("s3server").S3TestServer() as server:
            yield server.endpoint_url, None
        return
    # tests/s3server.py runs S3TestServer and prints its endpoint URL as the first line.
    environment = {**os.environ, **(SERVER_KEEPS_MEMORY if args.server_keeps_memory else {})}
    process = subprocess.Popen([sys.executable, str(TESTS_DIR / "s3server.py")], stdout=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True, env=environment)
    try:
        assert process.stdout is not None
        endpoint = process.stdout.readline().strip()
        if not endpoint.startswith("http"):
            raise RuntimeError(f"S3 test server did not start (exit status {process.wait(10)})")
        yield endpoint, process.pid
    finally:
        if process.poll() is not None:  # died during the run: every later measurement failed because of it
            print(f"warning: the S3 test server (pid {process.pid}) exited early with status {process.returncode}",
                  file=sys.stderr)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_client(endpoint: str, pool: int = 10) -> Any:
    """A boto3 S3 client with default settings (path-style, as quiltmount uses with --endpoint-url)."""
    return boto3.client("s3", endpoint_url=endpoint,
                        config=BotoConfig(s3={"addressing_style": "path"}, max_pool_connections=pool))


class RandomStream(io.RawIOBase):
    """A read-only stream of `size` random bytes, generated in UPLOAD_CHUNK pieces."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.remaining = size
        self.pending = b""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.remaining + len(self.pending) if n is None or n < 0 else n
        while len(self.pending) < n and self.remaining:
            piece = min(UPLOAD_CHUNK, self.remaining)
            self.pending += os.urandom(piece)
            self.remaining -= piece
        data, self.pending = self.pending[:n], self.pending[n:]
        return data


class NullSink:
    """A seekable file-like object that discards what is written (counts the bytes)."""

    def __init__(self) -> None:
        self.written = 0
        self.position = 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        self.position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = offset if whence == 0 else self.position + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return True


def small_keys(count: int) -> list[str]:
    """The keys of the small objects, in the order they are read."""
    return [f"{SMALL_PREFIX}f{index:05d}.bin" for index in range(count)]


def prepare_data(endpoint: str, bucket: str, size: int, count: int) -> dict[str, Any]:
    """Create the bucket, the big object and the small objects (skipping what is already there)."""
    s3 = make_client(endpoint, pool=UPLOAD_THREADS)
    info: dict[str, Any] = {}
    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    try:
        existing = s3.head_object(Bucket=bucket, Key=BIG_KEY)["ContentLength"]
    except ClientError:
        existing = None
    started = time.perf_counter()
    if existing != size:
        s3.upload_fileobj(RandomStream(size), bucket, BIG_KEY)
        info["big_upload_s"] = time.perf_counter() - started
        info["big_upload_MBps"] = size / MB / info["big_upload_s"]

    keys = small_keys(count)
    present = {item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=SMALL_PREFIX)
               for item in page.get("Contents", [])}
    if present != set(keys):
        for stale in present - set(keys):
            s3.delete_object(Bucket=bucket, Key=stale)
        started = time.perf_counter()
        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(SMALL_FILE_SIZE)),
                          sorted(set(keys) - present)))
        info["small_upload_s"] = time.perf_counter() - started
    return info


def put_package(s3: Any, bucket: str, name: str, entries: list[mf.Entry]) -> tuple[str, int]:
    """Write a package revision like quilt3 would (manifest, timestamp pointer, latest): (top hash, bytes)."""
    manifest = mf.Manifest({"version": "v0", "message": "bench"}, entries)
    top_hash = manifest.top_hash
    data = mf.write_manifest(manifest)
    s3.put_object(Bucket=bucket, Key=f".quilt/packages/{top_hash}", Body=data)
    for pointer in (str(int(time.time())), "latest"):
        s3.put_object(Bucket=bucket, Key=f".quilt/named_packages/{name}/{pointer}", Body=top_hash.encode("ascii"))
    return top_hash, len(data)


def s3_physical_key(bucket: str, key: str, version_id: str | None) -> str:
    return mf.format_physical_key(mf.PhysicalKey("s3", bucket, key, version_id))


def prepare_packages(bench: Bench) -> dict[str, Any]:
    """Write MANY_PACKAGE and LARGE_PACKAGE (without quilt3: moto cannot complete its multipart uploads).

    MANY_PACKAGE: --package-entries entries `dNNN/fNNNNN.bin` over PACKAGE_DIRS directories, whose physical
    keys cycle through the small objects (each read once here to hash it).  LARGE_PACKAGE: one entry
    LARGE_ENTRY, the big object, hashed here as it is downloaded (the hashing time is reported: the
    daemon does the same work to verify a read).
    """
    s3, bucket = bench.s3, bench.bucket
    info: dict[str, Any] = {}
    started = time.perf_counter()
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        client = make_client(bench.endpoint, pool=UPLOAD_THREADS)
        bodies = dict(zip(bench.keys, pool.map(
            lambda key: client.get_object(Bucket=bucket, Key=key)["Body"].read(), bench.keys)))
    entries = []
    for index in range(bench.args.package_entries):
        key = bench.keys[index % len(bench.keys)]
        data = bodies[key]
        entries.append(mf.Entry(f"d{index % PACKAGE_DIRS:03d}/f{index:05d}.bin", s3_physical_key(bucket, key, None),
                                len(data), mf.SHA2_256_CHUNKED, mf.hash_bytes(mf.SHA2_256_CHUNKED, data)))
    info["many_top_hash"], info["many_manifest_bytes"] = put_package(s3, bucket, MANY_PACKAGE, entries)
    info["many_entries"] = len(entries)
    info["many_bytes"] = sum(entry.size for entry in entries)
    info["many_prepare_s"] = time.perf_counter() - started

    started = time.perf_counter()
    version_id = s3.head_object(Bucket=bucket, Key=BIG_KEY).get("VersionId")
    response = s3.get_object(Bucket=bucket, Key=BIG_KEY, **({"VersionId": version_id} if version_id else {}))
    size = response["ContentLength"]
    hasher = mf.make_hasher(mf.SHA2_256_CHUNKED, size)
    hash_s = 0.0
    hash_cpu = 0.0
    body = response["Body"]
    while chunk := body.read(HASH_CHUNK):
        wall, cpu = time.perf_counter(), time.thread_time()
        hasher.update(chunk)
        hash_s += time.perf_counter() - wall
        hash_cpu += time.thread_time() - cpu
    if hasher.bytes_hashed != size:
        raise RuntimeError(f"downloaded {hasher.bytes_hashed} bytes of {BIG_KEY}, expected {size}")
    big = mf.Entry(LARGE_ENTRY, s3_physical_key(bucket, BIG_KEY, version_id), size, mf.SHA2_256_CHUNKED,
                   hasher.value())
    info["large_top_hash"], _ = put_package(s3, bucket, LARGE_PACKAGE, [big])
    info["large_prepare_s"] = time.perf_counter() - started
    info["large_hash_seconds"] = hash_s  # sha2-256-chunked of the whole object, in this process
    info["large_hash_cpu_seconds"] = hash_cpu
    info["large_version_id"] = version_id
    return info


def scale_sources(bench: Bench) -> list[tuple[str, bytes]]:
    """(physical key, bytes) of the small objects the scale entries point at (SCALE_OBJECTS of them)."""
    return [(s3_physical_key(bench.bucket, key, None),
             bench.s3.get_object(Bucket=bench.bucket, Key=key)["Body"].read()) for key in bench.keys[:SCALE_OBJECTS]]


def scale_directories(count: int) -> int:
    return -(-count // SCALE_DIR_ENTRIES)


def scale_logical_key(index: int) -> str:
    """Entry `index` of a scale revision: `dirNNNN/fileNNNN.bin`, SCALE_DIR_ENTRIES per directory."""
    return f"dir{index // SCALE_DIR_ENTRIES:04d}/file{index % SCALE_DIR_ENTRIES:04d}.bin"


def scale_batches(count: int, sources: list[tuple[str, bytes]]) -> Iterator[list[mf.Entry]]:
    """The entries of a scale revision one directory at a time, in tree-walk order (sorted names)."""
    hashed = [(physical_key, len(data), mf.hash_bytes(mf.SHA2_256_CHUNKED, data)) for physical_key, data in sources]
    for first in range(0, count, SCALE_DIR_ENTRIES):
        batch = []
        for index in range(first, min(first + SCALE_DIR_ENTRIES, count)):
            physical_key, size, hash_value = hashed[index % len(hashed)]
            batch.append(mf.Entry(scale_logical_key(index), physical_key, size, mf.SHA2_256_CHUNKED, hash_value))
        yield batch


def write_scale_manifests(revisions: list[tuple[str, dict[str, Any]]], count: int,
                          sources: list[tuple[str, bytes]]) -> list[str]:
    """Write one manifest file per (path, header), all with the same `count` entries: their top hashes.

    Streaming, one directory of entries at a time: each batch's lines are what `write_manifest` writes for it
    (its header line stripped), and the top hashes are SHA-256 over `header_hash_part` then each
    `entry_hash_part` in tree-walk order, fed as the lines are written.
    """
    digests = [hashlib.sha256(mf.header_hash_part(header).encode("ascii")) for _, header in revisions]
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(open(path, "wb")) for path, _ in revisions]
        for file, (_, header) in zip(files, revisions):
            file.write(mf.write_manifest(mf.Manifest(header, [])))
        for batch in scale_batches(count, sources):
            data = mf.write_manifest(mf.Manifest({}, batch))
            lines = data[data.index(b"\n") + 1:]
            parts = "".join(mf.entry_hash_part(entry) for entry in batch).encode("ascii")
            for file, digest in zip(files, digests):
                file.write(lines)
                digest.update(parts)
    return [digest.hexdigest() for digest in digests]


def check_scale_writer(workdir: str, sources: list[tuple[str, bytes]]) -> dict[str, Any]:
    """write_scale_manifests at SCALE_CHECK_ENTRIES entries vs Manifest.top_hash and write_manifest of the
    same entries held in memory, and the file parsed back: a bug in the streamed writer fails the run."""
    header = {"version": "v0", "message": "bench scale check"}
    path = os.path.join(workdir, "scale-check.jsonl")
    try:
        (streamed,) = write_scale_manifests([(path, header)], SCALE_CHECK_ENTRIES, sources)
        with open(path, "rb") as file:
            data = file.read()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    manifest = mf.Manifest(header, [entry for batch in scale_batches(SCALE_CHECK_ENTRIES, sources)
                                    for entry in batch])
    if streamed != manifest.top_hash:
        raise RuntimeError(f"streamed top hash {streamed} != Manifest.top_hash {manifest.top_hash} "
                           f"({SCALE_CHECK_ENTRIES} entries)")
    if data != mf.write_manifest(manifest):
        raise RuntimeError(f"the streamed manifest of {SCALE_CHECK_ENTRIES} entries differs from write_manifest's")
    if mf.parse_manifest(data, max_record_size=None).top_hash != streamed:
        raise RuntimeError("the streamed manifest, parsed back, does not hash to its top hash")
    return {"entries": SCALE_CHECK_ENTRIES, "top_hash": streamed, "bytes": len(data)}


def prepare_scale_packages(bench: Bench) -> tuple[dict[str, Any], list[bytes]]:
    """Write SCALE_PACKAGES, --scale-entries entries each (a different header each: three top hashes).

    The manifests are written to local files (never all entries in memory) and uploaded with upload_file,
    unless the registry already has a manifest of that top hash and size (a persistent --endpoint-url server);
    then the timestamp and `latest` pointers, as put_package writes them.  Returns the figures and the bytes
    of the objects the entries point at (entry i: object i modulo their number).
    """
    count = bench.args.scale_entries
    s3, bucket = bench.s3, bench.bucket
    sources = scale_sources(bench)
    info: dict[str, Any] = {"entries": count, "directories": scale_directories(count),
                            "writer_check": check_scale_writer(bench.workdir, sources)}
    revisions = [(os.path.join(bench.workdir, f"scale-manifest-{number}.jsonl"),
                  {"version": "v0", "message": f"bench scale revision {number}: {count} entries"})
                 for number in range(1, len(SCALE_PACKAGES) + 1)]
    try:
        started = time.perf_counter()
        top_hashes = write_scale_manifests(revisions, count, sources)
        info["write_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        info["revisions"] = []
        for package, (path, _), top_hash in zip(SCALE_PACKAGES, revisions, top_hashes):
            size = os.path.getsize(path)
            key = f".quilt/packages/{top_hash}"
            try:
                present = s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == size
            except ClientError:
                present = False
            if not present:
                s3.upload_file(path, bucket, key, Config=TransferConfig())
            for pointer in (str(int(time.time())), "latest"):
                s3.put_object(Bucket=bucket, Key=f".quilt/named_packages/{package}/{pointer}",
                              Body=top_hash.encode("ascii"))
            info["revisions"].append({"package": package, "top_hash": top_hash, "manifest_bytes": size,
                                      "uploaded": not present})
        info["upload_seconds"] = time.perf_counter() - started
    finally:
        for path, _ in revisions:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return info, [data for _, data in sources]


# --------------------------------------------------------------------------------------------------
# Mounts
# --------------------------------------------------------------------------------------------------


def quiltmount_command() -> list[str]:
    """How to run the CLI: the `quiltmount` beside this Python, on PATH, or `python -m quiltmount`."""
    beside = Path(sys.executable).parent / "quiltmount"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("quiltmount")
    return [found] if found else [sys.executable, "-m", "quiltmount"]


def read_rss(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of a process in bytes, or None once it is gone."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    values[line.split(":")[0]] = int(line.split()[1]) * KiB
    except OSError:
        return None
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


class RssSampler(threading.Thread):
    """Samples a daemon's RSS every RSS_INTERVAL seconds until stopped or the process exits.

    It also keeps the daemon's last CPU-time reading (a daemon is not our child: once it has exited its
    CPU time is gone) and, with `mountpoint`, the last status record the daemon wrote (it rewrites it
    every second and removes it when it exits) and the most pending uploads that record ever showed.
    """

    def __init__(self, pid: int, mountpoint: str | None = None) -> None:
        super().__init__(name=f"rss-{pid}", daemon=True)
        self.pid = pid
        self.mountpoint = mountpoint
        self.peak_rss = 0
        self.peak_hwm = 0
        self.samples = 0
        self.last_cpu: float | None = None
        self.last_record: dict[str, Any] | None = None
        self.max_pending_uploads = 0
        self._stop_event = threading.Event()

    def sample(self) -> bool:
        values = read_rss(self.pid)
        if values is None:
            return False
        self.peak_rss = max(self.peak_rss, values[0])
        self.peak_hwm = max(self.peak_hwm, values[1])
        self.samples += 1
        cpu = cpu_seconds(self.pid)
        if cpu is not None:
            self.last_cpu = cpu
        if self.mountpoint is not None:
            record = qm_state.read_record(self.mountpoint)
            if record is not None and record.get("pid") == self.pid:
                self.last_record = record
                self.max_pending_uploads = max(self.max_pending_uploads, int(record.get("pending_uploads", 0)))
        return True

    def run(self) -> None:
        while self.sample() and not self._stop_event.wait(RSS_INTERVAL):
            pass

    def stop(self) -> None:
        self.sample()  # last look (VmHWM covers any peak between samples)
        self._stop_event.set()
        self.join()


class Mount:
    """A fresh `quiltmount mount` on a new temporary directory; unmounts on exit, whatever happened.

    Every mount gets a new, empty --cache-dir, so nothing (blocks, package manifests) survives from an
    earlier mount of the same source.  `endpoint`: the S3 server it talks to (default: the run's).  The shared
    disk cache (issue 16) is off (`--disk-cache-size 0`) unless `disk_cache_size` says otherwise (None: the flag
    not given, the daemon's default); its directory is always one under the run's (`--disk-cache-dir`:
    `disk_cache_dir`, else DISK_CACHE_OFF_DIR there), never the user's, so no bench mount reads or fills the
    user's cache.
    """

    def __init__(self, bench: Bench, label: str, prefix: str = "", memory_cache_size: str | None = None,
                 endpoint: str | None = None, disk_cache_size: str | None = "0",
                 disk_cache_dir: str | None = None, options: tuple[str, ...] = ()) -> None:
        self.bench = bench
        self.options = options
        self.label = label
        self.prefix = prefix
        self.memory_cache_size = memory_cache_size or bench.args.memory_cache_size
        self.endpoint = endpoint or bench.endpoint
        self.disk_cache_size = disk_cache_size
        self.disk_cache_dir = disk_cache_dir or os.path.join(bench.workdir, DISK_CACHE_OFF_DIR)
        self.path = ""
        self.pid = 0
        self.sampler: RssSampler | None = None
        self._timed_out = threading.Event()

    def __enter__(self) -> Mount:
        self.path = tempfile.mkdtemp(prefix=f"qm-{self.label}-", dir=self.bench.workdir)
        cache_dir = tempfile.mkdtemp(prefix=f"cache-{self.label}-", dir=self.bench.workdir)
        try:
            self.bench.quiltmount("mount", f"s3://{self.bench.bucket}/{self.prefix}", self.path,
                                  "--endpoint-url", self.endpoint, "--cache-dir", cache_dir,
                                  "--memory-cache-size", self.memory_cache_size,
                                  "--disk-cache-dir", self.disk_cache_dir,
                                  *(["--disk-cache-size", self.disk_cache_size] if self.disk_cache_size else []),
                                  *self.options, timeout=MOUNT_TIMEOUT)
            self.pid = int(self.record()["pid"])
            self.sampler = RssSampler(self.pid, self.path)
            self.sampler.start()
        except BaseException:
            self._unmount()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._unmount()

    def record(self) -> dict[str, Any]:
        """This mount's record from `quiltmount status --json`."""
        output = self.bench.quiltmount("status", "--json", timeout=60)
        for record in json.loads(output)["mounts"]:
            if record.get("mountpoint") == self.path:
                return record
        raise RuntimeError(f"no status record for {self.path}")

    def umount(self) -> float:
        """`quiltmount umount` now: its wall time.  It returns once the daemon has finished every pending
        upload and exited, and fails (exit status 1) if a file could not be uploaded."""
        started = time.perf_counter()
        self.bench.quiltmount("umount", self.path, timeout=self.bench.args.phase_timeout)
        seconds = time.perf_counter() - started
        if pid_alive(self.pid):
            raise RuntimeError(f"quiltmount umount {self.path} returned but daemon {self.pid} is still running")
        return seconds

    def requests(self, record: dict[str, Any] | None = None) -> dict[str, int]:
        """The daemon's request totals so far (list/head/get), the bytes it has read and the kernel's calls of
        the operations in FUSE_CALLS_SHOWN (fuse_read: how many requests a read was cut into)."""
        record = record or self.record()
        requests = record["requests"]
        calls = {f"fuse_{op}": count for op, count in record.get("fuse_calls", {}).items() if op in FUSE_CALLS_SHOWN}
        return {**requests["totals"], "bytes_read": requests.get("bytes_read", 0), **calls}

    @staticmethod
    def cache_counts(record: dict[str, Any]) -> dict[str, int]:
        """The block caches' counters in a status record (CACHE_COUNTERS), when the mount has the disk cache."""
        cache = record.get("cache", {})
        return {name: int(cache[name]) for name in CACHE_COUNTERS if name in cache} if "disk_limit" in cache else {}

    @contextlib.contextmanager
    def phase(self, what: str) -> Iterator[dict[str, Any]]:
        """Run `what` under the deadline; yield a dict that then holds its requests and CPU seconds.

        "requests" is the difference of the daemon's status record before and after (each read once
        the daemon has rewritten it); "cpu_seconds" is the CPU time of the daemon, this process (the
        reader) and the S3 server (when it is our child) during the block; "cache", on a mount with the disk
        cache only: the block caches' hits and misses and the blocks the disk cache dropped during the block
        (the same difference), its bytes used and cap at the end.
        """
        stats: dict[str, Any] = {}
        time.sleep(STATUS_SETTLE)  # so that the record includes everything done before the phase
        record = self.record()
        before, cache_before = self.requests(record), self.cache_counts(record)
        with self.deadline(what), cpu_meter(self.bench.cpu_pids(daemon=self.pid)) as cpu:
            yield stats
        stats["cpu_seconds"] = cpu
        time.sleep(STATUS_SETTLE)
        record = self.record()
        after, cache_after = self.requests(record), self.cache_counts(record)
        stats["requests"] = {op: after.get(op, 0) - before.get(op, 0) for op in sorted(after.keys() | before.keys())}
        if cache_after:  # hits and misses during the phase; disk_used, disk_limit at its end
            stats["cache"] = {name: value - cache_before.get(name, 0) if name.endswith(("hits", "misses", "dropped"))
                              else value for name, value in cache_after.items()}

    @contextlib.contextmanager
    def deadline(self, what: str) -> Iterator[None]:
        """Kill the daemon if `what` takes longer than --phase-timeout (a hung FUSE read never returns)."""
        def expire() -> None:
            self._timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            subprocess.run(["fusermount3", "-uz", self.path], capture_output=True, check=False)

        timer = threading.Timer(self.bench.args.phase_timeout, expire)
        timer.start()
        try:
            yield
        except OSError as exc:
            if self._timed_out.is_set():
                raise TimeoutError(f"{what} took over {self.bench.args.phase_timeout:g} s; daemon killed") from exc
            raise
        finally:
            timer.cancel()
        if self._timed_out.is_set():
            raise TimeoutError(f"{what} took over {self.bench.args.phase_timeout:g} s; daemon killed")

    def _unmount(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()
            self.bench.rss[f"{self.label} (pid {self.pid})"] = {
                "peak_rss_bytes": self.sampler.peak_rss, "peak_hwm_bytes": self.sampler.peak_hwm,
                "samples": self.sampler.samples}
        if is_mounted(self.path) or (self.pid and pid_alive(self.pid)):
            try:
                self.bench.quiltmount("umount", self.path, timeout=MOUNT_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - fall back to a lazy unmount
                print(f"warning: quiltmount umount {self.path} failed ({exc}); using fusermount3 -uz",
                      file=sys.stderr)
                subprocess.run(["fusermount3", "-uz", self.path], capture_output=True, check=False)
                wait_for_exit(self.pid, 10.0)
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


def is_mounted(path: str) -> bool:
    """Whether `path` is a mountpoint, even one whose FUSE daemon died (where os.path.ismount says no)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        return any(line.split()[4] == path for line in mountinfo)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs.  An exited daemon that its new parent has not reaped yet (a zombie)
    does not: quiltmount's own check, which `quiltmount umount` uses to wait for the daemon."""
    return qm_state.pid_alive(pid)


def wait_for_exit(pid: int, timeout: float) -> None:
    """Wait for a daemon we started to exit; SIGKILL it (by pid) if it does not."""
    deadline = time.monotonic() + timeout
    while pid and pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid and pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process and its waited-for children (e.g. `ls`), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


@contextlib.contextmanager
def cpu_meter(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    """Yield a dict that, after the block, holds the CPU seconds each named process spent in it."""
    usage: dict[str, float] = {}
    start = {name: cpu_seconds(pid) for name, pid in pids.items()}
    yield usage
    for name, pid in pids.items():
        before, after = start[name], cpu_seconds(pid)
        if before is not None and after is not None:
            usage[name] = round(after - before, 3)


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


class Bench:
    """Shared state of one run: the server, the boto3 client, the data layout, RSS peaks."""

    def __init__(self, args: argparse.Namespace, endpoint: str, server_pid: int | None, workdir: str) -> None:
        self.args = args
        self.endpoint = endpoint
        self.server_pid = server_pid
        self.workdir = workdir
        self.bucket: str = args.bucket
        self.size: int = args.size_mib * MiB
        self.keys = small_keys(args.small_files)
        self.s3 = make_client(endpoint)
        self.qm = quiltmount_command()
        self.rss: dict[str, dict[str, int]] = {}
        self.seq_cold: dict[str, Any] | None = None  # measurement 1's figures, compared with the package read
        self._packages: dict[str, Any] | None = None
        self._scale: dict[str, Any] | None = None
        self.scale_bodies: list[bytes] = []  # the objects scale entry i points at, i modulo their number
        # The daemons' XDG_CACHE_HOME: the revision indexes they build ($XDG_CACHE_HOME/quiltmount/indexes/,
        # shared by every mount of a user) live and die with the run, so the first use of a revision is cold.
        self.cache_home = os.path.join(workdir, "xdg-cache")
        self.index_dir = os.path.join(self.cache_home, "quiltmount", "indexes")
        os.makedirs(self.cache_home, mode=0o700, exist_ok=True)
        self.env = {**os.environ, "XDG_CACHE_HOME": self.cache_home}

    def packages(self) -> dict[str, Any]:
        """The benchmark packages, written on first use (see prepare_packages)."""
        if self._packages is None:
            print(f"  writing packages {MANY_PACKAGE} ({self.args.package_entries} entries) and {LARGE_PACKAGE} ...",
                  flush=True)
            self._packages = prepare_packages(self)
        return self._packages

    def scale_packages(self) -> dict[str, Any]:
        """The scale packages of measurement 12, written on first use (see prepare_scale_packages)."""
        if self._scale is None:
            count = self.args.scale_entries
            print(f"  writing packages {', '.join(SCALE_PACKAGES)} ({count} entries each) ...", flush=True)
            self._scale, self.scale_bodies = prepare_scale_packages(self)
            print(f"  manifests of {self._scale['revisions'][0]['manifest_bytes'] / MB:.0f} MB written in "
                  f"{self._scale['write_seconds']:.1f} s, uploaded in {self._scale['upload_seconds']:.1f} s",
                  flush=True)
        return self._scale

    def quiltmount(self, *argv: str, timeout: float) -> str:
        result = subprocess.run([*self.qm, *argv], capture_output=True, text=True, timeout=timeout, check=False,
                                env=self.env)  # the daemon `mount` starts inherits it
        if result.returncode != 0:
            raise RuntimeError(f"quiltmount {' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def cpu_pids(self, daemon: int | None = None) -> dict[str, int]:
        """The processes whose CPU time a measurement reports."""
        pids = {"client": os.getpid()}
        if self.server_pid:
            pids["server"] = self.server_pid
        if daemon:
            pids["daemon"] = daemon
        return pids

    def mount(self, label: str, prefix: str = "", memory_cache_size: str | None = None,
              endpoint: str | None = None, disk_cache_size: str | None = "0",
              disk_cache_dir: str | None = None, options: tuple[str, ...] = ()) -> Mount:
        """A fresh mount of the bucket, or of `prefix` (ending in '/') in it; the disk cache off unless
        `disk_cache_size` says otherwise (None: the daemon's default cap; in `disk_cache_dir`, under the run's);
        `options`: more options of `quiltmount mount`."""
        return Mount(self, label, prefix, memory_cache_size, endpoint, disk_cache_size, disk_cache_dir, options)

    @staticmethod
    def in_mount(mount: Mount, key: str) -> str:
        """The path of `key` under `mount`."""
        return os.path.join(mount.path, key.removeprefix(mount.prefix))


def read_sequential(path: str, drop_cache: bool = False) -> tuple[int, float]:
    """Open and read a file to nothing in READ_CHUNK pieces; return (bytes, seconds).

    `drop_cache` first evicts this one file from the page cache (posix_fadvise DONTNEED).  Not
    drop_caches: that would also evict the S3 server's copy of the object, which moto keeps in a
    temporary file, and so slow the mount's read but not the baseline's.
    """
    buffer = bytearray(READ_CHUNK)
    view = memoryview(buffer)
    total = 0
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as file:
        if drop_cache:
            os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while True:
            count = file.readinto(view)
            if not count:
                break
            total += count
    return total, time.perf_counter() - started


def direct_download(bench: Bench) -> tuple[float, dict[str, float]]:
    """The baseline of measurements 1 and 7: boto3 `download_fileobj` of the big object (seconds, CPU)."""
    sink = NullSink()
    with cpu_meter(bench.cpu_pids()) as direct_cpu:
        started = time.perf_counter()
        bench.s3.download_fileobj(bench.bucket, BIG_KEY, sink, Config=TransferConfig())
        direct_s = time.perf_counter() - started
    if sink.written != bench.size:
        raise RuntimeError(f"download_fileobj wrote {sink.written} bytes, expected {bench.size}")
    return direct_s, direct_cpu


def measure_sequential(bench: Bench) -> list[Result]:
    """1. cold sequential read vs download_fileobj; 2. warm re-read on the same mount (each round)."""
    cold_rounds, warm_speeds, round_details = [], [], []
    for _ in range(bench.args.rounds):
        direct_s, direct_cpu = direct_download(bench)
        with bench.mount("seq") as mount:
            path = bench.in_mount(mount, BIG_KEY)
            with mount.phase("cold sequential read") as cold:
                cold_bytes, cold_s = read_sequential(path, drop_cache=True)  # a fresh mount: nothing cached
            with mount.phase("warm sequential read") as warm:
                warm_bytes, warm_s = read_sequential(path)
        for label, count in (("cold", cold_bytes), ("warm", warm_bytes)):
            if count != bench.size:
                raise RuntimeError(f"{label} read through the mount returned {count} bytes, expected {bench.size}")
        cold_rounds.append((bench.size / MB / cold_s, bench.size / MB / direct_s))
        warm_speeds.append(bench.size / MB / warm_s)
        round_details.append({"seconds": cold_s, "baseline_seconds": direct_s, "baseline_cpu_seconds": direct_cpu,
                              **cold, "warm": {"seconds": warm_s, **warm}})
    middle = round_details[sorted(range(len(cold_rounds)), key=lambda i: cold_rounds[i][0])[len(cold_rounds) // 2]]
    bench.seq_cold = {"seconds": middle["seconds"], "cpu_seconds": middle["cpu_seconds"]}
    return [
        Result.of_rounds("cold sequential read", "MB/s", cold_rounds, Target("ratio", ">=", 0.9),
                         {"rounds": round_details}),
        Result("warm re-read (same mount)", "MB/s", statistics.median(warm_speeds), None,
               Target("value", ">=", 2000), {"rounds_MBps": warm_speeds}),
    ]


def pread_ranges(size: int, count: int) -> list[tuple[int, int]]:
    """(offset, length) pairs: lengths uniform in [4 KiB, 1 MiB], offsets uniform within the object."""
    rng = random.Random(PREAD_SEED)
    ranges = []
    for _ in range(count):
        length = min(rng.randint(PREAD_MIN, PREAD_MAX), size)
        ranges.append((rng.randint(0, size - length), length))
    return ranges


def measure_preads(bench: Bench) -> Result:
    """3. random preads on one fd of a fresh mount vs ranged get_object calls (each round)."""
    ranges = pread_ranges(bench.size, bench.args.preads)
    rounds, round_details = [], []
    for _ in range(bench.args.rounds):
        direct_crcs = []
        with cpu_meter(bench.cpu_pids()) as direct_cpu:
            started = time.perf_counter()
            for offset, length in ranges:
                body = bench.s3.get_object(Bucket=bench.bucket, Key=BIG_KEY,
                                           Range=f"bytes={offset}-{offset + length - 1}")["Body"].read()
                direct_crcs.append((len(body), zlib.crc32(body)))
            direct_s = time.perf_counter() - started

        chunks: list[bytes] = []
        with bench.mount("pread") as mount:
            fd = os.open(bench.in_mount(mount, BIG_KEY), os.O_RDONLY)
            try:
                with mount.phase("random preads") as stats:
                    started = time.perf_counter()
                    for offset, length in ranges:
                        chunks.append(os.pread(fd, length, offset))
                    mount_s = time.perf_counter() - started
            finally:
                os.close(fd)
        mismatches = sum(1 for chunk, expected in zip(chunks, direct_crcs)
                         if (len(chunk), zlib.crc32(chunk)) != expected)
        if mismatches:
            raise RuntimeError(f"{mismatches} of {len(ranges)} preads through the mount returned wrong data")
        rounds.append((len(ranges) / mount_s, len(ranges) / direct_s))
        round_details.append({"seconds": mount_s, "baseline_seconds": direct_s, "baseline_cpu_seconds": direct_cpu,
                              **stats})
    return Result.of_rounds(f"{len(ranges)} random preads", "ops/s", rounds, Target("ratio", ">=", 1.4),
                            {"bytes_requested": sum(n for _, n in ranges), "rounds": round_details})


def list_walk(bench: Bench) -> tuple[int, float]:
    """One paginated ListObjectsV2 walk of the small-file prefix: (keys, seconds)."""
    started = time.perf_counter()
    count = 0
    for page in bench.s3.get_paginator("list_objects_v2").paginate(Bucket=bench.bucket, Prefix=SMALL_PREFIX,
                                                                    Delimiter="/"):
        count += len(page.get("Contents", []))
    return count, time.perf_counter() - started


def timed_command(argv: list[str], timeout: float) -> float:
    """Run a command with its output sent to /dev/null; return its wall time."""
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout, check=True)
    return time.perf_counter() - started


def measure_listing(bench: Bench) -> list[Result]:
    """4. `ls -l` and `find` of the small-file prefix on fresh mounts vs a ListObjectsV2 walk (each round)."""
    count = len(bench.keys)
    timeout = bench.args.phase_timeout
    commands = (["ls", "-l"], ["find"])
    rounds: dict[str, list[tuple[float, float]]] = {" ".join(command): [] for command in commands}
    details: dict[str, list[dict[str, Any]]] = {name: [] for name in rounds}
    for _ in range(bench.args.rounds):
        with cpu_meter(bench.cpu_pids()) as walk_cpu:
            listed, walk_s = list_walk(bench)
        if listed != count:
            raise RuntimeError(f"ListObjectsV2 found {listed} keys under {SMALL_PREFIX}, expected {count}")
        # The mounts are of the prefix itself, so that, like the LIST walk, they resolve no path first.
        for command in commands:
            name = " ".join(command)
            with bench.mount(command[0], SMALL_PREFIX) as mount:
                directory = bench.in_mount(mount, SMALL_PREFIX)
                with mount.phase(name) as stats:
                    seconds = timed_command([*command, directory], timeout)
                entries = len(os.listdir(directory))
            if entries != count:
                raise RuntimeError(f"the mount lists {entries} entries in {SMALL_PREFIX}, expected {count}")
            rounds[name].append((seconds, walk_s))
            details[name].append({"seconds": seconds, "baseline_seconds": walk_s, "baseline_cpu_seconds": walk_cpu,
                                  **stats})
    results = []
    for name in rounds:
        results.append(Result.of_rounds(f"{name} of {count} keys (cold)", "s", rounds[name],
                                        Target("ratio", "<=", 1.5), {"rounds": details[name]}))
        if name == "ls -l":
            heads = max(int(d["requests"].get("head", 0)) for d in details[name])
            results.append(Result("HEAD requests during ls -l (most in a round)", "requests", float(heads), None,
                                  Target("value", "==", 0)))
    return results


def measure_posix_listing(bench: Bench) -> list[Result]:
    """16. `ls -l` of the small-file prefix on fresh mounts with `--posix-metadata` (a HEAD per file) vs without
    (one LIST walk), one after the other in each round, and the HEADs the daemon sent."""
    count = len(bench.keys)
    rounds: list[tuple[float, float]] = []
    details: list[dict[str, Any]] = []
    for _ in range(bench.args.rounds):
        seconds: dict[str, float] = {}
        for label, options in (("default", ()), ("posix", ("--posix-metadata",))):
            with bench.mount(f"ls-{label}", SMALL_PREFIX, options=options) as mount:
                with mount.phase(f"ls -l ({label})") as stats:
                    seconds[label] = timed_command(["ls", "-l", bench.in_mount(mount, SMALL_PREFIX)],
                                                   bench.args.phase_timeout)
            details.append({"mode": label, "seconds": seconds[label], **stats})
        rounds.append((seconds["posix"], seconds["default"]))
    heads = max(int(d["requests"].get("head", 0)) for d in details if d["mode"] == "posix")
    return [Result.of_rounds(f"ls -l of {count} keys with --posix-metadata (cold), vs without", "s", rounds, None,
                             {"rounds": details}),
            Result("HEAD requests during ls -l with --posix-metadata (most in a round)", "requests", float(heads),
                   None, None)]


def measure_small_reads(bench: Bench) -> Result:
    """5. read every small file in one thread through a mount vs get_object of each key."""
    with cpu_meter(bench.cpu_pids()) as direct_cpu:
        started = time.perf_counter()
        for key in bench.keys:
            body = bench.s3.get_object(Bucket=bench.bucket, Key=key)["Body"].read()
            if len(body) != SMALL_FILE_SIZE:
                raise RuntimeError(f"get_object {key} returned {len(body)} bytes")
        direct_s = time.perf_counter() - started

    with bench.mount("small", SMALL_PREFIX) as mount:
        # One phase: a reader lists the directory and reads right away (the listing's metadata TTL runs).
        with mount.phase("listing and reading the small files") as stats:
            started = time.perf_counter()
            names = os.listdir(bench.in_mount(mount, SMALL_PREFIX))  # the names a reader would get
            listdir_s = time.perf_counter() - started
            if len(names) != len(bench.keys):
                raise RuntimeError(f"the mount lists {len(names)} small files, expected {len(bench.keys)}")
            paths = [bench.in_mount(mount, key) for key in bench.keys]
            started = time.perf_counter()
            for path in paths:
                with open(path, "rb") as file:
                    if len(file.read()) != SMALL_FILE_SIZE:
                        raise RuntimeError(f"{path}: wrong size through the mount")
            mount_s = time.perf_counter() - started
    count = len(bench.keys)
    return Result(f"read {count} small files (1 thread)", "files/s", count / mount_s, count / direct_s, None,
                  {"seconds": mount_s, "listdir_seconds_before": listdir_s, "baseline_seconds": direct_s,
                   "baseline_cpu_seconds": direct_cpu, **stats})


def manifest_baseline(bench: Bench, top_hash: str) -> tuple[float, dict[str, float]]:
    """One boto3 GET of a manifest + parse_manifest + its top-hash check: (seconds, CPU seconds).

    What a boto3 client must do to learn every name and size of a revision (the daemon does the same,
    and then builds its tree).
    """
    with cpu_meter(bench.cpu_pids()) as cpu:
        started = time.perf_counter()
        data = bench.s3.get_object(Bucket=bench.bucket, Key=f".quilt/packages/{top_hash}")["Body"].read()
        manifest = mf.parse_manifest(data, max_record_size=None)
        if manifest.top_hash != top_hash:
            raise RuntimeError(f"manifest {top_hash} hashes to {manifest.top_hash}")
        seconds = time.perf_counter() - started
    return seconds, cpu


def run_captured(argv: list[str], timeout: float) -> tuple[str, float]:
    """Run a command; return (its stdout, its wall time).  Fails on a non-zero exit status."""
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()[-500:]}")
    return result.stdout, seconds


def measure_package_listing(bench: Bench) -> list[Result]:
    """6. `find -L` and `du -sL` of a many-entry revision, each on a fresh mount once the manifest is loaded."""
    info = bench.packages()
    count = info["many_entries"]
    expected_kib = sum(-(-SMALL_FILE_SIZE // KiB) for _ in range(count))  # du counts 1 KiB units per file
    baseline_s, baseline_cpu = manifest_baseline(bench, info["many_top_hash"])
    timeout = bench.args.phase_timeout
    figures: dict[str, dict[str, Any]] = {}
    for command in (["find", "-L"], ["du", "-sL"]):
        name = " ".join(command)
        with bench.mount(f"pkg-{command[0]}") as mount:
            root = os.path.join(mount.path, ".packages", MANY_PACKAGE, "latest")
            # One `ls` of the revision: resolves the package and `latest`, then GETs and parses the manifest.
            with mount.phase("ls of the revision") as load:
                listing, load_s = run_captured(["ls", root + "/"], timeout)
            directories = min(PACKAGE_DIRS, count)
            if len(listing.split()) != directories:
                raise RuntimeError(f"ls {root}/ shows {len(listing.split())} names, expected {directories}")
            if not load["requests"].get("get"):
                raise RuntimeError(f"ls {root}/ made no GET: was the manifest already loaded? {load['requests']}")
            with mount.phase(name) as stats:
                output, seconds = run_captured([*command, root, *(["-type", "f"] if command[0] == "find" else [])],
                                               timeout)
        if command[0] == "find":
            found = len(output.splitlines())
            if found != count:
                raise RuntimeError(f"find -L {root} -type f found {found} files, expected {count}")
            stats["files_found"] = found
        else:
            kib = int(output.split()[0])
            if kib != expected_kib:
                raise RuntimeError(f"du -sL {root} reports {kib} KiB, expected {expected_kib}")
            stats["du_kib"] = kib
        figures[command[0]] = {"seconds": seconds, "load_seconds": load_s, "load": load, **stats}
    find, du = figures["find"], figures["du"]
    common = {"entries": count, "directories": min(PACKAGE_DIRS, count), "top_hash": info["many_top_hash"],
              "manifest_bytes": info["many_manifest_bytes"], "baseline": "boto3 GET of the manifest + parse_manifest",
              "baseline_seconds": baseline_s, "baseline_cpu_seconds": baseline_cpu}
    after_load = {op: find["requests"].get(op, 0) + du["requests"].get(op, 0) for op in ("list", "head", "get")}
    return [
        Result(f"ls of a {count}-entry revision (loads manifest)", "s", find["load_seconds"], baseline_s, None,
               {**common, "seconds_on_du_mount": du["load_seconds"], **find["load"]}),
        Result(f"find -L of a {count}-entry revision", "s", find["seconds"], baseline_s, None,
               {**common, **{k: v for k, v in find.items() if k != "load"}}),
        Result(f"du -sL of a {count}-entry revision", "s", du["seconds"], baseline_s, None,
               {**common, **{k: v for k, v in du.items() if k != "load"}}),
        Result("S3 requests in find + du after manifest load", "requests", float(sum(after_load.values())), None,
               Target("value", "==", 0), {"requests": after_load, "find": find["requests"], "du": du["requests"]}),
    ]


def measure_package_read(bench: Bench) -> list[Result]:
    """7. cold sequential read of a large package entry (hash-verified) vs download_fileobj of its object."""
    info = bench.packages()
    direct_s, direct_cpu = direct_download(bench)

    with bench.mount("pkg-read") as mount:
        path = os.path.join(mount.path, ".packages", LARGE_PACKAGE, "latest", LARGE_ENTRY)
        size = os.stat(path).st_size  # loads the manifest before the measurement
        if size != bench.size:
            raise RuntimeError(f"{path} has size {size}, expected {bench.size}")
        with mount.phase("cold sequential read of a package entry") as cold:
            count, seconds = read_sequential(path, drop_cache=True)  # an EIO here would be a hash mismatch
    if count != bench.size:
        raise RuntimeError(f"the package entry read returned {count} bytes, expected {bench.size}")
    gb = bench.size / 1e9
    daemon_cpu = cold["cpu_seconds"].get("daemon")
    plain_cpu = bench.seq_cold["cpu_seconds"].get("daemon") if bench.seq_cold else None
    details = {"seconds": seconds, "baseline_seconds": direct_s, "baseline_cpu_seconds": direct_cpu,
               "top_hash": info["large_top_hash"], "hash_type": mf.SHA2_256_CHUNKED,
               "sha2_256_chunked_seconds_in_bench": info["large_hash_seconds"],
               "sha2_256_chunked_cpu_seconds_in_bench": info["large_hash_cpu_seconds"], **cold}
    return [
        Result(f"cold read of a {bench.size // MiB} MiB package entry", "MB/s", bench.size / MB / seconds,
               bench.size / MB / direct_s, Target("ratio", ">=", 0.9), details),
        Result("daemon CPU: package entry vs bucket read", "s/GB",
               daemon_cpu / gb if daemon_cpu is not None else None,
               plain_cpu / gb if plain_cpu is not None else None, None,
               {"package_daemon_cpu_seconds": daemon_cpu, "bucket_daemon_cpu_seconds": plain_cpu,
                "hash_cpu_seconds_per_GB_in_bench": info["large_hash_cpu_seconds"] / gb,
                "bucket_read_seconds": bench.seq_cold["seconds"] if bench.seq_cold else None}),
    ]


# --------------------------------------------------------------------------------------------------
# Writes (write-back): durable = `quiltmount umount` has returned
# --------------------------------------------------------------------------------------------------


def write_random_file(path: str, size: int) -> str:
    """A local file of `size` random bytes (left in the page cache, as for any file just written)."""
    with open(path, "wb") as file:
        remaining = size
        while remaining:
            piece = min(UPLOAD_CHUNK, remaining)
            file.write(os.urandom(piece))
            remaining -= piece
    return path


def delete_prefix(s3: Any, bucket: str, prefix: str) -> int:
    """Delete every object under `prefix` (the bench's written objects; moto keeps them all): the count."""
    deleted = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            deleted += len(keys)
    return deleted


def timed_upload_file(bench: Bench, path: str, key: str, *, sha256: bool = False) -> float:
    """Seconds of one boto3 `upload_file` of `path`: the baseline of writes.  `sha256`: with SHA-256 checksums,
    as the mount sends them (S3 verifies every part; the composite is quilt3's hash); upload_file's default is
    CRC32, cheaper for the server, so both are measured."""
    extra = {"ExtraArgs": {"ChecksumAlgorithm": "SHA256"}} if sha256 else {}
    started = time.perf_counter()
    bench.s3.upload_file(path, bench.bucket, key, Config=TransferConfig(), **extra)
    return time.perf_counter() - started


def verify_object(s3: Any, bucket: str, key: str, local: str) -> dict[str, Any]:
    """Check an uploaded object against the local file: its size, then the SHA-256 of sampled ranges.

    The ranges: the first and last VERIFY_RANGE bytes, one straddling the first part boundary, and
    VERIFY_RANGES random ones (fixed seed), each fetched with get_object(Range=...).
    """
    size = os.path.getsize(local)
    head = s3.head_object(Bucket=bucket, Key=key)
    if head["ContentLength"] != size:
        raise RuntimeError(f"s3://{bucket}/{key} has {head['ContentLength']} bytes, expected {size}")
    length = min(VERIFY_RANGE, size)
    starts = {0, size - length}
    if size > WRITE_PART + length:
        starts.add(WRITE_PART - length // 2)
    rng = random.Random(VERIFY_SEED)
    starts.update(rng.randint(0, size - length) for _ in range(VERIFY_RANGES))
    with open(local, "rb") as file:
        for start in sorted(starts):
            file.seek(start)
            expected = hashlib.sha256(file.read(length)).hexdigest()
            body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")["Body"].read()
            if hashlib.sha256(body).hexdigest() != expected:
                raise RuntimeError(f"s3://{bucket}/{key}: bytes {start}-{start + length - 1} differ from {local}")
    return {"size_checked": size, "ranges_checked": len(starts), "range_bytes": length, "etag": head.get("ETag")}


class VisibilityWatcher(threading.Thread):
    """HEADs `key` every VISIBILITY_POLL seconds until it has `size` bytes; `seconds` since `started`.

    What the S3 side sees (informational): the durability time reported is the `quiltmount umount`
    one, which adds the unmount and the daemon's exit.
    """

    def __init__(self, endpoint: str, bucket: str, key: str, size: int, started: float) -> None:
        super().__init__(name="visibility", daemon=True)
        self.s3 = make_client(endpoint, pool=1)
        self.bucket, self.key, self.size, self.started = bucket, key, size, started
        self.seconds: float | None = None
        self.polls = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.polls += 1
            with contextlib.suppress(ClientError):
                if self.s3.head_object(Bucket=self.bucket, Key=self.key)["ContentLength"] == self.size:
                    self.seconds = time.perf_counter() - self.started
                    return
            self._stop_event.wait(VISIBILITY_POLL)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def upload_counters(sampler: RssSampler | None) -> dict[str, Any]:
    """The write-back figures of the last status record the daemon wrote before it exited (it rewrites
    the record every second, so the counters can be up to a second behind the end)."""
    record = (sampler.last_record if sampler else None) or {}
    requests = record.get("requests", {})
    return {"last_status": {name: record.get(name) for name in
                            ("pending_uploads", "uploaded", "upload_retries", "failed_uploads")},
            "last_status_requests": requests.get("totals"),
            "max_pending_uploads_seen": sampler.max_pending_uploads if sampler else None}


def idle_umount_seconds(bench: Bench) -> float:
    """The wall time of `quiltmount umount` of a fresh mount with nothing to upload: the fixed part of
    the write measurements' figures (the CLI starting, the unmount, the daemon's exit)."""
    with bench.mount("idle") as mount:
        return mount.umount()


def copy_until_durable(bench: Bench, mount: Mount, source: str, key: str, watch: bool = True) -> dict[str, Any]:
    """`cp SOURCE MOUNT/KEY` then `quiltmount umount`, timed from the start of cp to the end of umount."""
    size = os.path.getsize(source)
    target = bench.in_mount(mount, key)
    os.makedirs(os.path.dirname(target), exist_ok=True)  # untimed (a directory marker, if needed)
    daemon_cpu_before = cpu_seconds(mount.pid)
    watcher = VisibilityWatcher(bench.endpoint, bench.bucket, key, size, 0.0) if watch else None
    with mount.deadline(f"cp of {source} + umount"), cpu_meter(bench.cpu_pids()) as cpu:
        started = time.perf_counter()
        if watcher:
            watcher.started = started
            watcher.start()
        try:
            subprocess.run(["cp", source, target], check=True, timeout=bench.args.phase_timeout,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            cp_s = time.perf_counter() - started
            umount_s = mount.umount()
            seconds = time.perf_counter() - started
        finally:
            if watcher:
                watcher.stop()
    sampler = mount.sampler
    daemon_cpu = (sampler.last_cpu - daemon_cpu_before
                  if sampler and sampler.last_cpu is not None and daemon_cpu_before is not None else None)
    return {"seconds": seconds, "cp_seconds": cp_s, "umount_seconds": umount_s,
            "visible_in_s3_seconds": watcher.seconds if watcher else None,
            "visibility_heads": watcher.polls if watcher else None,
            "cpu_seconds": {**cpu, "daemon (sampled, up to 0.1 s before it exited)": daemon_cpu},
            **upload_counters(sampler)}


def measure_cp_write(bench: Bench) -> list[Result]:
    """9. `cp` of a random local file into a fresh mount until durable vs boto3 upload_file of it (each round;
    each object is deleted before the next upload, so the server holds the same data for both)."""
    size = bench.args.write_mib * MiB
    source = write_random_file(os.path.join(bench.workdir, "write-source.bin"), size)
    mount_key, direct_key = f"{WRITE_PREFIX}cp-{size // MiB}.bin", f"{WRITE_PREFIX}upload_file-{size // MiB}.bin"
    rounds, sha256_rounds, round_details = [], [], []
    try:
        delete_prefix(bench.s3, bench.bucket, WRITE_PREFIX)  # a persistent --endpoint-url server: start clean
        idle_s = idle_umount_seconds(bench)
        for _ in range(bench.args.rounds):
            with cpu_meter(bench.cpu_pids()) as direct_cpu:
                direct_s = timed_upload_file(bench, source, direct_key)
            direct_check = verify_object(bench.s3, bench.bucket, direct_key, source)
            delete_prefix(bench.s3, bench.bucket, WRITE_PREFIX)
            sha256_s = timed_upload_file(bench, source, direct_key, sha256=True)
            delete_prefix(bench.s3, bench.bucket, WRITE_PREFIX)
            with bench.mount("write-cp") as mount:
                figures = copy_until_durable(bench, mount, source, mount_key)
            check = verify_object(bench.s3, bench.bucket, mount_key, source)
            delete_prefix(bench.s3, bench.bucket, WRITE_PREFIX)
            seconds = figures["seconds"]
            rounds.append((size / MB / seconds, size / MB / direct_s))
            sha256_rounds.append((size / MB / seconds, size / MB / sha256_s))
            round_details.append({"baseline_sha256_seconds": sha256_s,
                **figures, "seconds_less_idle_umount": seconds - idle_s,
                "MBps_less_idle_umount": size / MB / (seconds - idle_s) if seconds > idle_s else None,
                "MBps_visible_in_s3": (size / MB / figures["visible_in_s3_seconds"]
                                       if figures["visible_in_s3_seconds"] else None),
                "verified": check, "baseline_seconds": direct_s, "baseline_cpu_seconds": direct_cpu,
                "baseline_verified": direct_check})
    finally:
        os.unlink(source)
        delete_prefix(bench.s3, bench.bucket, WRITE_PREFIX)
    details = {"bytes": size, "umount_idle_seconds": idle_s, "baseline": "boto3 upload_file, default TransferConfig",
               "rounds": round_details}
    name = f"cp of a {size // MiB} MiB file until durable (cp + umount)"
    return [Result.of_rounds(name, "MB/s", rounds, Target("ratio", ">=", 0.8), details),
            Result.of_rounds(f"{name} vs upload_file with SHA-256", "MB/s", sha256_rounds, None,
                             {"baseline": "boto3 upload_file, ChecksumAlgorithm SHA256 (the mount's checksum)"})]


def measure_small_writes(bench: Bench) -> list[Result]:
    """10. 1 KiB files written one after another (open/write/close) until durable vs put_object calls."""
    count = bench.args.write_files
    rng = random.Random(VERIFY_SEED)
    bodies = [rng.randbytes(SMALL_FILE_SIZE) for _ in range(count)]
    names = [f"f{index:05d}.bin" for index in range(count)]
    direct_prefix, mount_prefix = f"{WRITE_PREFIX}put_object/", f"{WRITE_PREFIX}small/"
    try:
        delete_prefix(bench.s3, bench.bucket, WRITE_PREFIX)
        with cpu_meter(bench.cpu_pids()) as direct_cpu:
            started = time.perf_counter()
            for name, body in zip(names, bodies):
                bench.s3.put_object(Bucket=bench.bucket, Key=direct_prefix + name, Body=body)
            direct_s = time.perf_counter() - started
        idle_s = idle_umount_seconds(bench)
        with bench.mount("write-small") as mount:
            directory = bench.in_mount(mount, mount_prefix)
            os.makedirs(directory, exist_ok=True)  # untimed: one directory-marker PUT
            paths = [os.path.join(directory, name) for name in names]
            daemon_cpu_before = cpu_seconds(mount.pid)
            with mount.deadline(f"writing {count} small files + umount"), cpu_meter(bench.cpu_pids()) as cpu:
                started = time.perf_counter()
                for path, body in zip(paths, bodies):
                    with open(path, "wb") as file:
                        file.write(body)
                close_s = time.perf_counter() - started
                umount_s = mount.umount()
                seconds = time.perf_counter() - started
            sampler = mount.sampler
            daemon_cpu = (sampler.last_cpu - daemon_cpu_before
                          if sampler and sampler.last_cpu is not None and daemon_cpu_before is not None else None)
            counters = upload_counters(sampler)
        # Every file is in S3 with its bytes (sizes from one listing, bytes of a sample by GET).
        listed = {item["Key"][len(mount_prefix):]: item["Size"]
                  for page in bench.s3.get_paginator("list_objects_v2").paginate(Bucket=bench.bucket,
                                                                                 Prefix=mount_prefix)
                  for item in page.get("Contents", []) if item["Key"] != mount_prefix}
        missing = [name for name in names if listed.get(name) != SMALL_FILE_SIZE]
        if missing or len(listed) != count:
            raise RuntimeError(f"after umount, {len(missing)} of {count} written files are missing or have the "
                               f"wrong size in S3 (e.g. {missing[:3]}); {len(listed)} objects listed")
        for index in sorted(rng.sample(range(count), min(SMALL_VERIFY, count))):
            body = bench.s3.get_object(Bucket=bench.bucket, Key=mount_prefix + names[index])["Body"].read()
            if body != bodies[index]:
                raise RuntimeError(f"s3://{bench.bucket}/{mount_prefix}{names[index]} has the wrong bytes")
    finally:
        delete_prefix(bench.s3, bench.bucket, WRITE_PREFIX)
    details = {"seconds": seconds, "close_seconds": close_s, "umount_seconds": umount_s,
               "umount_idle_seconds": idle_s, "files_per_s_less_idle_umount": count / (seconds - idle_s)
               if seconds > idle_s else None,
               "cpu_seconds": {**cpu, "daemon (sampled, up to 0.1 s before it exited)": daemon_cpu},
               **counters, "verified": {"listed": len(listed), "bytes_compared": min(SMALL_VERIFY, count)},
               "baseline": "put_object of each file, one thread", "baseline_seconds": direct_s,
               "baseline_cpu_seconds": direct_cpu}
    return [Result(f"write {count} x 1 KiB files until durable (1 thread, + umount)", "files/s", count / seconds,
                   count / direct_s, None, details)]


def measure_write_rss(bench: Bench) -> list[Result]:
    """11. peak daemon RSS while a big random file is copied in and uploaded (--write-memory-cache-size)."""
    size = bench.args.rss_write_mib * MiB
    budget_text = bench.args.write_memory_cache_size
    budget = parse_size(budget_text)
    source = os.path.join(bench.workdir, "rss-source.bin")
    key = f"{WRITE_PREFIX}cp-{size // MiB}.bin"
    try:
        delete_prefix(bench.s3, bench.bucket, WRITE_PREFIX)
        started = time.perf_counter()
        write_random_file(source, size)
        make_s = time.perf_counter() - started
        with bench.mount("write-rss", memory_cache_size=budget_text) as mount:
            figures = copy_until_durable(bench, mount, source, key, watch=False)
            sampler = mount.sampler
        assert sampler is not None
        check = verify_object(bench.s3, bench.bucket, key, source)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(source)
        delete_prefix(bench.s3, bench.bucket, WRITE_PREFIX)
    details = {**figures, "bytes": size, "MBps": size / MB / figures["seconds"], "source_random_bytes": True,
               "source_write_seconds": make_s, "memory_cache_size": budget_text, "budget_bytes": budget,
               "peak_rss_bytes": sampler.peak_rss, "peak_vmhwm_bytes": sampler.peak_hwm,
               "rss_samples": sampler.samples, "verified": check}
    return [Result(f"daemon peak RSS, cp of {size // MiB} MiB (--memory-cache-size {budget_text})", "MiB",
                   sampler.peak_rss / MiB, None, Target("value", "<=", (budget + RSS_SLACK) / MiB), details)]


# --------------------------------------------------------------------------------------------------
# 12. The revision index at scale
# --------------------------------------------------------------------------------------------------


def scale_index_files(bench: Bench, top_hash: str) -> list[str]:
    """The index files of revision `top_hash` in the daemons' index directory (finished or being built)."""
    try:
        names = os.listdir(bench.index_dir)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(bench.index_dir, name) for name in names if top_hash in name)


def remove_scale_index(bench: Bench, top_hash: str) -> int:
    """Delete the index of revision `top_hash`, so that its next use builds it (cold): the files removed."""
    paths = scale_index_files(bench, top_hash)
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return len(paths)


def index_inode(bench: Bench, top_hash: str) -> tuple[int, int] | None:
    """(inode, size) of the finished index of `top_hash` (a rebuild renames a new file into place), or None."""
    for path in scale_index_files(bench, top_hash):
        if path.endswith(".sqlite") and not os.path.basename(path).startswith("."):
            st = os.stat(path)
            return st.st_ino, st.st_size
    return None


def daemon_index_log(mount: Mount) -> list[str]:
    """The lines of the daemon's log about revision indexes ("indexing revision ...", "indexed revision ...")."""
    log_file = (mount.sampler.last_record if mount.sampler and mount.sampler.last_record else {}).get("log_file")
    if not log_file:
        with contextlib.suppress(Exception):
            log_file = mount.record().get("log_file")
    if not log_file:
        return []
    try:
        with open(log_file, encoding="utf-8", errors="replace") as log:
            return [line.rstrip("\n") for line in log if "index" in line]
    except OSError:
        return []


def revision_root(mount: Mount, package: str) -> str:
    return os.path.join(mount.path, ".packages", package, "latest")


@contextlib.contextmanager
def rss_window(mount: Mount) -> Iterator[dict[str, Any]]:
    """Sample the daemon's RSS during the block (a sampler of its own): its peak, and its RSS right after."""
    figures: dict[str, Any] = {}
    window = RssSampler(mount.pid)
    window.start()
    try:
        yield figures
    finally:
        window.stop()
    after = read_rss(mount.pid)
    figures.update({"peak_rss_bytes": window.peak_rss, "peak_vmhwm_bytes": window.peak_hwm,
                    "rss_after_bytes": after[0] if after else None, "rss_samples": window.samples})


def scale_ls(bench: Bench, mount: Mount, package: str) -> dict[str, Any]:
    """`ls .packages/PACKAGE/latest/` (a subprocess) as a phase, the daemon's RSS sampled meanwhile."""
    root = revision_root(mount, package)
    with mount.phase(f"ls of {package}/latest/") as stats, rss_window(mount) as rss:
        listing, seconds = run_captured(["ls", root + "/"], bench.args.phase_timeout)
    directories = scale_directories(bench.args.scale_entries)
    if len(listing.split()) != directories:
        raise RuntimeError(f"ls {root}/ shows {len(listing.split())} names, expected {directories}")
    return {"seconds": seconds, **rss, **stats}


def scale_find(bench: Bench, mount: Mount, package: str) -> dict[str, Any]:
    """`find -L .packages/PACKAGE/latest/ | wc -l` as a phase; the count must be every entry and directory."""
    root = revision_root(mount, package)
    with mount.phase(f"find -L of {package}/latest/") as stats, rss_window(mount) as rss:
        output, seconds = run_captured(["bash", "-c", 'set -o pipefail; find -L "$1" | wc -l', "find-count",
                                        root + "/"], bench.args.phase_timeout)
    count = bench.args.scale_entries
    expected = count + scale_directories(count) + 1
    found = int(output.strip())
    if found != expected:
        raise RuntimeError(f"find -L {root}/ | wc -l printed {found}, expected {expected} "
                           f"({count} entries + {scale_directories(count)} directories + the root)")
    return {"seconds": seconds, "lines": found, **rss, **stats}


def deep_entries(count: int) -> list[int]:
    """SCALE_DEEP_STATS entry numbers in different directories (when there are that many), the first
    dir0777/file0123.bin when there are 778 directories or more."""
    directories = scale_directories(count)
    indexes = []
    for k in range(SCALE_DEEP_STATS):
        directory = (777 + k * max(directories // SCALE_DEEP_STATS, 1)) % directories
        in_directory = min(SCALE_DIR_ENTRIES, count - directory * SCALE_DIR_ENTRIES)
        indexes.append(directory * SCALE_DIR_ENTRIES + (123 + 211 * k) % in_directory)
    return indexes


def mib(value: float | None) -> float | None:
    return value / MiB if value is not None else None


def measure_scale(bench: Bench) -> list[Result]:
    """12. a revision of --scale-entries entries: cold and built index, deep stats, find -L, RSS, sizes."""
    info = bench.scale_packages()
    count, directories = info["entries"], info["directories"]
    revisions = info["revisions"]
    first, top_hash = revisions[0]["package"], revisions[0]["top_hash"]
    reference = SCALE_REFERENCE.get(count, {})
    label = f"scale {count:,}:"
    timeout = bench.args.phase_timeout
    cold_rounds: list[dict[str, Any]] = []
    warm_rounds: list[dict[str, Any]] = []
    stat_rounds: list[dict[str, Any]] = []
    find_rounds: list[dict[str, Any]] = []

    def say(text: str) -> None:
        print(f"  {text}", flush=True)

    for number in range(1, bench.args.rounds + 1):
        # (a) cold: the index is not built; the first ls builds it.
        removed = remove_scale_index(bench, top_hash)
        with bench.mount("scale-cold") as mount:
            figures = scale_ls(bench, mount, first)
            figures["index_files_removed_before"] = removed
            figures["daemon_log"] = daemon_index_log(mount)
        built = index_inode(bench, top_hash)
        if built is None:
            raise RuntimeError(f"no index of {top_hash} in {bench.index_dir} after the first ls: did the daemon "
                               f"use XDG_CACHE_HOME={bench.cache_home}?")
        if not figures["requests"].get("get"):
            raise RuntimeError(f"the cold ls made no GET (the manifest was not read?): {figures['requests']}")
        cold_rounds.append(figures)
        say(f"round {number}: cold ls {figures['seconds']:.2f} s, peak RSS {figures['peak_rss_bytes'] / MiB:.0f} MiB")

        # (b) the index built, a fresh mount: the first ls; then, on another, stats of deep paths.
        with bench.mount("scale-warm") as mount:
            figures = scale_ls(bench, mount, first)
            figures["daemon_log"] = daemon_index_log(mount)
        if index_inode(bench, top_hash) != built:
            raise RuntimeError(f"the index of {top_hash} was rebuilt by the ls of a fresh mount")
        warm_rounds.append(figures)
        with bench.mount("scale-stat") as mount:
            run_captured(["ls", os.path.join(mount.path, ".packages", first) + "/"], timeout)
            entries = deep_entries(count)
            paths = [os.path.join(revision_root(mount, first), scale_logical_key(index)) for index in entries]
            seconds = []
            with mount.phase("stat of deep paths") as stats:
                for path in paths:
                    started = time.perf_counter()
                    size = os.stat(path).st_size
                    seconds.append(time.perf_counter() - started)
                    if size != SMALL_FILE_SIZE:
                        raise RuntimeError(f"{path} has size {size}, expected {SMALL_FILE_SIZE}")
            # One entry read through the mount (hash-verified by the daemon) against its object's bytes.
            with open(paths[0], "rb") as file:
                data = file.read()
            if data != bench.scale_bodies[entries[0] % len(bench.scale_bodies)]:
                raise RuntimeError(f"{paths[0]}: read {len(data)} bytes that differ from its object's")
        stat_rounds.append({"paths": [path[len(mount.path):] for path in paths], "seconds": seconds,
                            "bytes_read_back": len(data), **stats})
        say(f"round {number}: first ls with the index built {warm_rounds[-1]['seconds']:.3f} s, deep stats "
            + ", ".join(f"{value * 1000:.1f}" for value in seconds) + " ms")

        # (c) find -L of every entry on a fresh mount whose index is built (after one ls: the pointer resolved).
        with bench.mount("scale-find") as mount:
            run_captured(["ls", revision_root(mount, first) + "/"], timeout)
            figures = scale_find(bench, mount, first)
        find_rounds.append(figures)
        say(f"round {number}: find -L {figures['seconds']:.2f} s, {figures['lines']} lines, "
            f"requests {figures['requests']}, peak RSS {figures['peak_rss_bytes'] / MiB:.0f} MiB, "
            f"after {(figures['rss_after_bytes'] or 0) / MiB:.0f} MiB")

    # (d) the three revisions browsed in one mount: the first's index built, the others' built here (cold).
    for revision in revisions[1:]:
        remove_scale_index(bench, revision["top_hash"])
    browse: dict[str, Any] = {"revisions": []}
    with bench.mount("scale-browse") as mount:
        for revision in revisions:
            package = revision["package"]
            cold = index_inode(bench, revision["top_hash"]) is None
            ls_figures = scale_ls(bench, mount, package)
            find_figures = scale_find(bench, mount, package)
            browse["revisions"].append({"package": package, "index_built_here": cold, "ls": ls_figures,
                                        "find": find_figures})
            say(f"one mount: {package} ({'cold' if cold else 'index built'}): ls {ls_figures['seconds']:.2f} s "
                f"(peak RSS {ls_figures['peak_rss_bytes'] / MiB:.0f} MiB, after "
                f"{(ls_figures['rss_after_bytes'] or 0) / MiB:.0f}), find -L {find_figures['seconds']:.2f} s "
                f"(peak RSS {find_figures['peak_rss_bytes'] / MiB:.0f} MiB, after "
                f"{(find_figures['rss_after_bytes'] or 0) / MiB:.0f}), requests {find_figures['requests']}")
        end = read_rss(mount.pid)
        assert mount.sampler is not None
        mount.sampler.sample()
        browse["rss_end_bytes"], browse["vmhwm_end_bytes"] = end if end else (None, None)
        browse["peak_rss_bytes"], browse["peak_vmhwm_bytes"] = mount.sampler.peak_rss, mount.sampler.peak_hwm
        browse["rss_samples"] = mount.sampler.samples
        record = mount.record()
        browse["status_indexes"] = record.get("indexes", [])
        browse["status_rss_bytes"] = record.get("rss_bytes")
        browse["log_file"] = record.get("log_file")
        browse["daemon_log"] = daemon_index_log(mount)
    say(f"one mount: peak RSS {browse['peak_rss_bytes'] / MiB:.0f} MiB, at the end "
        f"{(browse['rss_end_bytes'] or 0) / MiB:.0f} MiB")

    # (e) sizes: every index file on disk and what the daemon's status said.
    index_bytes = {}
    for revision in revisions:
        files = scale_index_files(bench, revision["top_hash"])
        index_bytes[revision["top_hash"]] = {os.path.basename(path): os.path.getsize(path) for path in files}
    status_bytes = {entry["top_hash"]: entry["disk_bytes"] for entry in browse["status_indexes"]}
    first_index = status_bytes.get(top_hash) or sum(index_bytes[top_hash].values())
    manifest_bytes = revisions[0]["manifest_bytes"]

    def median(rounds: list[dict[str, Any]], key: str = "seconds") -> float:
        return statistics.median(entry[key] for entry in rounds)

    stats_all = [value for entry in stat_rounds for value in entry["seconds"]]
    find_requests = max(sum(entry["requests"].get(op, 0) for op in ("list", "head", "get", "put"))
                        for entry in find_rounds)
    common = {"entries": count, "directories": directories, "revisions": revisions,
              "baseline": "measured on main before the revision index (issue 13), not in this run"
              if reference else None, "reference": reference or None,
              "xdg_cache_home": bench.cache_home, "index_dir": bench.index_dir}
    cold_peak = max(entry["peak_rss_bytes"] for entry in cold_rounds)
    browse_cold = [entry["ls"] for entry in browse["revisions"] if entry["index_built_here"]]
    return [
        Result(f"{label} first ls of a revision, index not built (builds it)", "s", median(cold_rounds),
               reference.get("first_ls_seconds"), Target("value", "<=", 15),
               {**common, "rounds": cold_rounds,
                "cold_ls_seconds_in_shared_mount": [entry["seconds"] for entry in browse_cold]}),
        Result(f"{label} daemon peak RSS during that ls (largest of rounds)", "MiB", cold_peak / MiB,
               mib(reference.get("peak_rss_bytes")), Target("value", "<=", SCALE_RSS_TARGET / MiB),
               {"rounds_peak_rss_bytes": [entry["peak_rss_bytes"] for entry in cold_rounds],
                "rounds_peak_vmhwm_bytes": [entry["peak_vmhwm_bytes"] for entry in cold_rounds],
                "shared_mount_cold_peak_rss_bytes": [entry["peak_rss_bytes"] for entry in browse_cold]}),
        Result(f"{label} first ls of a revision, index built, fresh mount", "s", median(warm_rounds),
               reference.get("first_ls_seconds"), Target("value", "<=", 1), {**common, "rounds": warm_rounds}),
        Result(f"{label} stat of a deep path, fresh mount (median of {len(stats_all)})", "ms",
               statistics.median(stats_all) * 1000, None, Target("value", "<=", 50), {"rounds": stat_rounds}),
        Result(f"{label} stat of a deep path, fresh mount (slowest of {len(stats_all)})", "ms",
               max(stats_all) * 1000, None, Target("value", "<=", 50),
               {"first_stat_of_each_round_ms": [entry["seconds"][0] * 1000 for entry in stat_rounds]}),
        Result(f"{label} find -L | wc -l of a revision, index built", "s", median(find_rounds),
               reference.get("find_seconds"), Target("value", "<=", 16), {**common, "rounds": find_rounds}),
        Result(f"{label} S3 requests during find -L (most in a round)", "requests", float(find_requests), None,
               Target("value", "==", 0), {"rounds": [entry["requests"] for entry in find_rounds]}),
        Result(f"{label} daemon RSS after ls + find -L of one revision (largest of rounds)", "MiB",
               max(mib(entry["rss_after_bytes"]) or 0 for entry in find_rounds),
               mib(reference.get("rss_after_bytes")), Target("value", "<=", SCALE_RSS_TARGET / MiB),
               {"rounds_rss_after_bytes": [entry["rss_after_bytes"] for entry in find_rounds],
                "rounds_peak_rss_during_find_bytes": [entry["peak_rss_bytes"] for entry in find_rounds]}),
        Result(f"{label} daemon peak RSS, 3 revisions in one mount (2 indexed there)", "MiB",
               browse["peak_rss_bytes"] / MiB, mib(reference.get("peak_rss_bytes")),
               Target("value", "<=", SCALE_RSS_TARGET / MiB),
               {**browse, "reference_note": "the reference is the peak for one revision"}),
        Result(f"{label} daemon RSS at the end of that mount", "MiB",
               mib(browse["rss_end_bytes"]), mib(reference.get("rss_after_bytes")),
               Target("value", "<=", SCALE_RSS_TARGET / MiB), {"vmhwm_end_bytes": browse["vmhwm_end_bytes"]}),
        Result(f"{label} index size on disk (per revision)", "MiB", first_index / MiB, None, None,
               {"files": index_bytes, "status_disk_bytes": status_bytes,
                "bytes_per_entry": first_index / count}),
        Result(f"{label} manifest size (per revision)", "MiB", manifest_bytes / MiB, None, None,
               {"manifest_bytes": [revision["manifest_bytes"] for revision in revisions],
                "bytes_per_entry": manifest_bytes / count, "write_seconds": info["write_seconds"],
                "upload_seconds": info["upload_seconds"], "writer_check": info["writer_check"]}),
    ]


# --------------------------------------------------------------------------------------------------
# 13. Package commits (the engine, without the mount)
# --------------------------------------------------------------------------------------------------


class RequestLog:
    """Every S3 call the clients of one boto3 session make (botocore events): operation, key, start, seconds.

    A call is logged when it starts (a failed one counts too); its `seconds` once its response is parsed.
    """

    def __init__(self, session: boto3.Session) -> None:
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        session.events.register("before-parameter-build.s3", self._started)
        session.events.register("after-call.s3", self._ended)

    def _started(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        call = {"op": model.name, "key": params.get("Key"), "start": time.perf_counter(), "seconds": None}
        context["bench_call"] = call
        with self._lock:
            self.calls.append(call)

    @staticmethod
    def _ended(context: dict[str, Any], **_: Any) -> None:
        call = context.get("bench_call")
        if call is not None:
            call["seconds"] = time.perf_counter() - call["start"]

    def mark(self) -> int:
        with self._lock:
            return len(self.calls)

    def since(self, mark: int, started: float) -> list[dict[str, Any]]:
        """The calls logged after `mark`: operation, key, start and duration in ms (start from `started`)."""
        with self._lock:
            calls = self.calls[mark:]
        return [{"op": call["op"], "key": call["key"], "at_ms": round((call["start"] - started) * 1000, 1),
                 "ms": round(call["seconds"] * 1000, 1) if call["seconds"] is not None else None}
                for call in calls]


def operation_counts(calls: list[dict[str, Any]]) -> dict[str, int]:
    return dict(sorted(Counter(call["op"] for call in calls).items()))


def parent_file_calls(calls: list[dict[str, Any]], changed_key: str) -> list[dict[str, Any]]:
    """The calls on the package's files but the changed file's upload and reuse check: any GET, any other key."""
    return [call for call in calls if (call["key"] or "").startswith(f"{COMMIT_PACKAGE}/")
            and (call["op"] == "GetObject" or call["key"] != changed_key)]


def prepare_commit_package(bench: Bench) -> dict[str, Any]:
    """The parent revision of 13.: --commit-entries files of 1 KiB of random bytes, put once where quilt3 push
    puts a package's files (COMMIT_PACKAGE/<logical key>, the logical keys of the scale revisions), and a
    manifest listing them written with quiltmount's writer (`put_package`: manifest, timestamp, latest)."""
    keys = [scale_logical_key(index) for index in range(bench.args.commit_entries)]
    bodies = [os.urandom(SMALL_FILE_SIZE) for _ in keys]
    client = make_client(bench.endpoint, pool=UPLOAD_THREADS)
    started = time.perf_counter()
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(lambda key, body: client.put_object(Bucket=bench.bucket, Key=f"{COMMIT_PACKAGE}/{key}",
                                                          Body=body), keys, bodies))
    upload_s = time.perf_counter() - started
    entries = [mf.Entry(key, s3_physical_key(bench.bucket, f"{COMMIT_PACKAGE}/{key}", None), len(body),
                        mf.SHA2_256_CHUNKED, mf.hash_bytes(mf.SHA2_256_CHUNKED, body))
               for key, body in zip(keys, bodies)]
    top_hash, manifest_bytes = put_package(bench.s3, bench.bucket, COMMIT_PACKAGE, entries)
    return {"entries": len(entries), "top_hash": top_hash, "manifest_bytes": manifest_bytes,
            "files_put_seconds": upload_s}


def delete_package(bench: Bench, package: str, top_hashes: Iterable[str]) -> int:
    """Delete what a measurement wrote of `package`: its files, its pointers and the manifests of
    `top_hashes`."""
    deleted = delete_prefix(bench.s3, bench.bucket, f"{package}/")
    deleted += delete_prefix(bench.s3, bench.bucket, f".quilt/named_packages/{package}/")
    for top_hash in set(top_hashes):
        bench.s3.delete_object(Bucket=bench.bucket, Key=f".quilt/packages/{top_hash}")
        deleted += 1
    return deleted


@contextlib.contextmanager
def quilt3_on(bench: Bench, session: boto3.Session) -> Iterator[ModuleType]:
    """quilt3 talking to the bench's server through `session`, its config and caches in the run's directory.

    As tests/test_registry.py's `_patch_quilt3` runs it: AWS_ENDPOINT_URL, and one boto3 session for all its
    operations (quilt3 makes a new one for each, ~0.2 s of loading botocore's models each time): a faster
    baseline than quilt3 out of the box, whose calls `RequestLog` sees.
    """
    home = os.path.join(bench.workdir, "quilt3")
    settings = {"XDG_DATA_HOME": os.path.join(home, "data"), "XDG_CACHE_HOME": os.path.join(home, "cache"),
                "AWS_ENDPOINT_URL": bench.endpoint, "QUILT_DISABLE_USAGE_METRICS": "true",
                "QUILT_MINIMIZE_STDOUT": "true"}
    with mock.patch.dict(os.environ, settings):
        import quilt3  # its directories are fixed when it is first imported
        from quilt3 import data_transfer

        with mock.patch.object(data_transfer.S3ClientProvider, "get_boto_session", lambda self: session):
            yield quilt3


@contextlib.contextmanager
def draft_on(bench: Bench, parent: str) -> Iterator[Draft]:
    """A new draft of COMMIT_PACKAGE on revision `parent`, in the run's directory; discarded afterwards."""
    draft = Draft.create(tempfile.mkdtemp(prefix="draft-", dir=bench.workdir), package=COMMIT_PACKAGE,
                         registry=f"s3://{bench.bucket}", parent=parent)
    try:
        yield draft
    finally:
        draft.discard()


def stage_file(draft: Draft, logical_key: str, fill: Callable[[str], object]) -> str:
    """What `cp` into a draft will do: stage `logical_key`, `fill` its file, close it.  The file's path."""
    staged = draft.write(logical_key)
    path = draft.staging.data_path(staged)
    fill(path)
    draft.staging.set_state(staged, CLOSED)
    return path


def timed_commit(bench: Bench, store: CountingStore, registry: Registry, log: RequestLog, draft: Draft,
                 message: str) -> dict[str, Any]:
    """`commit_draft` of `draft`, timed: its requests by kind (the store's count) and every S3 call."""
    before, mark = store.snapshot()["totals"], log.mark()
    with cpu_meter(bench.cpu_pids()) as cpu:
        started = time.perf_counter()
        done = commit_draft(draft, registry, message=message)
        seconds = time.perf_counter() - started
    after = store.snapshot()["totals"]
    calls = log.since(mark, started)
    return {"seconds": seconds, "top_hash": done.top_hash, "entries": done.entries, "reused": done.reused,
            "cpu_seconds": cpu,
            "requests": {op: after.get(op, 0) - before.get(op, 0) for op in sorted(after.keys() | before.keys())},
            "operations": operation_counts(calls), "calls": calls}


def timed_quilt3_push(bench: Bench, quilt3: ModuleType, log: RequestLog, logical_key: str,
                      message: str) -> dict[str, Any]:
    """quilt3's way to a change of one file: `Package.browse` of latest, `set` of `logical_key` to 1 KiB of new
    random bytes, `push`, timed; then `latest` must name the revision pushed."""
    registry = f"s3://{bench.bucket}"
    path = os.path.join(bench.workdir, "commit-change.bin")
    Path(path).write_bytes(os.urandom(SMALL_FILE_SIZE))
    mark = log.mark()
    with cpu_meter(bench.cpu_pids()) as cpu, contextlib.redirect_stdout(io.StringIO()):
        started = time.perf_counter()
        package = quilt3.Package.browse(COMMIT_PACKAGE, registry=registry)
        browse_s = time.perf_counter() - started
        package.set(logical_key, path)
        pushed = package.push(COMMIT_PACKAGE, registry=registry, message=message)
        seconds = time.perf_counter() - started
    calls = log.since(mark, started)
    check_latest(bench, pushed.top_hash, "quilt3's push")
    return {"seconds": seconds, "browse_seconds": browse_s, "top_hash": pushed.top_hash, "cpu_seconds": cpu,
            "operations": operation_counts(calls), "calls": calls}


def check_latest(bench: Bench, top_hash: str, what: str) -> None:
    """Fail unless the registry's `latest` of COMMIT_PACKAGE, read with boto3, names `top_hash`."""
    latest = bench.s3.get_object(Bucket=bench.bucket, Key=f".quilt/named_packages/{COMMIT_PACKAGE}/latest")
    if latest["Body"].read().decode("ascii") != top_hash:
        raise RuntimeError(f"after {what}, latest of {COMMIT_PACKAGE} does not name {top_hash}")


@contextlib.contextmanager
def commit_package(bench: Bench) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """COMMIT_PACKAGE's parent revision for the block (13., 14.): its figures (prepare_commit_package) and the
    list of the revisions to delete, to which the block adds those it makes.  Afterwards the package, its files,
    those manifests and WRITE_PREFIX are deleted."""
    top_hashes: list[str] = []
    try:
        delete_package(bench, COMMIT_PACKAGE, [])  # a persistent --endpoint-url server: start clean
        delete_prefix(bench.s3, bench.bucket, WRITE_PREFIX)
        print(f"  writing {COMMIT_PACKAGE} ({bench.args.commit_entries} files of 1 KiB, put once, and its "
              "manifest) ...", flush=True)
        info = prepare_commit_package(bench)
        top_hashes.append(info["top_hash"])
        yield info, top_hashes
    finally:
        delete_prefix(bench.s3, bench.bucket, WRITE_PREFIX)
        delete_package(bench, COMMIT_PACKAGE, top_hashes)


def upload_file_baselines(bench: Bench, path: str) -> dict[str, Any]:
    """The baselines of new data committed (13., 14.): `upload_file` of `path` to WRITE_PREFIX, then again with
    SHA-256 checksums (the commit's), each object deleted right after: their seconds, the first's CPU seconds."""
    key = f"{WRITE_PREFIX}commit-upload_file-{os.path.getsize(path) // MiB}.bin"
    with cpu_meter(bench.cpu_pids()) as cpu:
        seconds = timed_upload_file(bench, path, key)
    delete_prefix(bench.s3, bench.bucket, WRITE_PREFIX)
    sha256_s = timed_upload_file(bench, path, key, sha256=True)
    delete_prefix(bench.s3, bench.bucket, WRITE_PREFIX)
    return {"baseline_seconds": seconds, "baseline_cpu_seconds": cpu, "baseline_sha256_seconds": sha256_s}


def check_big_commit(bench: Bench, figures: dict[str, Any], size: int) -> None:
    """A commit of new data left COMMIT_BIG_KEY of `size` bytes in the bucket and one entry more than the parent."""
    key = f"{COMMIT_PACKAGE}/{COMMIT_BIG_KEY}"
    stored = bench.s3.head_object(Bucket=bench.bucket, Key=key)["ContentLength"]
    if stored != size or figures["entries"] != bench.args.commit_entries + 1:
        raise RuntimeError(f"the commit of {size // MiB} MiB left {stored} bytes at {key} and {figures['entries']} "
                           f"entries, expected {size} and {bench.args.commit_entries + 1}")


def quilt3_reads(bench: Bench, quilt3: ModuleType, top_hash: str, size: int) -> dict[str, Any]:
    """quilt3 browses revision `top_hash` (the last commit of new data) and agrees on its top hash, its
    entries and the size of COMMIT_BIG_KEY."""
    package = quilt3.Package.browse(COMMIT_PACKAGE, registry=f"s3://{bench.bucket}", top_hash=top_hash)
    check = {"top_hash": package.top_hash, "entries": len(list(package.walk())),
             "big_size": package[COMMIT_BIG_KEY].size, "quilt3": quilt3.__version__}
    if (check["top_hash"], check["entries"], check["big_size"]) != (top_hash, bench.args.commit_entries + 1, size):
        raise RuntimeError(f"quilt3 reads revision {top_hash} differently: {check}")
    return check


def new_data_results(name: str, size: int, rounds: list[dict[str, Any]], seconds: str) -> list[Result]:
    """The rows of new data committed: MB/s of each round's `seconds` vs upload_file's (target ratio >= 0.8), and
    vs upload_file with SHA-256 (the rounds hold upload_file_baselines' figures)."""
    def speeds(baseline: str) -> list[tuple[float, float]]:
        return [(size / MB / entry[seconds], size / MB / entry[baseline]) for entry in rounds]

    return [Result.of_rounds(f"{name} (vs upload_file)", "MB/s", speeds("baseline_seconds"),
                             Target("ratio", ">=", 0.8),
                             {"bytes": size, "baseline": "boto3 upload_file, default TransferConfig",
                              "rounds": rounds}),
            Result.of_rounds(f"{name} vs upload_file with SHA-256", "MB/s", speeds("baseline_sha256_seconds"), None,
                             {"baseline": "boto3 upload_file, ChecksumAlgorithm SHA256 (the commit's checksum)"})]


def measure_commit(bench: Bench) -> list[Result]:
    """13. package commits at the engine level (without the mount): one changed 1 KiB file in a draft of a
    --commit-entries revision vs quilt3 browse + set + push of the same change; --write-mib MiB of new data
    vs upload_file of the same bytes (each round, baseline first)."""
    count, size = bench.args.commit_entries, bench.args.write_mib * MiB
    changed = scale_logical_key(count // 2)
    changed_key = f"{COMMIT_PACKAGE}/{changed}"
    label = f"commit, engine (without the mount), {count:,}-entry revision:"
    engine_session, quilt3_session = boto3.Session(), boto3.Session()
    engine_log, quilt3_log = RequestLog(engine_session), RequestLog(quilt3_session)
    store = CountingStore(S3Store(bench.bucket, endpoint_url=bench.endpoint, session=engine_session))
    registry = Registry(store, f"s3://{bench.bucket}")
    small_rounds = []
    small_details: list[dict[str, Any]] = []
    big_details: list[dict[str, Any]] = []

    def say(text: str) -> None:
        print(f"  {text}", flush=True)

    try:
        with commit_package(bench) as (info, top_hashes), quilt3_on(bench, quilt3_session) as quilt3:
            for number in range(1, bench.args.rounds + 1):
                # (a) quilt3's push of one changed file, then the engine's commit of one, on quilt3's revision.
                baseline = timed_quilt3_push(bench, quilt3, quilt3_log, changed, f"bench round {number}: quilt3 push")
                top_hashes.append(baseline["top_hash"])
                data = os.urandom(SMALL_FILE_SIZE)
                with draft_on(bench, baseline["top_hash"]) as draft:
                    stage_file(draft, changed, lambda path: Path(path).write_bytes(data))
                    figures = timed_commit(bench, store, registry, engine_log, draft,
                                           f"bench round {number}: engine commit")
                top_hashes.append(figures["top_hash"])
                check_latest(bench, figures["top_hash"], "the commit")
                if figures["entries"] != count:
                    raise RuntimeError(f"the commit wrote {figures['entries']} entries, expected {count}")
                if bench.s3.get_object(Bucket=bench.bucket, Key=changed_key)["Body"].read() != data:
                    raise RuntimeError(f"s3://{bench.bucket}/{changed_key} does not hold the committed bytes")
                figures["parent_file_calls"] = parent_file_calls(figures["calls"], changed_key)
                baseline["parent_file_calls"] = parent_file_calls(baseline["calls"], changed_key)
                small_rounds.append((figures["seconds"], baseline["seconds"]))
                small_details.append({"engine": figures, "quilt3": baseline})
                say(f"round {number}: 1 KiB change: engine {figures['seconds']:.2f} s, requests "
                    f"{figures['requests']}; quilt3 browse + set + push {baseline['seconds']:.2f} s (browse "
                    f"{baseline['browse_seconds']:.2f} s), calls {baseline['operations']}")

            # (b) new data: upload_file of the staged bytes, then the commit of the draft holding them (the
            # first adds COMMIT_BIG_KEY, the others replace it: (a)'s parents are of --commit-entries entries).
            for number in range(1, bench.args.rounds + 1):
                with draft_on(bench, top_hashes[-1]) as draft:
                    path = stage_file(draft, COMMIT_BIG_KEY, lambda path: write_random_file(path, size))
                    baselines = upload_file_baselines(bench, path)
                    big = timed_commit(bench, store, registry, engine_log, draft,
                                       f"bench round {number}: engine commit of {size // MiB} MiB")
                top_hashes.append(big["top_hash"])
                check_latest(bench, big["top_hash"], f"the commit of {size // MiB} MiB")
                check_big_commit(bench, big, size)
                del big["calls"]  # one per part: the operations say enough
                big_details.append({**big, **baselines})
                say(f"round {number}: {size // MiB} MiB new: engine {big['seconds']:.2f} s "
                    f"({size / MB / big['seconds']:.0f} MB/s), upload_file {baselines['baseline_seconds']:.2f} s, "
                    f"with SHA-256 {baselines['baseline_sha256_seconds']:.2f} s; requests {big['requests']}")

            # quilt3 reads the last revision the engine wrote, and agrees on its top hash.
            quilt3_check = quilt3_reads(bench, quilt3, top_hashes[-1], size)
    finally:
        store.close()

    engine = [entry["engine"] for entry in small_details]
    pushes = [entry["quilt3"] for entry in small_details]
    kinds = {kind: max(entry["requests"].get(kind, 0) for entry in engine) for kind in ("put", "get", "head", "list")}
    common = {"entries": count, "parent": info, "changed_key": changed, "quilt3_check": quilt3_check,
              "engine": "Draft.create on latest, the file staged (draft.write, bytes, CLOSED), commit_draft timed",
              "baseline": f"quilt3 {quilt3_check['quilt3']} Package.browse(latest) + set + push, one boto3 session"}
    return [
        Result.of_rounds(f"{label} 1 changed 1 KiB file until latest (baseline: quilt3 browse + set + push)",
                         "s", small_rounds, Target("value", "<=", COMMIT_SMALL_SECONDS),
                         {**common, "rounds": small_details}),
        Result(f"{label} PUTs of that commit: the file + {COMMIT_WRITES} (manifest, timestamp, latest)", "requests",
               float(max(entry["requests"].get("put", 0) for entry in engine)),
               float(max(entry["operations"].get("PutObject", 0) for entry in pushes)),
               Target("value", "==", 1 + COMMIT_WRITES),
               {"rounds": [entry["requests"] for entry in engine], "note": "most in a round; baseline: quilt3's"}),
        Result(f"{label} S3 requests of that commit: {kinds['put']} PUT, {kinds['get']} GET, {kinds['head']} HEAD, "
               f"{kinds['list']} LIST", "requests", float(max(sum(entry["requests"].values()) for entry in engine)),
               float(max(len(entry["calls"]) for entry in pushes)), None,
               {"rounds_engine": [entry["operations"] for entry in engine],
                "rounds_quilt3": [entry["operations"] for entry in pushes]}),
        Result(f"{label} requests for the parent's files during that commit", "requests",
               float(max(len(entry["parent_file_calls"]) for entry in engine)),
               float(max(len(entry["parent_file_calls"]) for entry in pushes)), Target("value", "==", 0),
               {"rule": "a GET of any file of the package, or any call on another file than the changed one",
                "baseline": "quilt3's"}),
        *new_data_results(f"{label} {size // MiB} MiB of new data until latest", size, big_details, "seconds"),
    ]


# --------------------------------------------------------------------------------------------------
# 14. Package drafts through a mount
# --------------------------------------------------------------------------------------------------


def s3_operation(method: str, key: str | None, query: dict[str, list[str]]) -> str:
    """The S3 operation of a path-style request, by the name botocore gives it (as RequestLog records them)."""
    if not key:
        return "ListObjectsV2" if "list-type" in query else f"{method} bucket"
    if "uploads" in query:
        return "CreateMultipartUpload"
    if "partNumber" in query:
        return "UploadPart"
    if "uploadId" in query:
        return {"POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload"}.get(method, "ListParts")
    keyed = {"GET": "GetObject", "HEAD": "HeadObject", "PUT": "PutObject", "DELETE": "DeleteObject"}
    return keyed.get(method, method)


@contextlib.contextmanager
def recording_proxy(bench: Bench) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """tests/faultproxy.py's proxy in front of the run's S3 server, recording each request as {"op", "key",
    "prefix" (of a listing), "at": its perf_counter on arrival} through its `deny` hook, which refuses none (as
    tests/test_presigned.py records requests): a daemon's status counts requests by kind only, this says which
    objects they were for.  Yields the proxy's endpoint and the list, appended to as requests arrive
    (list.append is atomic).  It reads every body whole and opens a connection upstream per request: for a few
    small requests, not for throughput."""
    calls: list[dict[str, Any]] = []
    bucket_path = f"/{bench.bucket}/"

    def record(method: str, raw_path: str) -> bool:
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        key = path[len(bucket_path):] if path.startswith(bucket_path) else None
        query = parse_qs(parts.query, keep_blank_values=True)
        calls.append({"op": s3_operation(method, key, query), "key": key,
                      "prefix": query.get("prefix", [None])[0], "at": time.perf_counter()})
        return False

    with import_from_tests("faultproxy").FaultProxy(bench.endpoint, deny=record) as proxy:
        yield proxy.endpoint_url, calls


def draft_round(bench: Bench, mount: Mount, logical_key: str, source: str, commit: Callable[[str, str], Any],
                message: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Through `mount`, each a phase (its seconds, the daemon's requests by kind, CPU seconds; with `calls`, a
    recording_proxy's list, the requests it recorded meanwhile): `mkdir .packages/COMMIT_PACKAGE/draft`; `cp
    SOURCE draft/LOGICAL_KEY`; `commit(draft, message)` (one of commit_ways') and a boto3 GET of `latest` that
    must name the new revision.  `total_seconds` is the sum of the three (not the phases' pauses)."""
    draft = os.path.join(mount.path, ".packages", COMMIT_PACKAGE, "draft")
    target = os.path.join(draft, logical_key)
    timeout = bench.args.phase_timeout

    @contextlib.contextmanager
    def timed_phase(what: str) -> Iterator[dict[str, Any]]:
        with mount.phase(what) as stats:
            mark = len(calls) if calls is not None else 0
            started = time.perf_counter()
            yield stats
            stats["seconds"] = time.perf_counter() - started
            if calls is not None:
                stats["calls"] = [{"op": call["op"], "key": call["key"], "prefix": call["prefix"],
                                   "at_ms": round((call["at"] - started) * 1000, 1)} for call in calls[mark:]]

    with timed_phase("mkdir of the draft") as mkdir:
        run_captured(["mkdir", draft], timeout)
    parent = os.getxattr(draft, "user.quilt.parent").decode("ascii")
    os.makedirs(os.path.dirname(target), exist_ok=True)  # untimed: a directory the key is in, new in the draft
    with timed_phase("cp into the draft") as cp:
        run_captured(["cp", source, target], timeout)
    with timed_phase("commit of the draft") as committed:
        done = commit(draft, message)
        check_latest(bench, done["top_hash"], f"the commit of {draft}")
    # Right after the commit the mount shows the new revision as latest, with the draft on it.
    shown = {"latest": os.readlink(os.path.join(mount.path, ".packages", COMMIT_PACKAGE, "latest")),
             "draft_parent": os.getxattr(draft, "user.quilt.parent").decode("ascii")}
    if shown != {"latest": f"@{done['top_hash']}", "draft_parent": done["top_hash"]}:
        raise RuntimeError(f"after the commit of {done['top_hash']} the mount shows {shown}")
    return {"parent": parent, "top_hash": done["top_hash"], "pointer": done["pointer"], "entries": done["entries"],
            "total_seconds": mkdir["seconds"] + cp["seconds"] + committed["seconds"],
            "mkdir": mkdir, "cp": cp, "commit": committed}


def cli_startup_seconds(bench: Bench) -> float:
    """The median of 3 runs of Python importing what `quiltmount packages commit` imports before it commits
    (quiltmount.cli, then quiltmount.draftctl): the fixed part of a commit's time through the CLI."""
    argv = [sys.executable, "-c", "import quiltmount.cli, quiltmount.draftctl"]
    return statistics.median(timed_command(argv, bench.args.phase_timeout) for _ in range(3))


def commit_ways(bench: Bench) -> dict[str, Callable[[str, str], Any]]:
    """The two ways 14. commits a draft, each round both: the CLI in a subprocess (what a user types; it pays
    Python's start-up, see cli_startup_seconds) and the API in this process (as the baselines run: imported
    here first)."""
    def cli(draft: str, message: str) -> Any:
        return json.loads(bench.quiltmount("packages", "commit", draft, "-m", message, "--json",
                                           timeout=bench.args.phase_timeout))

    return {"quiltmount packages commit": cli, "quiltmount.commit_draft": quiltmount.commit_draft}


def measure_draft(bench: Bench) -> list[Result]:
    """14. package drafts through a mount, end to end: mkdir of a draft, cp of one changed 1 KiB file into it and
    its commit on a --commit-entries revision vs quilt3 browse + set + push of the same change; the same with
    --write-mib MiB of new data vs upload_file of the same bytes (each round, baseline first, a fresh mount,
    once per commit way)."""
    count, size = bench.args.commit_entries, bench.args.write_mib * MiB
    changed = scale_logical_key(count // 2)
    changed_key = f"{COMMIT_PACKAGE}/{changed}"
    label = f"draft through a mount, {count:,}-entry revision:"
    quilt3_session = boto3.Session()
    quilt3_log = RequestLog(quilt3_session)
    source = os.path.join(bench.workdir, "draft-source.bin")
    ways = commit_ways(bench)
    small_details: dict[str, list[dict[str, Any]]] = {way: [] for way in ways}
    big_details: dict[str, list[dict[str, Any]]] = {way: [] for way in ways}

    def say(text: str) -> None:
        print(f"  {text}", flush=True)

    def phases(figures: dict[str, Any]) -> str:
        return ", ".join(f"{phase} {figures[phase]['seconds']:.2f} s" for phase in ("mkdir", "cp", "commit"))

    cli_s = cli_startup_seconds(bench)
    try:
        with commit_package(bench) as (info, top_hashes), quilt3_on(bench, quilt3_session) as quilt3:
            # (a) quilt3's push of one changed file, then the same change through a mount whose requests the
            # proxy records (quilt3's: RequestLog), on quilt3's revision.
            with recording_proxy(bench) as (proxy_endpoint, calls):
                for number, (way, commit) in itertools.product(range(1, bench.args.rounds + 1), ways.items()):
                    baseline = timed_quilt3_push(bench, quilt3, quilt3_log, changed,
                                                 f"bench round {number}: quilt3 push")
                    top_hashes.append(baseline["top_hash"])
                    data = os.urandom(SMALL_FILE_SIZE)
                    Path(source).write_bytes(data)
                    with bench.mount("draft", endpoint=proxy_endpoint) as mount:
                        figures = draft_round(bench, mount, changed, source, commit,
                                              f"bench round {number}: {way} through a mount", calls)
                    top_hashes.append(figures["top_hash"])
                    if (figures["parent"], figures["entries"]) != (baseline["top_hash"], count):
                        raise RuntimeError(f"the draft on {figures['parent']} committed {figures['entries']} "
                                           f"entries, expected {baseline['top_hash']} and {count}")
                    if bench.s3.get_object(Bucket=bench.bucket, Key=changed_key)["Body"].read() != data:
                        raise RuntimeError(f"s3://{bench.bucket}/{changed_key} does not hold the committed bytes")
                    figures["operations"] = operation_counts(figures["commit"]["calls"])
                    figures["parent_file_calls"] = parent_file_calls(
                        [call for phase in ("mkdir", "cp", "commit") for call in figures[phase]["calls"]], changed_key)
                    baseline["parent_file_calls"] = parent_file_calls(baseline["calls"], changed_key)
                    small_details[way].append({"mount": figures, "quilt3": baseline})
                    say(f"round {number}, {way}: 1 KiB change: {phases(figures)}, total {figures['total_seconds']:.2f} "
                        f"s; commit requests {figures['operations']}; quilt3 browse + set + push "
                        f"{baseline['seconds']:.2f} s")

            # (b) new data: upload_file of a local file, then mkdir, cp of the file, commit through a mount (the
            # first adds COMMIT_BIG_KEY, the others replace it).  Straight to the server: no proxy.
            for number, (way, commit) in itertools.product(range(1, bench.args.rounds + 1), ways.items()):
                write_random_file(source, size)
                baselines = upload_file_baselines(bench, source)
                with bench.mount("draft-big") as mount:
                    big = draft_round(bench, mount, COMMIT_BIG_KEY, source, commit,
                                      f"bench round {number}: {size // MiB} MiB, {way} through a mount")
                top_hashes.append(big["top_hash"])
                check_big_commit(bench, big, size)
                big_details[way].append({**big, **baselines})
                say(f"round {number}, {way}: {size // MiB} MiB new: {phases(big)}, total {big['total_seconds']:.2f} "
                    f"s ({size / MB / big['total_seconds']:.0f} MB/s); upload_file {baselines['baseline_seconds']:.2f} "
                    f"s, with SHA-256 {baselines['baseline_sha256_seconds']:.2f} s; commit requests "
                    f"{big['commit']['requests']}")

            quilt3_check = quilt3_reads(bench, quilt3, top_hashes[-1], size)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(source)

    every = [entry for way in ways for entry in small_details[way]]
    mounts, pushes = [entry["mount"] for entry in every], [entry["quilt3"] for entry in every]
    requests = [entry["commit"]["requests"] for entry in mounts]
    kinds = {kind: max(entry.get(kind, 0) for entry in requests) for kind in ("put", "get", "head", "list")}

    def seconds(phase: str) -> list[float]:
        return [entry[phase]["seconds"] for entry in mounts]

    def paired(way: str, phase: str | None) -> list[tuple[float, float]]:
        """(the mount's seconds: `phase`'s or the total, quilt3's) of each round of `way`."""
        return [(entry["mount"][phase]["seconds"] if phase else entry["mount"]["total_seconds"],
                 entry["quilt3"]["seconds"]) for entry in small_details[way]]

    common = {"entries": count, "parent": info, "changed_key": changed, "quilt3_check": quilt3_check,
              "mount": "fresh mount (through a recording proxy); mkdir draft, cp, commit until a boto3 GET of "
                       "latest names the new revision",
              "baseline": f"quilt3 {quilt3_check['quilt3']} Package.browse(latest) + set + push, one boto3 "
                          "session, straight to the server"}
    results = []
    for way in ways:
        results += [
            Result.of_rounds(f"{label} 1 changed 1 KiB file: mkdir + cp + {way} until latest (baseline: quilt3 "
                             "browse + set + push)", "s", paired(way, None),
                             Target("value", "<=", COMMIT_SMALL_SECONDS), {**common, "rounds": small_details[way]}),
            Result.of_rounds(f"{label} of which {way} until latest", "s", paired(way, "commit"), None,
                             {"rounds_cpu_seconds": [entry["mount"]["commit"]["cpu_seconds"]
                                                     for entry in small_details[way]]})]
    big_rows = []
    for way in ways:
        big_rows += [*new_data_results(f"{label} {size // MiB} MiB of new data: mkdir + cp + {way} until latest",
                                       size, big_details[way], "total_seconds"),
                     Result.of_rounds(f"{label} {size // MiB} MiB of new data: of which {way}, vs upload_file", "MB/s",
                                      [(size / MB / entry["commit"]["seconds"], size / MB / entry["baseline_seconds"])
                                       for entry in big_details[way]], None, {})]
    return [
        *results,
        Result(f"{label} the CLI's start-up (python -c 'import quiltmount.cli, quiltmount.draftctl', median of 3)",
               "s", cli_s, None, None, {}),
        Result(f"{label} mkdir of the draft (fresh mount)", "s", statistics.median(seconds("mkdir")), None, None,
               {"rounds": seconds("mkdir")}),
        Result(f"{label} cp of the file into the draft", "s", statistics.median(seconds("cp")), None, None,
               {"rounds": seconds("cp")}),
        Result(f"{label} PUTs of a commit: the file + {COMMIT_WRITES} (manifest, timestamp, latest)", "requests",
               float(kinds["put"]), float(max(entry["operations"].get("PutObject", 0) for entry in pushes)),
               Target("value", "==", 1 + COMMIT_WRITES),
               {"rounds": requests, "note": "most in a round (the daemon's status); baseline: quilt3's"}),
        Result(f"{label} S3 requests of a commit: {kinds['put']} PUT, {kinds['get']} GET, {kinds['head']} HEAD, "
               f"{kinds['list']} LIST", "requests", float(max(len(entry["commit"]["calls"]) for entry in mounts)),
               float(max(len(entry["calls"]) for entry in pushes)), None,
               {"kinds": "the daemon's status; the count: the proxy's",
                "rounds_mount": [entry["operations"] for entry in mounts],
                "rounds_quilt3": [entry["operations"] for entry in pushes]}),
        Result(f"{label} requests for the parent's files during mkdir, cp and commit", "requests",
               float(max(len(entry["parent_file_calls"]) for entry in mounts)),
               float(max(len(entry["parent_file_calls"]) for entry in pushes)), Target("value", "==", 0),
               {"rule": "a GET of any file of the package, or any call on another file than the changed one "
                        "(recorded by the proxy)", "baseline": "quilt3's (its push only)"}),
        *big_rows,
    ]


# --------------------------------------------------------------------------------------------------
# 15. The persistent disk cache
# --------------------------------------------------------------------------------------------------


def new_cache_dir(bench: Bench, label: str) -> str:
    """A new, empty --disk-cache-dir under the run's directory (removed by the caller when done with it)."""
    return tempfile.mkdtemp(prefix=f"disk-cache-{label}-", dir=bench.workdir)


def tree_bytes(root: str) -> dict[str, int]:
    """Files and bytes under `root` (a disk cache: its blocks, index and temporary files)."""
    files = size = 0
    for directory, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(directory, name)).st_size
                files += 1
    return {"files": files, "bytes": size}


def drop_page_cache(root: str) -> dict[str, Any]:
    """Evict the disk cache at `root` from the page cache: `sync`, then `echo 3 > /proc/sys/vm/drop_caches`
    (root only); where that is refused, posix_fadvise DONTNEED of every file under `root`.  What was done."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as control:
            control.write("3\n")
        return {"page_cache_dropped": True, "how": "sync; echo 3 > /proc/sys/vm/drop_caches"}
    except OSError as exc:
        reason = f"{type(exc).__name__}: {exc}"
    evicted = 0
    for directory, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):
                descriptor = os.open(os.path.join(directory, name), os.O_RDONLY)
                try:
                    os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
                    evicted += 1
                finally:
                    os.close(descriptor)
    return {"page_cache_dropped": False, "drop_caches_error": reason,
            "how": f"posix_fadvise DONTNEED of the {evicted} files of the disk cache only"}


def prepare_cache_revisions(bench: Bench) -> dict[str, Any]:
    """15.'s package CACHE_PACKAGE: two revisions of --cache-entries files of 1 KiB, every file different bytes
    (so that nothing is shared by content but what the revisions share).  Revision 1's files are put at
    `CACHE_PACKAGE/v1/<logical key>`; revision 2 has the same entries but every CACHE_CHANGED_SHARE-th, whose new
    bytes are at `CACHE_PACKAGE/v2/<logical key>` (a push of the changed files, the others kept where they are, as
    quilt3 does).  Manifests with quiltmount's writer (`put_package`; `latest` names revision 2).  Returns, per
    revision, its top hash, the S3 key of each entry and the CRC-32 of each file's bytes (logical key ->)."""
    count = bench.args.cache_entries
    keys = [scale_logical_key(index) for index in range(count)]
    changed = set(range(0, count, CACHE_CHANGED_SHARE))
    bodies = {f"{CACHE_PACKAGE}/v1/{key}": os.urandom(SMALL_FILE_SIZE) for key in keys}
    bodies.update({f"{CACHE_PACKAGE}/v2/{keys[index]}": os.urandom(SMALL_FILE_SIZE) for index in sorted(changed)})
    client = make_client(bench.endpoint, pool=UPLOAD_THREADS)
    started = time.perf_counter()
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(lambda item: client.put_object(Bucket=bench.bucket, Key=item[0], Body=item[1]),
                      bodies.items()))
    put_s = time.perf_counter() - started
    hashes = {key: mf.hash_bytes(mf.SHA2_256_CHUNKED, body) for key, body in bodies.items()}
    revisions = []
    for number in (1, 2):
        objects = [f"{CACHE_PACKAGE}/v{2 if number == 2 and index in changed else 1}/{key}"
                   for index, key in enumerate(keys)]
        entries = [mf.Entry(key, s3_physical_key(bench.bucket, obj, None), SMALL_FILE_SIZE, mf.SHA2_256_CHUNKED,
                            hashes[obj]) for key, obj in zip(keys, objects)]
        top_hash, manifest_bytes = put_package(bench.s3, bench.bucket, CACHE_PACKAGE, entries)
        revisions.append({"number": number, "top_hash": top_hash, "manifest_bytes": manifest_bytes,
                          "objects": objects,
                          "crcs": {key: zlib.crc32(bodies[obj]) for key, obj in zip(keys, objects)}})
    return {"entries": count, "changed": len(changed), "objects_put": len(bodies), "put_seconds": put_s,
            "revisions": revisions}


@contextlib.contextmanager
def cache_revisions(bench: Bench) -> Iterator[dict[str, Any] | None]:
    """CACHE_PACKAGE's two revisions for the block (prepare_cache_revisions; None with --cache-entries 0),
    deleted afterwards."""
    if not bench.args.cache_entries:
        yield None
        return
    made: dict[str, Any] | None = None
    try:
        delete_package(bench, CACHE_PACKAGE, [])  # a persistent --endpoint-url server: start clean
        print(f"  writing {CACHE_PACKAGE}: 2 revisions of {bench.args.cache_entries} files of 1 KiB sharing all "
              f"but 1 in {CACHE_CHANGED_SHARE} ...", flush=True)
        made = prepare_cache_revisions(bench)
        yield made
    finally:
        delete_package(bench, CACHE_PACKAGE, [revision["top_hash"] for revision in made["revisions"]] if made else [])


def revision_dir(mount: Mount, top_hash: str) -> str:
    return os.path.join(mount.path, ".packages", CACHE_PACKAGE, f"@{top_hash}")


def open_revision(bench: Bench, mount: Mount, revision: dict[str, Any]) -> float:
    """`ls` of the revision's root (untimed by the callers: resolves it, opens or builds its index): seconds."""
    _, seconds = run_captured(["ls", revision_dir(mount, revision["top_hash"]) + "/"], bench.args.phase_timeout)
    return seconds


def read_revision_files(mount: Mount, revision: dict[str, Any]) -> dict[str, Any]:
    """Read every file of the revision through `mount` on CACHE_READERS threads, each checked against the CRC-32
    of the bytes the bench wrote: seconds and files/s."""
    root = revision_dir(mount, revision["top_hash"])
    crcs: dict[str, int] = revision["crcs"]

    def read(key: str) -> bool:
        with open(os.path.join(root, key), "rb") as file:
            data = file.read()
        return len(data) == SMALL_FILE_SIZE and zlib.crc32(data) == crcs[key]

    started = time.perf_counter()
    with ThreadPoolExecutor(CACHE_READERS) as pool:
        good = list(pool.map(read, crcs))
    seconds = time.perf_counter() - started
    if not all(good):
        raise RuntimeError(f"{good.count(False)} of {len(good)} files of revision {revision['number']} read "
                           "through the mount have the wrong bytes")
    return {"seconds": seconds, "files": len(good), "files_per_s": len(good) / seconds}


def boto3_revision_download(bench: Bench, revision: dict[str, Any]) -> dict[str, Any]:
    """prefetch's baseline: get_object of every file of the revision (its S3 keys known), bytes read fully, on a
    ThreadPoolExecutor of CACHE_READERS threads (one client, as many connections)."""
    client = make_client(bench.endpoint, pool=CACHE_READERS)
    crcs = [revision["crcs"][key] for key in revision["crcs"]]

    def get(key: str) -> int:
        body = client.get_object(Bucket=bench.bucket, Key=key)["Body"].read()
        return zlib.crc32(body) if len(body) == SMALL_FILE_SIZE else -1

    with cpu_meter(bench.cpu_pids()) as cpu:
        started = time.perf_counter()
        with ThreadPoolExecutor(CACHE_READERS) as pool:
            got = list(pool.map(get, revision["objects"]))
        seconds = time.perf_counter() - started
    if got != crcs:
        raise RuntimeError("boto3 get_object returned the wrong bytes for some files of revision "
                           f"{revision['number']}")
    return {"seconds": seconds, "files": len(got), "cpu_seconds": cpu}


def prefetch_missing(bench: Bench) -> str | None:
    """Why `quiltmount prefetch` cannot be measured (the command is not there), or None."""
    try:
        bench.quiltmount("prefetch", "--help", timeout=60)
    except RuntimeError as exc:
        return f"`quiltmount prefetch` is not available: {exc}"
    return None


def cache_reread_round(bench: Bench) -> dict[str, Any]:
    """15.(a), one round: download_fileobj of the big object; its cold read on a fresh mount without the disk
    cache, whose memory cache holds the whole object, and once more on that mount, the file's pages dropped, from
    the blocks in the daemon's memory: what a daemon serves through FUSE at best, the ceiling of the re-read; the
    cold read on a mount with a new, empty disk cache (at the default cap); `quiltmount umount` (it writes what is
    queued); the page cache dropped; the re-read on a fresh mount of the same disk cache.  Those two mounts have
    the default memory cache."""
    direct_s, direct_cpu = direct_download(bench)
    reads: dict[str, Any] = {}
    root = new_cache_dir(bench, "reread")
    try:
        for label, what, disk_size in (("off", "cold read, disk cache off", "0"),
                                       ("cold", "cold read, disk cache on (empty)", None),
                                       ("reread", "re-read from the disk cache, fresh mount", None)):
            if label == "reread":
                reads["dropped"] = drop_page_cache(root)
                reads["disk_cache_before_reread"] = tree_bytes(root)
            with bench.mount(f"cache-{label}", disk_cache_size=disk_size,
                             memory_cache_size=f"{2 * bench.size // MiB}M" if label == "off" else None,
                             disk_cache_dir=None if disk_size == "0" else root) as mount:
                path = bench.in_mount(mount, BIG_KEY)
                with mount.phase(what) as stats:
                    count, seconds = read_sequential(path, drop_cache=True)
                if label == "off":
                    with mount.phase("read again, blocks in the daemon's memory") as memory:
                        memory_count, memory_seconds = read_sequential(path, drop_cache=True)
                    if memory_count != bench.size:
                        raise RuntimeError(f"the read from memory returned {memory_count} bytes")
                    reads["memory"] = {"seconds": memory_seconds, "MBps": bench.size / MB / memory_seconds, **memory}
                if label == "cold":
                    stats["umount_seconds"] = mount.umount()  # the daemon writes what is queued before it exits
                    stats["last_status_cache"] = ((mount.sampler.last_record if mount.sampler else None)
                                                  or {}).get("cache")
            if count != bench.size:
                raise RuntimeError(f"{what} returned {count} bytes, expected {bench.size}")
            reads[label] = {"seconds": seconds, "MBps": bench.size / MB / seconds, **stats}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"baseline_seconds": direct_s, "baseline_MBps": bench.size / MB / direct_s,
            "baseline_cpu_seconds": direct_cpu, **reads}


def cache_prefetch_round(bench: Bench, revision: dict[str, Any]) -> dict[str, Any]:
    """15.(c), one round: the boto3 baseline; then on a fresh mount with a new, empty disk cache, `quiltmount
    prefetch` of the revision's directory (a subprocess, timed whole: its start-up included) and a read of every
    file; then, on a fresh mount of the same disk cache, the read again."""
    figures: dict[str, Any] = {"baseline": boto3_revision_download(bench, revision)}
    root = new_cache_dir(bench, "prefetch")
    try:
        with bench.mount("cache-prefetch", disk_cache_size=None, disk_cache_dir=root) as mount:
            target = revision_dir(mount, revision["top_hash"])
            with mount.phase("quiltmount prefetch") as prefetch:
                started = time.perf_counter()
                output = bench.quiltmount("prefetch", target, "--json", timeout=bench.args.phase_timeout)
                prefetch["seconds"] = time.perf_counter() - started
            with contextlib.suppress(ValueError):
                prefetch["summary"] = json.loads(output)
            prefetch.setdefault("summary", output[-2000:])
            with mount.phase("reading every file after prefetch") as after:
                after.update(read_revision_files(mount, revision))
            figures["umount_seconds"] = mount.umount()
        figures["disk_cache_after"] = tree_bytes(root)
        with bench.mount("cache-prefetched", disk_cache_size=None, disk_cache_dir=root) as mount:
            open_revision(bench, mount, revision)
            with mount.phase("reading every file, fresh mount, after prefetch") as fresh:
                fresh.update(read_revision_files(mount, revision))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {**figures, "prefetch": prefetch, "read_after": after, "read_fresh_mount": fresh}


def cache_rss_run(bench: Bench, size: str, revision: dict[str, Any] | None) -> dict[str, Any]:
    """15.(d), one run: a fresh mount (--memory-cache-size --cache-memory-cache-size) with a new disk cache capped
    at `size`: the cold read of the big object, then every file of `revision`, then `quiltmount umount`; the
    daemon's RSS sampled every RSS_INTERVAL s throughout (VmHWM covers what falls between samples)."""
    root = new_cache_dir(bench, f"rss-{size}")
    try:
        with bench.mount(f"cache-rss-{size}", memory_cache_size=bench.args.cache_memory_cache_size,
                         disk_cache_size=size, disk_cache_dir=root) as mount:
            path = bench.in_mount(mount, BIG_KEY)
            with mount.phase(f"cold read, disk cache {size}") as cold:
                count, seconds = read_sequential(path, drop_cache=True)
            if count != bench.size:
                raise RuntimeError(f"the cold read with a {size} disk cache returned {count} bytes")
            files: dict[str, Any] = {}
            if revision is not None:
                open_revision(bench, mount, revision)
                with mount.phase(f"reading every file of revision {revision['number']}") as files:
                    files.update(read_revision_files(mount, revision))
            umount_s = mount.umount()
            sampler = mount.sampler
        assert sampler is not None
        return {"disk_cache_size": size, "peak_rss_bytes": sampler.peak_rss, "peak_vmhwm_bytes": sampler.peak_hwm,
                "rss_samples": sampler.samples, "cold_read": {"seconds": seconds, **cold}, "files": files,
                "umount_seconds": umount_s, "disk_cache_after": tree_bytes(root)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_cache_reread(bench: Bench) -> list[Result]:
    """15.(a) alone (``--only cache-reread``): the big object cold into an empty disk cache, then re-read from it
    after a umount, a fresh mount and the page cache dropped."""
    label = "disk cache:"
    big = f"{bench.size // MiB} MiB object"

    def say(text: str) -> None:
        print(f"  {text}", flush=True)

    reread_rounds = []
    for number in range(1, bench.args.rounds + 1):
        figures = cache_reread_round(bench)
        reread_rounds.append(figures)
        say(f"round {number}: {big}: download_fileobj {figures['baseline_MBps']:.0f} MB/s; cold read, disk cache "
            f"off {figures['off']['MBps']:.0f} MB/s, on {figures['cold']['MBps']:.0f} MB/s (then umount "
            f"{figures['cold']['umount_seconds']:.2f} s, {figures['cold'].get('cache', {})}); page cache "
            f"{'dropped' if figures['dropped']['page_cache_dropped'] else 'NOT dropped'}; re-read "
            f"{figures['reread']['MBps']:.0f} MB/s, requests {figures['reread']['requests']}, "
            f"{figures['reread'].get('cache', {})}; the cold read's mount again, from its memory "
            f"{figures['memory']['MBps']:.0f} MB/s")
    return [
        Result.of_rounds(f"{label} re-read of the {big} after umount + fresh mount, page cache dropped (baseline: "
                         "its cold read, empty disk cache)", "MB/s",
                         [(entry["reread"]["MBps"], entry["cold"]["MBps"]) for entry in reread_rounds],
                         Target("ratio", ">=", CACHE_REREAD_RATIO),
                         {"rounds": reread_rounds,
                          "page_cache_dropped": all(entry["dropped"]["page_cache_dropped"]
                                                    for entry in reread_rounds)}),
        Result(f"{label} GET requests during that re-read (most in a round)", "requests",
               float(max(entry["reread"]["requests"].get("get", 0) for entry in reread_rounds)), None,
               Target("value", "==", 0),
               {"rounds": [entry["reread"]["requests"] for entry in reread_rounds]}),
        Result(f"{label} blocks the cold read left out of the disk cache (status disk_dropped: its write queue was "
               "full; most in a round)", "blocks",
               float(max(entry["cold"].get("cache", {}).get("disk_dropped", 0) for entry in reread_rounds)), None,
               None, {"blocks_of_1_MiB_in_the_object": -(-bench.size // MiB),
                      "rounds_cache": [entry["cold"].get("cache") for entry in reread_rounds],
                      "rounds_disk_cache_before_reread": [entry["disk_cache_before_reread"]
                                                          for entry in reread_rounds]}),
        Result.of_rounds(f"{label} cold read of the {big}, disk cache on (empty) vs off", "MB/s",
                         [(entry["cold"]["MBps"], entry["off"]["MBps"]) for entry in reread_rounds], None,
                         {"note": "the cost of filling the disk cache during a cold read",
                          "rounds_umount_seconds_after": [entry["cold"]["umount_seconds"] for entry in reread_rounds],
                          "rounds_cpu_seconds": [entry["cold"]["cpu_seconds"] for entry in reread_rounds],
                          "rounds_cpu_seconds_off": [entry["off"]["cpu_seconds"] for entry in reread_rounds]}),
        Result.of_rounds(f"{label} that re-read vs a second read on the mount without the disk cache, from the "
                         "blocks then in its memory (what a daemon serves through FUSE at best)", "MB/s",
                         [(entry["reread"]["MBps"], entry["memory"]["MBps"]) for entry in reread_rounds], None,
                         {"rounds_memory_requests": [entry["memory"]["requests"] for entry in reread_rounds]}),
        Result.of_rounds(f"{label} that re-read vs boto3 download_fileobj", "MB/s",
                         [(entry["reread"]["MBps"], entry["baseline_MBps"]) for entry in reread_rounds], None, {}),
    ]


def measure_cache(bench: Bench) -> list[Result]:
    """15. the persistent disk cache (issue 16): (a) the big object re-read from it after a umount and a fresh
    mount vs its cold read; (b) every file of a revision read after those of another sharing all but 1 in
    CACHE_CHANGED_SHARE; (c) `quiltmount prefetch` of a revision vs boto3 with CACHE_READERS threads, then its
    files read; (d) the daemon's peak RSS with the disk cache capped at 64M vs 10G."""
    label = "disk cache:"
    big = f"{bench.size // MiB} MiB object"
    results = measure_cache_reread(bench)

    def say(text: str) -> None:
        print(f"  {text}", flush=True)

    with cache_revisions(bench) as made:
        if made is None:
            say("--cache-entries 0: the revision and prefetch parts are skipped")
        else:
            second = made["revisions"][1]
            count, changed = made["entries"], made["changed"]
            info = {key: value for key, value in made.items() if key != "revisions"}
            info["revisions"] = [{key: revision[key] for key in ("number", "top_hash", "manifest_bytes")}
                                 for revision in made["revisions"]]
            say(f"{made['objects_put']} files put in {made['put_seconds']:.1f} s")

            # (b) revision 1 read (cold), then revision 2 on a fresh mount of the same disk cache.
            root = new_cache_dir(bench, "revisions")
            reads: dict[str, Any] = {}
            try:
                for revision in made["revisions"]:
                    with bench.mount(f"cache-rev{revision['number']}", disk_cache_size=None,
                                     disk_cache_dir=root) as mount:
                        open_s = open_revision(bench, mount, revision)
                        with mount.phase(f"reading every file of revision {revision['number']}") as stats:
                            stats.update(read_revision_files(mount, revision))
                        stats["open_seconds"] = open_s
                        stats["umount_seconds"] = mount.umount()
                    reads[f"revision{revision['number']}"] = stats
                    say(f"revision {revision['number']}: {count} files in {stats['seconds']:.2f} s "
                        f"({stats['files_per_s']:.0f} files/s), requests {stats['requests']}, "
                        f"{stats.get('cache', {})}")
                reads["disk_cache_after"] = tree_bytes(root)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            after, before = reads["revision2"], reads["revision1"]
            shared = f"{count:,}-entry revision 2 sharing {count - changed:,} entries with revision 1"
            results += [
                Result(f"{label} GETs reading every file of a {shared}, after revision 1's were read (fresh mount; "
                       "baseline: revision 1's GETs)", "requests", float(after["requests"].get("get", 0)),
                       float(before["requests"].get("get", 0)), Target("value", "<=", changed),
                       {**info, **reads}),
                Result(f"{label} files/s reading revision 2 that way ({CACHE_READERS} threads; baseline: revision 1, "
                       "cold)", "files/s", after["files_per_s"], before["files_per_s"], None, {}),
            ]

            # (c) prefetch of revision 2 into an empty disk cache vs boto3; then its files read.  A failure here is
            # an error row (the run's exit status 1), and (d) is still measured.
            prefetch_rounds = []
            missing = prefetch_missing(bench)
            try:
                for number in range(1, 0 if missing else bench.args.rounds + 1):
                    figures = cache_prefetch_round(bench, second)
                    prefetch_rounds.append(figures)
                    say(f"round {number}: boto3 get_object x {CACHE_READERS} threads "
                        f"{figures['baseline']['seconds']:.2f} s; prefetch {figures['prefetch']['seconds']:.2f} s, "
                        f"requests {figures['prefetch']['requests']}; read after: requests "
                        f"{figures['read_after']['requests']}; fresh mount: requests "
                        f"{figures['read_fresh_mount']['requests']}")
            except Exception as exc:  # noqa: BLE001 - reported as the row's error
                traceback.print_exc()
                missing = f"{type(exc).__name__}: {exc}"[:2000]  # prefetch prints a line per failed file
            if missing:
                say(f"prefetch: {missing.splitlines()[0][:300]}")
                results.append(Result(f"{label} quiltmount prefetch of a {count:,}-file revision", "files/s", None,
                                      error=missing, details={"rounds_done": prefetch_rounds}))
            else:
                results += [
                    Result.of_rounds(f"{label} quiltmount prefetch of a {count:,}-file revision (empty disk cache) vs "
                                     f"boto3 get_object on {CACHE_READERS} threads", "files/s",
                                     [(count / entry["prefetch"]["seconds"], count / entry["baseline"]["seconds"])
                                      for entry in prefetch_rounds], Target("ratio", ">=", 1.0),
                                     {"bytes": count * SMALL_FILE_SIZE, "rounds": prefetch_rounds,
                                      "note": "prefetch timed as a subprocess: its start-up is included"}),
                    Result(f"{label} GETs reading every file through the mount after prefetch (most in a round)",
                           "requests", float(max(entry["read_after"]["requests"].get("get", 0)
                                                 for entry in prefetch_rounds)), None, Target("value", "==", 0),
                           {"rounds": [entry["read_after"]["requests"] for entry in prefetch_rounds]}),
                    Result(f"{label} GETs reading them again on a fresh mount (most in a round)", "requests",
                           float(max(entry["read_fresh_mount"]["requests"].get("get", 0)
                                     for entry in prefetch_rounds)), None, None,
                           {"rounds": [entry["read_fresh_mount"]["requests"] for entry in prefetch_rounds]}),
                ]

        # (d) peak RSS: the same workload with the disk cache capped at 64M and at 10G (the order alternates).
        small, large = CACHE_RSS_SIZES
        rss_rounds = []
        for number in range(1, bench.args.rounds + 1):
            runs = {}
            for size in (CACHE_RSS_SIZES if number % 2 else CACHE_RSS_SIZES[::-1]):
                runs[size] = cache_rss_run(bench, size, made["revisions"][1] if made else None)
            rss_rounds.append(runs)
            say(f"round {number}: peak RSS " + ", ".join(
                f"disk cache {size}: {runs[size]['peak_rss_bytes'] / MiB:.0f} MiB (VmHWM "
                f"{runs[size]['peak_vmhwm_bytes'] / MiB:.0f})" for size in CACHE_RSS_SIZES))
    workload = f"cold read of the {big}" + (f" + {made['entries']:,} files" if made else "")
    results.append(Result.of_rounds(
        f"{label} daemon peak RSS, disk cache {large} vs {small} ({workload}, --memory-cache-size "
        f"{bench.args.cache_memory_cache_size})", "MiB",
        [(runs[large]["peak_rss_bytes"] / MiB, runs[small]["peak_rss_bytes"] / MiB) for runs in rss_rounds],
        Target("ratio", "<=", CACHE_RSS_RATIO), {"rounds": rss_rounds}))
    return results


def rss_result(bench: Bench) -> Result:
    """8. peak daemon RSS over the whole run vs the memory-cache budget."""
    budget = parse_size(bench.args.memory_cache_size)
    # The daemons of 12 hold revision indexes and the inodes of millions of entries, not cache: their RSS has
    # targets of its own there.
    counted = [entry for label, entry in bench.rss.items() if not label.startswith("scale-")]
    peak = max((entry["peak_rss_bytes"] for entry in counted), default=0)
    hwm = max((entry["peak_hwm_bytes"] for entry in counted), default=0)
    return Result("daemon peak RSS (sampled)", "MiB", peak / MiB if counted else None, None,
                  Target("value", "<=", (budget + RSS_SLACK) / MiB),
                  {"budget_bytes": budget, "peak_vmhwm_bytes": hwm, "per_daemon": bench.rss,
                   "not_counted": "the scale-* daemons (measurement 12)"})


def parse_size(text: str) -> int:
    """'512M' -> bytes (K/M/G/T binary suffixes, as quiltmount's --memory-cache-size)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    factors = {"K": KiB, "M": MiB, "G": 1 << 30, "T": 1 << 40}
    if text and text[-1] in factors:
        return int(float(text[:-1]) * factors[text[-1]])
    return int(text)


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == int(value) and abs(value) < 1e6:
        return f"{int(value)}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def print_table(results: list[Result]) -> None:
    headers = ("measurement", "unit", "quiltmount", "baseline", "ratio", "target", "result")
    rows = [headers]
    for result in results:
        verdict = {True: "pass", False: "FAIL", None: "info"}[result.passed]
        if result.error:
            verdict = "ERROR"
        ratio = f"{result.ratio:.2f}" if result.ratio is not None else "-"
        rows.append((result.name, result.unit, fmt(result.value), fmt(result.baseline), ratio,
                     result.target.describe(result.unit) if result.target else "-", verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(row, widths))))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    for result in results:
        if result.error:
            print(f"\nERROR in {result.name}: {result.error}")


def environment() -> dict[str, Any]:
    def run(argv: list[str]) -> str:
        with contextlib.suppress(Exception):
            return subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=REPO).stdout.strip()
        return ""

    return {"python": platform.python_version(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "boto3": boto3.__version__, "git": run(["git", "describe", "--always", "--dirty"]),
            "quiltmount": run([*quiltmount_command(), "--version"]),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


#: The measurements, in the order they run: name for --only -> (label, function).
STEPS: dict[str, tuple[str, Callable[[Bench], Result | list[Result]]]] = {
    "sequential": ("sequential read", measure_sequential), "preads": ("random preads", measure_preads),
    "listing": ("listing", measure_listing), "small-reads": ("small-file reads", measure_small_reads),
    "package-listing": ("package find/du", measure_package_listing),
    "package-read": ("package entry read", measure_package_read),
    "cp": ("cp into a mount", measure_cp_write), "small-writes": ("small-file writes", measure_small_writes),
    "posix-listing": ("ls -l with --posix-metadata", measure_posix_listing)}
STEP_NAMES = (*STEPS, "write-rss", "scale", "commit", "draft", "cache", "cache-reread")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--endpoint-url", help="use this S3 server instead of starting tests/s3server.py")
    parser.add_argument("--in-process-server", action="store_true",
                        help="run S3TestServer in this process (shares the GIL with the boto3 baselines)")
    parser.add_argument("--server-keeps-memory", action="store_true",
                        help="start the test server with its objects in memory and its freed memory kept for "
                             "reuse (see SERVER_KEEPS_MEMORY)")
    parser.add_argument("--bucket", default="quiltmount-bench")
    parser.add_argument("--size-mib", type=int, help="size of the big object (default 512, 64 with --quick)")
    parser.add_argument("--small-files", type=int, help="number of 1 KiB objects (default 5000, 500 with --quick)")
    parser.add_argument("--preads", type=int, help="number of random preads (default 200, 50 with --quick)")
    parser.add_argument("--package-entries", type=int,
                        help="entries of the package for find/du (default 10000, 1000 with --quick)")
    parser.add_argument("--memory-cache-size", default="512M", help="passed to quiltmount mount")
    parser.add_argument("--write-mib", type=int,
                        help="size of the file copied into a mount, and of the new data committed (13.), vs "
                             "upload_file (default 256, 64 with --quick)")
    parser.add_argument("--write-files", type=int,
                        help="number of 1 KiB files written into a mount vs put_object (default 500, 100 with --quick)")
    parser.add_argument("--rss-write-mib", type=int,
                        help="size of the file copied in for the write RSS check (default 2048; 0 skips it, "
                             "as --quick does)")
    parser.add_argument("--write-memory-cache-size", default="256M",
                        help="--memory-cache-size of the mount of the write RSS check")
    parser.add_argument("--scale-entries", type=int,
                        help="entries of each of the 3 revisions of the index scale test (default 1000000, "
                             "100000 with --quick; 0 skips it)")
    parser.add_argument("--commit-entries", type=int,
                        help="entries of the revision the commit measurements (13., 14.) change (default 10000, "
                             "1000 with --quick; 0 skips them)")
    parser.add_argument("--cache-entries", type=int,
                        help="files of each of the 2 revisions of the disk cache measurement (15.), which share all "
                             f"but 1 in {CACHE_CHANGED_SHARE} (default 10000, 1000 with --quick; 0 skips its revision "
                             "and prefetch parts)")
    parser.add_argument("--cache-memory-cache-size", default="128M",
                        help="--memory-cache-size of the mounts whose peak RSS 15. compares (disk cache 64M vs 10G)")
    parser.add_argument("--json-out", default="bench-results.json")
    parser.add_argument("--phase-timeout", type=float, default=600.0,
                        help="seconds before a hung measurement's daemon is killed")
    parser.add_argument("--rounds", type=int,
                        help="rounds of the measurements with targets, baseline and mount one after the other; "
                             "value, baseline and ratio are the medians (default 3, 1 with --quick)")
    parser.add_argument("--only", metavar="STEP[,STEP...]",
                        help="run only these measurements: " + ", ".join(STEP_NAMES))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 64 MiB, 500 small files, 50 preads, 1,000 package entries, "
                             "a 64 MiB cp and 100 small writes, no write RSS check, 100,000-entry scale test, "
                             "commits on a 1,000-entry revision, disk cache revisions of 1,000 entries")
    args = parser.parse_args(argv)
    quick = args.quick
    args.size_mib = args.size_mib or (64 if quick else 512)
    args.small_files = args.small_files or (500 if quick else 5000)
    args.preads = args.preads or (50 if quick else 200)
    args.package_entries = args.package_entries or (1000 if quick else 10_000)
    args.write_mib = args.write_mib or (64 if quick else 256)
    args.write_files = args.write_files or (100 if quick else 500)
    args.rounds = args.rounds or (1 if quick else 3)
    if args.rss_write_mib is None:
        args.rss_write_mib = 0 if quick else 2048
    if args.scale_entries is None:
        args.scale_entries = 100_000 if quick else 1_000_000
    if args.commit_entries is None:
        args.commit_entries = 1000 if quick else 10_000
    if args.cache_entries is None:
        args.cache_entries = 1000 if quick else 10_000
    args.only = args.only.split(",") if args.only else list(STEP_NAMES)
    unknown = sorted(set(args.only) - set(STEP_NAMES))
    if unknown:
        parser.error(f"unknown measurement(s) {', '.join(unknown)}; choose from {', '.join(STEP_NAMES)}")
    if args.server_keeps_memory and (args.endpoint_url or args.in_process_server):
        parser.error("--server-keeps-memory sets up the server the bench starts in a process of its own")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(name, value)
    results: list[Result] = []
    report: dict[str, Any] = {"config": {k: v for k, v in vars(args).items()}, "environment": environment()}
    failed = False
    with s3_endpoint(args) as (endpoint, server_pid), \
            tempfile.TemporaryDirectory(prefix="quiltmount-bench-") as workdir:
        report["config"]["endpoint"] = endpoint
        print(f"S3 endpoint {endpoint}; uploading {args.size_mib} MiB + {args.small_files} x 1 KiB ...", flush=True)
        report["upload"] = prepare_data(endpoint, args.bucket, args.size_mib * MiB, args.small_files)
        bench = Bench(args, endpoint, server_pid, workdir)
        steps = [(label, step) for name, (label, step) in STEPS.items() if name in args.only]
        if args.rss_write_mib and "write-rss" in args.only:
            steps.append((f"daemon RSS during a {args.rss_write_mib} MiB cp", measure_write_rss))
        if args.scale_entries and "scale" in args.only:
            steps.append((f"revision index at scale ({args.scale_entries} entries)", measure_scale))
        if args.commit_entries and "commit" in args.only:
            steps.append((f"package commits, engine ({args.commit_entries}-entry revision)", measure_commit))
        if args.commit_entries and "draft" in args.only:
            steps.append((f"package drafts through a mount ({args.commit_entries}-entry revision)", measure_draft))
        if "cache" in args.only:
            steps.append((f"persistent disk cache ({args.size_mib} MiB object, {args.cache_entries}-entry revisions)",
                          measure_cache))
        elif "cache-reread" in args.only:  # 15.(a) alone; "cache" runs it already
            steps.append((f"disk cache re-read ({args.size_mib} MiB object)", measure_cache_reread))
        for label, step in steps:
            print(f"measuring {label} ...", flush=True)
            try:
                outcome = step(bench)
            except Exception as exc:  # noqa: BLE001 - record it, go on with the other measurements
                failed = True
                traceback.print_exc()
                outcome = Result(label, "-", None, error=f"{type(exc).__name__}: {exc}")
            results.extend(outcome if isinstance(outcome, list) else [outcome])
        results.append(rss_result(bench))
        failed = failed or any(result.error for result in results)  # a measurement that reported its own error
        report["packages"] = bench._packages
        report["scale_packages"] = bench._scale

    print()
    print_table(results)
    report["results"] = [result.to_json() for result in results]
    with open(args.json_out, "w", encoding="utf-8") as out:
        json.dump(report, out, indent=2)
    print(f"\nwrote {args.json_out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
