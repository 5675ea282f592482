"""Mount lifecycle: checks, building the layers, running FUSE, the ready signal, the status record.

`quiltmount mount` (without --foreground) starts `python -m quiltmount.daemon OPTIONS-JSON` in a new
session and waits on a pipe: the daemon writes `READY` once the mountpoint answers, or `ERROR: <reason>`
(one line) if it could not mount.  So the command exits 0 only when the mount is live.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from quiltmount import __version__, state
from quiltmount.errors import UserError
from quiltmount.paths import default_cache_dir, default_log_file, index_dir, make_private_dir

log = logging.getLogger("quiltmount")

#: Seconds the parent waits for the daemon's word (READY or an error), or for its next WORKING beat.
READY_TIMEOUT = 60.0
WORKING = b"WORKING"
WORKING_INTERVAL = 5.0
SEARCH_TIMEOUT = 30.0
IMMUTABLE_KERNEL_TTL = 24 * 3600.0
STATUS_INTERVAL = 1.0
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc mallopt parameters


@dataclass
class MountOptions:
    source: str
    mountpoint: str
    read_only: bool = False
    cache_dir: str | None = None
    disk_cache_size: int = 0
    memory_cache_size: int = 512 << 20
    metadata_ttl: float = 10.0
    uid: int | None = None
    gid: int | None = None
    file_mode: int = 0o644
    dir_mode: int = 0o755
    allow_other: bool = False
    log_file: str | None = None
    log_level: str = "INFO"
    profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    package: str | None = None
    sync_on_close: bool = False
    upload_attempts: int = 5
    s3_timeout: int = 10
    search_limit: int = 1000
    kernel_cache_entries: int = 65_536
    quilt_credentials: bool = False
    api_key_env: str | None = None  # the *name* of the variable: the key itself never enters argv or a file

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> MountOptions:
        return cls(**json.loads(text))


def create_log_file(log_file: str) -> None:
    """The log names keys and paths: a new log file (and a new log directory) is private to the user."""
    os.makedirs(os.path.dirname(log_file), mode=0o700, exist_ok=True)
    os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))


def _setup_logging(log_file: str, level: str, also_stderr: bool) -> None:
    create_log_file(log_file)
    handlers: list[logging.Handler] = [logging.FileHandler(log_file)]
    if also_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    logging.getLogger("mfusepy").setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Signal:
    """The daemon's side of the ready pipe (or nothing when running in the foreground)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self._lock = threading.Lock()

    def send(self, message: str) -> None:
        """The final word: READY or ERROR: <reason>."""
        with self._lock:
            if self.fd is None:
                return
            try:
                os.write(self.fd, (message.replace("\n", " ") + "\n").encode())
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """While the body runs, tell the parent every few seconds that the daemon is still preparing (indexing
        a large package revision before mounting it): the parent waits as long as these keep coming."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(WORKING_INTERVAL):
                with self._lock:
                    if self.fd is None:
                        return
                    try:
                        os.write(self.fd, WORKING + b"\n")
                    except OSError:
                        return

        thread = threading.Thread(target=beat, name="working", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()


def run_mount(options: MountOptions, ready_fd: int | None = None) -> int:
    """Mount and serve until unmounted.  Returns the process exit status."""
    signal = _Signal(ready_fd)
    log_file = options.log_file or default_log_file(os.path.abspath(options.mountpoint))
    _setup_logging(log_file, options.log_level, also_stderr=ready_fd is None)
    try:
        return _serve(options, log_file, signal)
    except UserError as exc:
        log.error("%s", exc)
        signal.send(f"ERROR: {exc}")
        return 1
    except Exception as exc:  # a bug: keep the traceback in the log, one line for the user
        log.exception("mount failed")
        signal.send(f"ERROR: mount failed: {exc} (details in {log_file})")
        return 1


def _bound_malloc() -> None:
    """Keep freed buffers from inflating RSS.  Upload parts and whole small files (up to 8 MiB) come and go
    all the time; with glibc's default dynamic mmap threshold they soon land in per-thread heaps that never
    shrink, and RSS drifts far above the cache budget (measured: 371 MiB instead of ~210 under the soak
    test's load).  A fixed 4 MiB threshold keeps those in mmaps, returned when freed, while the 1 MiB
    cache blocks stay in the heap (an mmap per block costs cold reads ~15%).  A fixed threshold also fixes
    the trim threshold, at 128 KiB unless set: every freed read buffer then handed its pages back and the
    next one faulted them in again (measured: ~180 page faults per random 4 KiB-1 MiB read, ~0.3 ms of
    CPU per read; with 8 MiB ~45 faults remain)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    libc.mallopt(M_MMAP_THRESHOLD, 4 << 20)
    libc.mallopt(M_ARENA_MAX, 4)
    libc.mallopt(M_TRIM_THRESHOLD, 8 << 20)


def _serve(options: MountOptions, log_file: str, signal: _Signal) -> int:
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    _bound_malloc()
    from quiltmount import mountpoint as mp
    from quiltmount.fs.binding import FUSE, CallCounts, KernelCacheTrim  # loads libfuse: only when mounting
    from quiltmount.fs.blockcache import BlockCache, DiskTier
    from quiltmount.fs.handles import FileOpener
    from quiltmount.fs.operations import AttrPolicy, MountOperations
    from quiltmount.fs.readahead import BlockFetcher
    from quiltmount.fs.tree import ttl_for_kernel
    from quiltmount.storage import parse_source
    from quiltmount.storage.stores import StoreSet

    mp.check_environment()
    _use_api_key(options.api_key_env)
    source = parse_source(options.source)
    if options.package:
        if source.package:
            raise UserError("give the package either in the source URI or with --package, not both")
        source = dataclasses.replace(source, package=options.package)
    mountpoint = mp.prepare_mountpoint(options.mountpoint)
    stores = StoreSet(profile=options.profile, region=options.region, endpoint_url=options.endpoint_url,
                      timeout=options.s3_timeout, session=_stack_session() if options.quilt_credentials else None)
    store = stores.bucket(source.location) if source.scheme == "s3" else stores.directory(source.location)
    store.check_access()

    cache_dir = options.cache_dir or default_cache_dir(source.url)
    make_private_dir(cache_dir)
    with signal.working():
        tree, writes, packages, read_only, immutable = _build_tree(source, store, stores, cache_dir, options)
    disk = DiskTier(os.path.join(cache_dir, "blocks"), options.disk_cache_size) if options.disk_cache_size else None
    # A quarter of the memory budget for read-ahead in flight, the rest for cached blocks.
    prefetch_budget = max(options.memory_cache_size // 4, 8 << 20)
    cache = BlockCache(options.memory_cache_size - prefetch_budget, disk)
    fetcher = BlockFetcher(cache, prefetch_budget=prefetch_budget)
    attrs = AttrPolicy(uid=os.geteuid() if options.uid is None else options.uid,
                       gid=os.getegid() if options.gid is None else options.gid,
                       file_mode=options.file_mode, dir_mode=options.dir_mode)
    started = time.time()
    calls = CallCounts()
    trim = KernelCacheTrim(options.kernel_cache_entries) if options.kernel_cache_entries else None

    def record(ops: MountOperations) -> dict[str, Any]:
        uploads = writes.stats() if writes is not None else {"pending_uploads": 0}
        return {"pid": os.getpid(), "version": __version__, "source": source.url, "mountpoint": mountpoint,
                "log_file": log_file, "cache_dir": cache_dir, "started_at": started,
                "read_only": read_only, "rss_bytes": _rss_bytes(), "open_files": ops.open_handles(),
                "cache": cache.stats(), "read_ahead": fetcher.stats(), "requests": stores.stats.snapshot(),
                "fuse_calls": calls.snapshot(), "kernel_cache_trims": trim.trims if trim is not None else 0,
                "indexes": packages.index_stats(),
                **uploads}

    stop = threading.Event()

    def after_init(ops: MountOperations) -> None:
        def wait_until_live() -> None:
            deadline = time.monotonic() + READY_TIMEOUT
            while mountpoint not in mp.mounted_filesystems():
                if time.monotonic() > deadline:
                    signal.send("ERROR: the kernel did not show the mount in time")
                    return
                time.sleep(0.01)
            if mp.raise_kernel_readahead(mountpoint):
                log.debug("kernel read-ahead raised to 1 MiB")
            state.write_record(mountpoint, record(ops))
            # What exists now (modules, boto3's service models, the tree) lives as long as the mount: out of
            # the collector's reach, so that full collections, which botocore's garbage triggers every few
            # requests, scan only what came since.
            gc.freeze()
            log.info("mounted %s at %s (cache %s)", source.url, mountpoint, cache_dir)
            signal.send("READY")
            while not stop.wait(STATUS_INTERVAL):
                try:
                    state.write_record(mountpoint, record(ops))
                except OSError as exc:
                    log.warning("cannot write status record: %s", exc)

        threading.Thread(target=wait_until_live, name="status", daemon=True).start()

    # An immutable package revision can be cached by the kernel for as long as the mount lives.
    kernel_ttl = IMMUTABLE_KERNEL_TTL if immutable else ttl_for_kernel(options.metadata_ttl)
    files = FileOpener(tree, fetcher, max_read_window=prefetch_budget // 2)
    operations = MountOperations(tree, files, attrs, on_init=after_init)
    fuse_options: dict[str, Any] = {
        "fsname": f"quiltmount:{source.url}", "subtype": "quiltmount", "default_permissions": True,
        "attr_timeout": kernel_ttl, "entry_timeout": kernel_ttl, "negative_timeout": kernel_ttl,
        "max_read": 1 << 20, "ro": read_only, ("kernel_cache" if immutable else "auto_cache"): True,
    }
    if options.allow_other:
        fuse_options["allow_other"] = True
    log.info("quiltmount %s mounting %s at %s (log %s)", __version__, source.url, mountpoint, log_file)
    try:
        FUSE(operations, mountpoint, calls=calls, trim=trim, foreground=True, nothreads=False, **fuse_options)
    except RuntimeError as exc:
        raise UserError(f"cannot mount {mountpoint}: libfuse error {exc} (details in {log_file})") from None
    finally:
        if writes is not None:
            _finish_uploads(writes, mountpoint)
        stop.set()
        state.remove_record(mountpoint)
        files.close()
        fetcher.close()
        tree.close()
        stores.close()
    log.info("unmounted %s", mountpoint)
    return 0


def _finish_uploads(writes: Any, mountpoint: str) -> None:
    """After unmount: wait for every staged upload, then leave `umount` a report of what is still staged."""
    pending = writes.uploader.pending()
    if pending:
        log.info("unmounted; finishing %d pending upload(s)", pending)
    writes.uploader.drain()
    stats = writes.stats()
    state.write_report(mountpoint, {"failed_uploads": stats["failed_uploads"], "stranded": stats["stranded"]})
    for failure in stats["failed_uploads"]:
        log.error("not uploaded: %s (staged at %s): %s", failure["key"], failure["staged"], failure["error"])


def _build_tree(source: Any, store: Any, stores: Any, cache_dir: str,
                options: MountOptions) -> tuple[Any, Any, Any, bool, bool]:
    """The mount's root tree, its write-back layer (None when read-only), its `.packages` view, whether the
    mount is read-only, and whether it is immutable (one package revision)."""
    from quiltmount.fs.mounttree import MountTree
    from quiltmount.fs.packagetree import PackagesTree
    from quiltmount.fs.tree import BucketTree
    from quiltmount.packages.registry import Registry

    packages = PackagesTree(Registry(store, source.registry_url), stores, index_dir=index_dir(),
                            metadata_ttl=options.metadata_ttl)
    if source.package:
        return _revision_tree(packages, source.package), None, packages, True, True
    bucket = BucketTree(store, source.prefix, metadata_ttl=options.metadata_ttl)
    views = {".packages": packages, ".search": _search_view(source, options)}
    if options.read_only:
        return MountTree(bucket, views), None, packages, True, False
    from quiltmount.fs.staging import StagingArea
    from quiltmount.fs.writeback import WritableBucketTree

    writes = WritableBucketTree(bucket, StagingArea(os.path.join(cache_dir, "staging")),
                                sync_on_close=options.sync_on_close, upload_attempts=options.upload_attempts)
    writes.recover()
    return MountTree(writes, views), writes, packages, False, False


def _use_api_key(variable: str | None) -> None:
    """Catalog requests use the API key from the environment (`--api-key-env VAR` or QUILT_API_KEY)."""
    from quiltmount.auth import login_with_api_key_from_env

    try:
        if login_with_api_key_from_env(variable):
            log.info("catalog requests use the API key from $%s", variable or "QUILT_API_KEY")
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _stack_session() -> Any:
    """A boto3 session on the Quilt stack's AWS credentials, refreshed from the catalog before they expire."""
    from quiltmount.auth import get_boto3_session
    from quiltmount.catalog import QuiltException

    try:
        session = get_boto3_session(fallback=False)
    except QuiltException as exc:
        raise UserError(f"--quilt-credentials: {exc.message.rstrip('.')}: log in first with `quiltmount login`"
                        " (or `quilt3 login`)") from None
    log.info("S3 requests use the Quilt stack's credentials (refreshed from the catalog)")
    return session


def _search_view(source: Any, options: MountOptions) -> Any:
    """`.search/`: the catalog's search of the mounted bucket (`Bucket.search`'s indexes)."""
    from quiltmount.catalog import search_api
    from quiltmount.fs.searchtree import SearchTree

    if source.scheme != "s3":
        return SearchTree(None, bucket="", metadata_ttl=options.metadata_ttl,
                          unavailable="search needs a mount of an S3 bucket (s3://BUCKET); this is a local directory")
    bucket = source.location

    def search(query: str | dict, limit: int) -> dict:
        return search_api(query, index=f"{bucket},{bucket}_packages", limit=limit, timeout=SEARCH_TIMEOUT)

    return SearchTree(search, bucket=bucket, key_prefix=source.prefix, limit=options.search_limit,
                      metadata_ttl=options.metadata_ttl)


def _revision_tree(packages: Any, spec: str) -> Any:
    """`ns/name` (latest), `ns/name@<hash or prefix>` or `ns/name:<pointer>` -> that revision's tree."""
    from quiltmount.errors import NotFound, StorageError
    from quiltmount.packages.registry import LATEST, is_valid_package_name

    if "@" in spec:
        name, _, top_hash = spec.partition("@")
        pointer = None
    else:
        name, _, pointer = spec.partition(":")
        pointer = pointer or LATEST
    if not is_valid_package_name(name):
        raise UserError(f"invalid package name: {name!r} (expected namespace/name)")
    try:
        if pointer is not None:
            versions = packages.versions(name)
            if pointer not in versions:
                raise UserError(f"package {name} has no pointer {pointer!r}" if versions
                                else f"package not found: {name} in {packages.registry.url}")
            top_hash = versions[pointer]
        return packages.revision(name, top_hash)
    except NotFound as exc:
        raise UserError(f"cannot mount {spec}: {exc}") from None
    except StorageError as exc:
        raise UserError(f"cannot mount {spec}: {exc}") from None


def start_background(options: MountOptions) -> int:
    """Start the daemon in a new session; return once the mount is live (0) or has failed (1)."""
    read_fd, write_fd = os.pipe()
    log_file = options.log_file or default_log_file(os.path.abspath(options.mountpoint))
    create_log_file(log_file)
    with open(log_file, "ab") as stderr_sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "quiltmount.daemon", options.to_json(), str(write_fd)],
            pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr_sink,
            start_new_session=True, cwd="/", close_fds=True,
        )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        text = await_word(pipe, READY_TIMEOUT)
    if text is None:
        process.kill()
        raise UserError(f"the mount did not become ready within {READY_TIMEOUT:.0f} s (log: {log_file})")
    if text == "READY":
        return process.pid
    if text.startswith("ERROR: "):
        raise UserError(text[len("ERROR: "):])
    code = process.wait(timeout=10)
    raise UserError(f"the mount daemon exited with status {code} before mounting (log: {log_file})")


def await_word(pipe: IO[bytes], timeout: float) -> str | None:
    """The daemon's final word on the ready pipe ('' if it closed the pipe without one), or None once it has
    been silent for `timeout` seconds; each WORKING beat starts the wait again."""
    message = b""
    deadline = time.monotonic() + timeout
    while not message.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([pipe], [], [], remaining)[0]:
            return None
        chunk = os.read(pipe.fileno(), 4096)
        if not chunk:
            break
        message += chunk
        while message.startswith(WORKING + b"\n"):
            message = message[len(WORKING) + 1:]
            deadline = time.monotonic() + timeout
    return message.decode(errors="replace").strip()


def main(argv: list[str]) -> int:
    options = MountOptions.from_json(argv[0])
    return run_mount(options, int(argv[1]) if len(argv) > 1 else None)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
