"""Checks and actions on a mountpoint: validity, stale FUSE mounts, unmounting through fusermount (or umount(8)
for a mount that mount(8) made)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess

from quiltmount.errors import UserError

log = logging.getLogger(__name__)


def _unescape_mountinfo(field: str) -> str:
    return field.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")


def mounted_filesystems() -> dict[str, str]:
    """Mountpoint -> filesystem type of every mount this process can see."""
    result: dict[str, str] = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as file:
        for line in file:
            fields = line.split()
            separator = fields.index("-")
            result[_unescape_mountinfo(fields[4])] = fields[separator + 1]
    return result


def is_fuse_mount(path: str) -> bool:
    fstype = mounted_filesystems().get(os.path.abspath(path), "")
    return fstype.startswith("fuse")


#: Where fuse3 installs fusermount3, searched after PATH: mount(8) runs its helpers with no PATH at all.
FUSERMOUNT_DIRS = os.pathsep.join(("/usr/bin", "/bin", "/usr/local/bin"))


def fusermount_command() -> str:
    search = os.pathsep.join(filter(None, (os.environ.get("PATH"), FUSERMOUNT_DIRS)))
    for name in ("fusermount3", "fusermount"):
        found = shutil.which(name, path=search)
        if found:
            return found
    raise UserError("fusermount not found: install the Debian package 'fuse3' (apt-get install fuse3)")


#: Where libmount keeps what mount(8) knows of a mount beyond the kernel's table (helper, user options).
UTAB = "/run/mount/utab"


def in_utab(path: str, utab: str = UTAB) -> bool:
    """True if libmount keeps a line for the mount at `path` (mount(8) made it, e.g. from fstab)."""
    try:
        with open(utab, encoding="utf-8", errors="surrogateescape") as file:
            lines = file.read().splitlines()
    except OSError:
        return False
    return any(field.startswith("TARGET=") and _unescape_mountinfo(field[len("TARGET="):]) == path
               for line in lines for field in line.split())


def unmount(path: str, *, lazy: bool = False) -> None:
    """Ask the kernel to unmount a FUSE mountpoint; raise UserError with the unmounter's reason on failure.

    A mount that mount(8) made is unmounted by umount(8) when we may (root): it also drops the line libmount
    keeps for it in /run/mount/utab, which fusermount leaves behind (a later mount at the same place would
    inherit its options in `findmnt` and systemd).  Other mounts go through fusermount."""
    umount8 = shutil.which("umount", path=FUSERMOUNT_DIRS) if os.geteuid() == 0 and in_utab(path) else None
    if umount8:
        args = [umount8] + (["-l"] if lazy else []) + [path]
    else:
        args = [fusermount_command(), "-u"] + (["-z"] if lazy else []) + [path]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "unknown error"
        raise UserError(f"cannot unmount {path}: {reason}")


def check_environment() -> None:
    """FUSE must be usable on this machine."""
    if not os.path.exists("/dev/fuse"):
        raise UserError("/dev/fuse not found: load the fuse kernel module or run the container with --device /dev/fuse")
    fusermount_command()


#: The file system systemd (`x-systemd.automount`, `.automount` units) and automount(8) keep at a mountpoint,
#: to mount the real one on top at first access.
AUTOFS = "autofs"


def prepare_mountpoint(path: str) -> str:
    """Validate `path` as an empty directory without a FUSE mount on it; clean a stale FUSE mount left by a
    dead daemon.  Another file system there is mounted over, as libfuse does: systemd's autofs trigger above
    all.  Returns the absolute path."""
    path = os.path.abspath(path)
    try:
        os.stat(path)
        if is_fuse_mount(path):
            os.statvfs(path)  # never answered from the kernel's caches: a dead daemon shows here
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            log.warning("%r: stale FUSE mount (transport endpoint is not connected); lazily unmounting it", path)
            unmount(path, lazy=True)
        elif exc.errno == errno.ENOENT:
            raise UserError(f"mountpoint does not exist: {path}") from None
        else:
            raise UserError(f"cannot use mountpoint {path}: {exc.strerror}") from None
    if not os.path.isdir(path):
        raise UserError(f"mountpoint is not a directory: {path}")
    covering = mounted_filesystems().get(path)
    if covering is not None and covering.startswith("fuse"):
        raise UserError(f"already mounted: {path}")
    if covering == AUTOFS:  # empty by nature, and listing it would wait for this very mount
        return path
    try:
        if os.listdir(path):
            raise UserError(f"mountpoint is not empty: {path}")
    except PermissionError:
        raise UserError(f"mountpoint is not accessible: {path}") from None
    return path


def mount_device(path: str) -> str | None:
    """The `major:minor` device of the mount at `path` (names its /sys/class/bdi entry), or None."""
    path = os.path.abspath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as file:
        for line in file:
            fields = line.split()
            if _unescape_mountinfo(fields[4]) == path:
                return fields[2]
    return None


def raise_kernel_readahead(path: str, kib: int = 1024) -> bool:
    """Let the kernel send large sequential reads (root only; harmless to skip)."""
    device = mount_device(path)
    if device is None:
        return False
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w", encoding="ascii") as file:
            file.write(str(kib))
        return True
    except OSError:
        return False
