"""Where quiltmount keeps caches, logs and the table of live mounts (XDG directories)."""

from __future__ import annotations

import hashlib
import os
import re
import stat

import platformdirs

APP = "quiltmount"


def cache_root() -> str:
    return platformdirs.user_cache_dir(APP)


def state_root() -> str:
    return platformdirs.user_state_dir(APP)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def slug(text: str, length: int = 40) -> str:
    """A file-name-safe, readable and unique name for a source or mountpoint: the end of `text` (where paths
    differ), cut at a separator so no word is cut in two, then a digest of the whole text."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
    if len(readable) > length:
        tail = readable[-length:]
        cut = re.search(r"[_.-]", tail[:-1])
        readable = tail[cut.end():] if cut and readable[-length - 1] not in "_.-" else tail
    return f"{readable.strip('_') or 'root'}-{_digest(text)}"


def _legacy_slug(text: str, length: int = 40) -> str:
    """The name earlier versions gave a source (its last 40 characters, cut anywhere), to find their caches."""
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', text).strip('_')[-length:] or 'root'}-{_digest(text)}"


def default_cache_dir(source_url: str, endpoint_url: str | None = None) -> str:
    """Stable per source, so a remount finds what a previous daemon of the same source left; and per
    S3-compatible endpoint (`endpoint_url`), whose bucket names are not AWS's: staged writes left for a bucket
    of one server must never be uploaded to its namesake on another.  (AWS's keep the name they had before
    endpoints were told apart, so that their staged writes are still found.)  A directory under the old name is
    renamed to the new one: it may hold staged writes a crash left to upload."""
    if endpoint_url:
        return os.path.join(cache_root(), slug(f"{endpoint_url} {source_url}"))
    path = os.path.join(cache_root(), slug(source_url))
    legacy = os.path.join(cache_root(), _legacy_slug(source_url))
    if legacy != path and os.path.isdir(legacy) and not os.path.lexists(path):
        try:
            os.rename(legacy, path)
        except OSError:
            return legacy  # e.g. renamed by a concurrent mount of the same source, or a read-only cache
    return path


def disk_cache_dir() -> str:
    """The block cache shared by every mount of the user: `$QUILTMOUNT_DISK_CACHE_DIR`, else `blocks/` under
    the cache root (no per-source directory is named so: theirs end in a digest)."""
    return os.environ.get("QUILTMOUNT_DISK_CACHE_DIR") or os.path.join(cache_root(), "blocks")


def index_dir() -> str:
    """Package revision indexes: one per (registry, top hash), shared by every mount of the user."""
    return os.path.join(cache_root(), "indexes")


def default_log_file(mountpoint: str) -> str:
    return os.path.join(state_root(), "logs", slug(mountpoint) + ".log")


def mounts_dir() -> str:
    return os.path.join(state_root(), "mounts")


def make_private_dir(path: str) -> None:
    """Create directory `path` (and its parents) if needed and make it 0700, even if it already existed
    with a wider mode: caches and staging areas hold user data."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if stat.S_IMODE(os.stat(path).st_mode) != 0o700:
        os.chmod(path, 0o700)
