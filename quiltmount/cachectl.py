"""`quiltmount cache status|prune|verify|clear`: the disk cache shared by the user's mounts, from outside them.

No FUSE here and light imports (the command line starts fast).  Daemons may be using the cache meanwhile:
SQLite serialises the index, and nothing here removes a block a daemon is still writing (`DiskCache.verify`
and `remove_orphans` leave young unindexed files alone).  A cache directory that does not exist (no
`index.sqlite`) is reported empty and never created.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from quiltmount import state
from quiltmount.errors import UserError
from quiltmount.units import BLOCK_SIZE, format_size

if TYPE_CHECKING:
    from quiltmount.cache.disk import DiskCache

KIND_NAMES = {"object": "bucket objects", "package": "package entries"}


def exists(root: str) -> bool:
    """True if there is a disk cache at `root` (its index)."""
    return os.path.isfile(os.path.join(root, "index.sqlite"))


@contextlib.contextmanager
def _opened(root: str) -> Iterator[DiskCache]:
    """The cache at `root`, closed afterwards; its problems as one-line errors."""
    from quiltmount.cache.disk import DiskCache

    try:
        cache = DiskCache(root)
    except (OSError, sqlite3.Error) as exc:
        raise UserError(f"cannot open the disk cache at {root}: {exc}") from None
    try:
        yield cache
    except sqlite3.Error as exc:
        raise UserError(f"disk cache at {root}: {exc}") from None
    finally:
        with contextlib.suppress(sqlite3.Error):
            cache.close()


def _mounts_using(root: str) -> list[dict[str, Any]]:
    """Live mounts whose disk cache is `root`."""
    real = os.path.realpath(root)
    mounts = []
    for record in state.live_records():
        cache = record.get("cache") or {}
        if cache.get("disk_dir") and os.path.realpath(cache["disk_dir"]) == real:
            mounts.append({"mountpoint": record.get("mountpoint"), "source": record.get("source"),
                           "pid": record.get("pid"), "disk_enabled": cache.get("disk_enabled", True),
                           "disk_hits": cache.get("disk_hits", 0), "disk_misses": cache.get("disk_misses", 0)})
    return mounts


def status(root: str) -> dict[str, Any]:
    """What the cache at `root` holds: bytes used against the cap, blocks, files (distinct keys), and per
    source and kind (`object`: bucket objects, `package`: package entries by content hash); the live mounts
    using it.  `capacity` is None while no cache exists there."""
    report: dict[str, Any] = {"dir": root, "exists": exists(root), "used": 0, "capacity": None, "blocks": 0,
                              "files": 0, "sources": []}
    if report["exists"]:
        with _opened(root) as cache:
            report["used"], report["capacity"] = cache.used, cache.capacity
            report["blocks"], report["files"] = cache.counts()
            report["sources"] = cache.usage()
    report["mounts"] = _mounts_using(root)
    return report


def prune(root: str, to: int | None = None) -> dict[str, Any] | None:
    """Remove least recently used blocks until at most `to` bytes are cached (default: the cap, for a cache
    a mount left over a cap lowered since); None if there is no cache at `root`."""
    if not exists(root):
        return None
    with _opened(root) as cache:
        target = cache.capacity if to is None else to
        blocks, freed = cache.prune(target)
        return {"dir": root, "to": target, "removed_blocks": blocks, "removed_bytes": freed, "used": cache.used,
                "capacity": cache.capacity}


def clear(root: str) -> dict[str, Any] | None:
    """Remove every cached block, and files left over by crashes (not those being written); None if there
    is no cache at `root`.  Blocks live mounts cache meanwhile stay."""
    if not exists(root):
        return None
    with _opened(root) as cache:
        blocks, freed = cache.clear()
        orphans = cache.remove_orphans()
        return {"dir": root, "removed_blocks": blocks, "removed_bytes": freed, "orphans": orphans,
                "used": cache.used, "capacity": cache.capacity}


def verify(root: str, progress: Callable[[int, int], object] | None = None) -> dict[str, Any] | None:
    """Check every cached block against its size and CRC-32, and the whole content of every package entry
    whose blocks are all cached against its hash; remove what fails, and orphan files.  None if there is no
    cache at `root`.  `progress(blocks done, blocks in all)`."""
    if not exists(root):
        return None
    with _opened(root) as cache:
        counts = cache.verify(content_check=content_check, progress=progress)
        return {"dir": root, **counts, "used": cache.used, "capacity": cache.capacity}


class _HashCheck:
    """Hashes a key's blocks as they are checked; compares with the hash in the key."""

    def __init__(self, hash_type: str, expected: str, size: int, complete: bool) -> None:
        from quiltmount.packages.manifest import make_hasher

        self._hasher = make_hasher(hash_type, size)
        self._expected = expected
        self._complete = complete

    def update(self, data: bytes) -> None:
        self._hasher.update(data)

    def result(self) -> bool | None:
        if self._hasher.value() == self._expected:
            return True
        # A last block of exactly BLOCK_SIZE may be followed by blocks not cached: then nothing is known.
        return False if self._complete else None


