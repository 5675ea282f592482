"""mfusepy's `FUSE`, with directory listings that carry attributes (readdirplus) on libfuse3.

The kernel asks for READDIRPLUS on a directory's first listing (and after lookups in it).  mfusepy answers
it like a plain READDIR, name and file type only, so `ls -l` or `find -size` then cost one LOOKUP round trip
through the kernel, libfuse and Python per entry, although the listing already knew every size and mtime.
Here an entry with full attributes goes to the kernel with them (`FUSE_FILL_DIR_PLUS`): libfuse registers
the node and the kernel caches the entry and its attributes for the mount's timeouts, exactly as if it had
been looked up.

Every libfuse worker thread keeps one Python thread state for its whole life.  A ctypes callback from a
thread Python does not know creates a thread state on entry and destroys it on return, which measured about
half of the cost of a trivial operation (getxattr: 66 us per call, 31 us with the thread state kept).
libfuse 3 keeps at most `max_threads` (10) workers and never ends an idle one while no more than
`max_idle_threads` are idle, which is set to the same 10, so that is a bounded handful of thread states (with
libfuse 2, whose workers come and go, states are not kept).  (libfuse 3.14's default for it, "unlimited",
also made it print "Ignoring invalid max threads value 4294967295" at every mount: its bug #1003.)

It also answers getxattr of the kernel's namespaces (`security.`, `system.`, `trusted.`) itself: `ls -l`
asks for two of those per file, quiltmount never defines any, and the answer (no such attribute) then costs
no path decoding, lookup or exception in Python.

Entries are passed with their positions (libfuse's "offset mode"): libfuse 3.14 drops the attributes of
entries given without one.  `Operations.readdir_with_offset(path, offset, fh)` yields (name, attributes,
position after it) from `offset` on; attributes with an `st_size` count as full.

And it keeps the kernel's cache of the mount's inodes bounded (`KernelCacheTrim`): libfuse keeps a node
(~170 bytes) for every inode the kernel holds, and the kernel holds them until memory runs short, so a
`find` over a million-entry package revision left 170 MiB in the daemon for good.  It also tells the kernel
when a file changed under the mount (`KernelInvalidation`), so that it drops the size and pages it cached.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import queue
import threading
from collections import Counter

import mfusepy

#: `fuse_readdir_flags`: the kernel asked for READDIRPLUS.
READDIR_PLUS = 1 << 0
#: `fuse_fill_dir_flags`: this entry's attributes are complete.
FILL_DIR_PLUS = 1 << 1
#: Keep the thread states of libfuse's workers (see the module docstring): libfuse 3 only, whose workers
#: live as long as the mount; libfuse 2 ends idle workers beyond 10 and starts new ones under load.
KEEP_THREAD_STATES = mfusepy.fuse_version_major >= 3
#: libfuse 3's `max_threads` default: no more workers than this, and as many may stay idle (none ever ends).
LIBFUSE_WORKERS = 10
#: Whether this OS thread holds its Python thread state for good.
_kept = threading.local()

#: Extended-attribute namespaces of the kernel and security modules: never names of quiltmount's.
KERNEL_XATTR_NAMESPACES = (b"security.", b"system.", b"trusted.")
#: libfuse's node id of the mount's root.
FUSE_ROOT_ID = 1

log = logging.getLogger(__name__)


class _KernelNotices:
    """Notifications to the kernel, queued for a thread of their own: one a libfuse worker sends while it
    serves a request on the same inode can deadlock (libfuse's documentation).  They go through a libfuse
    object (the target) that `start` takes in a libfuse callback and `stop` drops, after which none is sent.
    libfuse 3 only."""

    def __init__(self, thread_name: str) -> None:
        self._thread_name = thread_name
        self._lock = threading.Lock()
        self._target: int | None = None
        self._pending: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def start(self) -> None:
        """In a libfuse callback (its context names the target): begin."""
        raise NotImplementedError

    def _begin(self, target: int) -> None:
        with self._lock:
            self._target = target
        threading.Thread(target=self._run, name=self._thread_name, daemon=True).start()

    def _run(self) -> None:
        while (item := self._pending.get()) is not None:
            with self._lock:
                if self._target is None:
                    return
                self._send(self._target, item)

    def _send(self, target: int, item: bytes) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Before libfuse ends the session: no notification after this returns."""
        with self._lock:
            self._target = None
        self._pending.put(None)


class KernelCacheTrim(_KernelNotices):
    """Drops a subtree of the mount from the kernel's cache once `limit` entries under it went to the kernel.

    Every entry the kernel learns (a lookup, or a listing with attributes) becomes an inode it keeps until
    memory runs short, and libfuse keeps a node for each: a daemon's memory would grow with every entry ever
    walked.  Entries are counted per name at the mount's root (`.packages`, a top-level directory); when one
    has had `limit` since its last trim, the kernel is told that name is stale
    (`fuse_lowlevel_notify_inval_entry`), which drops its unused dentries and inodes: the kernel forgets
    them, and libfuse frees its nodes.  Open files and working directories stay; the next access looks the
    names up again (answered from the daemon's caches and indexes).  The only names libfuse's high-level API
    lets us address are those at the root (node id 1), hence the per-root-name granularity.  libfuse 3 only.
    """

    def __init__(self, limit: int) -> None:
        super().__init__("kernel-trim")
        self.limit = limit
        self.trims = 0
        self._counts: Counter[bytes] = Counter()

    def start(self) -> None:
        libfuse = mfusepy._libfuse
        libfuse.fuse_get_session.restype = ctypes.c_void_p
        libfuse.fuse_get_session.argtypes = [ctypes.c_void_p]
        libfuse.fuse_lowlevel_notify_inval_entry.restype = ctypes.c_int
        libfuse.fuse_lowlevel_notify_inval_entry.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p,
                                                             ctypes.c_size_t]
        self._begin(libfuse.fuse_get_session(libfuse.fuse_get_context().contents.fuse))

    def handed(self, path: bytes, count: int) -> None:
        """`count` entries under `path` (b'/top/...') went to the kernel."""
        top = path.split(b"/", 2)[1] if path.startswith(b"/") else b""
        if not top or self._target is None:
            return
        with self._lock:
            self._counts[top] += count
            if self._counts[top] < self.limit:
                return
            del self._counts[top]
        self._pending.put(top)

    def _send(self, session: int, name: bytes) -> None:
        result = mfusepy._libfuse.fuse_lowlevel_notify_inval_entry(session, FUSE_ROOT_ID, name, len(name))
        if result == 0:
            self.trims += 1
        log.debug("kernel cache of %r dropped (%d)", "/" + name.decode(errors="replace"), result)


