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
libfuse 3 keeps at most `max_threads` (10) workers and, by default, never ends an idle one, so that is a
bounded handful of thread states (with libfuse 2, whose workers come and go, states are not kept).

It also answers getxattr of the kernel's namespaces (`security.`, `system.`, `trusted.`) itself: `ls -l`
asks for two of those per file, quiltmount never defines any, and the answer (no such attribute) then costs
no path decoding, lookup or exception in Python.

Entries are passed with their positions (libfuse's "offset mode"): libfuse 3.14 drops the attributes of
entries given without one.  `Operations.readdir_with_offset(path, offset, fh)` yields (name, attributes,
position after it) from `offset` on; attributes with an `st_size` count as full.
"""

from __future__ import annotations

import ctypes
import errno
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
#: Whether this OS thread holds its Python thread state for good.
_kept = threading.local()

#: Extended-attribute namespaces of the kernel and security modules: never names of quiltmount's.
KERNEL_XATTR_NAMESPACES = (b"security.", b"system.", b"trusted.")


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

    `calls`, if given, counts the operations; the other arguments are mfusepy's (it mounts and serves in
    the constructor).
    """

    def __init__(self, operations, mountpoint: str, *, calls: CallCounts | None = None, **options) -> None:
        self._calls = calls
        super().__init__(operations, mountpoint, **options)

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
        return 0