def content_check(key: str, blocks: list[tuple[int, int]]) -> _HashCheck | None:
    """A hash check of `key` (`hash:TYPE:VALUE`) if its blocks [(index, size), ...] are all there: blocks
    0..n without a gap, all of BLOCK_SIZE but the last.  A last block shorter than BLOCK_SIZE ends the file
    for sure (a mismatch is damage); a full one may not (only a match tells)."""
    from quiltmount.packages.manifest import SUPPORTED_HASH_TYPES

    prefix, _, rest = key.partition(":")
    hash_type, separator, expected = rest.partition(":")
    if prefix != "hash" or not separator or hash_type not in SUPPORTED_HASH_TYPES or not blocks:
        return None
    if [index for index, _ in blocks] != list(range(len(blocks))):
        return None
    sizes = [size for _, size in blocks]
    if any(size != BLOCK_SIZE for size in sizes[:-1]) or not 0 < sizes[-1] <= BLOCK_SIZE:
        return None
    return _HashCheck(hash_type, expected, sum(sizes), complete=sizes[-1] < BLOCK_SIZE)


# -- text for people --------------------------------------------------------------------------------------

def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def format_status(report: dict[str, Any]) -> str:
    lines = [f"disk cache {report['dir']}"]
    if not report["exists"]:
        lines.append("  used:      nothing (empty: no cache there yet)")
    else:
        used, capacity = report["used"], report["capacity"]
        share = f" ({100 * used / capacity:.0f}%)" if capacity else ""
        over = "; over it: `quiltmount cache prune` brings it within" if used > capacity else ""
        lines.append(f"  used:      {format_size(used)} of {format_size(capacity)} cap{share}{over}; "
                     f"{_plural(report['blocks'], 'block')}, {_plural(report['files'], 'file')}")
        rows = [(row["source"], KIND_NAMES.get(row["kind"], row["kind"]), format_size(row["bytes"]),
                 _plural(row["blocks"], "block"), _plural(row["files"], "file")) for row in report["sources"]]
        widths = [max((len(row[column]) for row in rows), default=0) for column in range(5)]
        for number, row in enumerate(rows):
            label = "  cached:    " if number == 0 else " " * 13
            lines.append(f"{label}{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  "
                         f"{row[3]:>{widths[3]}}, {row[4]}")
    if not report["mounts"]:
        lines.append("  mounts:    none live")
    for number, mount in enumerate(report["mounts"]):
        label = "  mounts:    " if number == 0 else " " * 13
        off = "" if mount.get("disk_enabled", True) else ", turned off (see its log)"
        lines.append(f"{label}{mount['mountpoint']} ({mount['source']}, pid {mount['pid']}: "
                     f"{mount['disk_hits']} hits, {mount['disk_misses']} misses{off})")
    return "\n".join(lines)


def format_prune(report: dict[str, Any] | None, root: str) -> str:
    if report is None:
        return f"no disk cache at {root}: nothing to prune"
    after = f"{format_size(report['used'])} used of {format_size(report['capacity'])} cap"
    if not report["removed_blocks"]:
        return f"nothing to prune in {root}: {after}, within {format_size(report['to'])}"
    return (f"pruned {root} to {format_size(report['to'])}: removed {_plural(report['removed_blocks'], 'block')} "
            f"({format_size(report['removed_bytes'])}); {after}")


def format_clear(report: dict[str, Any] | None, root: str) -> str:
    if report is None:
        return f"no disk cache at {root}: nothing to clear"
    orphans = f" and {_plural(report['orphans'], 'leftover file')}" if report["orphans"] else ""
    return (f"cleared {root}: removed {_plural(report['removed_blocks'], 'block')} "
            f"({format_size(report['removed_bytes'])}){orphans}")


def format_verify(report: dict[str, Any] | None, root: str) -> str:
    if report is None:
        return f"no disk cache at {root}: nothing to verify"
    return (f"verified {root}: {_plural(report['checked'], 'block')} checked ({format_size(report['bytes'])}), "
            f"{report['damaged']} damaged (removed); {_plural(report['hashed'], 'file')} hash-checked, "
            f"{report['failed']} failed (removed); {_plural(report['orphans'], 'orphan file')} removed")