class KernelInvalidation(_KernelNotices):
    """Tells the kernel that what it caches of a file, attributes (its size) and pages, is stale
    (`fuse_invalidate_path`: libfuse finds the file's node by path, then `fuse_lowlevel_notify_inval_inode`).

    `invalidate` sends it at once, for an open that found the file replaced: the kernel then asks for its
    size again before it reads, instead of stopping at the old one.  That is safe from an open, which holds no
    page of the file; a read or a write does, so `invalidate_soon` has the notification thread send it.  Paths
    are relative to the mount's root.  Until `start` (and with libfuse 2) both do nothing.
    """

    def __init__(self) -> None:
        super().__init__("kernel-invalidate")

    def start(self) -> None:
        libfuse = mfusepy._libfuse
        libfuse.fuse_invalidate_path.restype = ctypes.c_int
        libfuse.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._begin(libfuse.fuse_get_context().contents.fuse)

    def invalidate(self, path: str) -> None:
        """At once, from an open of `path`.  (The target needs no lock while used: libfuse's workers, the only
        callers, have all returned before `stop` is called.)"""
        with self._lock:
            target = self._target
        if target is not None:
            self._send(target, _libfuse_path(path))

    def invalidate_soon(self, path: str) -> None:
        """Shortly, from the notification thread: from anywhere."""
        self._pending.put(_libfuse_path(path))

    def _send(self, fuse: int, path: bytes) -> None:
        result = mfusepy._libfuse.fuse_invalidate_path(fuse, path)
        # -ENOENT: neither libfuse nor the kernel holds the file (nothing cached to drop).
        log.debug("kernel cache of %r invalidated (%d)", os.fsdecode(path), result)


def _libfuse_path(path: str) -> bytes:
    """A path relative to the mount's root as libfuse spells it: as mfusepy decodes them, the other way."""
    return ("/" + path).encode("utf-8", "surrogateescape")


def escape_option_value(value: str) -> str:
    """`value` as libfuse's `-o` list holds it: a comma would end the option, a backslash escape the next
    character."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


class CallCounts:
    """How many times the kernel called each operation (`status` shows them: `ls -l` of N files should
    cost a readdir or two, not N lookups)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, operation: str) -> None:
        with self._lock:
            self._counts[operation] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class FUSE(mfusepy.FUSE):
    """`mfusepy.FUSE` whose libfuse3 listings carry the attributes `readdir_with_offset` gives.

    `calls`, if given, counts the operations; `trim`, if given, keeps the kernel's cache bounded, and
    `invalidation`, if given, sends what it is asked to (both libfuse 3 only); the other arguments are
    mfusepy's (it mounts and serves in the constructor).
    """

    def __init__(self, operations, mountpoint: str, *, calls: CallCounts | None = None,
                 trim: KernelCacheTrim | None = None, invalidation: KernelInvalidation | None = None,
                 **options) -> None:
        self._calls = calls
        libfuse3 = mfusepy.fuse_version_major >= 3
        self._notices = [notices for notices in (trim, invalidation) if notices is not None and libfuse3]
        self._trim = trim if libfuse3 else None
        if libfuse3:
            options.setdefault("max_idle_threads", LIBFUSE_WORKERS)
        super().__init__(operations, mountpoint, **options)

    def init_fuse_3(self, conn, config) -> None:
        for notices in self._notices:
            notices.start()
        return super().init_fuse_3(conn, config)

    def destroy(self, private_data) -> None:
        for notices in self._notices:
            notices.stop()
        return super().destroy(private_data)

    def open(self, path: bytes, fip) -> int:
        """mfusepy's open; a handle the operations want read past the kernel's page cache gets `direct_io`."""
        result = super().open(path, fip)
        fi = fip.contents
        if self.operations.bypasses_kernel_cache(fi.fh):
            fi.direct_io = 1
        return result

    def getattr_fuse_3(self, path: bytes, buf, fip):
        if self._trim is not None and path is not None:
            self._trim.handed(path, 1)
        return super().getattr_fuse_3(path, buf, fip)

    def _wrapper(self, func, *args, **kwargs):  # every callback from libfuse comes through here
        if KEEP_THREAD_STATES and not getattr(_kept, "state", False):
            ctypes.pythonapi.PyGILState_Ensure()  # one more reference, never released: the state outlives the call
            _kept.state = True
        if self._calls is not None:
            self._calls.add(func.__name__.removesuffix("_fuse_3").removesuffix("_fuse_2"))
        return super()._wrapper(func, *args, **kwargs)

    def getxattr(self, path: bytes, name: bytes, value, size: int, *args) -> int:
        if name.startswith(KERNEL_XATTR_NAMESPACES):
            return -errno.ENODATA
        return super().getxattr(path, name, value, size, *args)

    def readdir_fuse_3(self, path: bytes | None, buf, filler, offset: int, fip, flags: int) -> int:
        plus = bool(flags & READDIR_PLUS)
        entries = self.operations.readdir_with_offset(
            None if path is None else path.decode(self.encoding, self.errors), offset, fip.contents.fh)
        built: dict[int, tuple[dict, mfusepy.c_stat]] = {}  # id(attrs) -> (attrs, its struct)
        with_attributes = 0
        for name, attrs, position in entries:
            known = built.get(id(attrs))
            if known is None:  # entries that share an attributes dict share a struct (filler copies it)
                st = mfusepy.c_stat()
                mfusepy.set_st_attrs(st, attrs, use_ns=self.use_ns)
                built[id(attrs)] = (attrs, st)
            else:
                st = known[1]
            fill = FILL_DIR_PLUS if plus and "st_size" in attrs else 0
            if filler(buf, name.encode(self.encoding, self.errors), st, position, fill) != 0:
                break  # the kernel's buffer is full: it asks again from the last position it got
            with_attributes += bool(fill)
        if self._trim is not None and with_attributes and path is not None:
            self._trim.handed(path, with_attributes)
        return 0
