"""`quiltmount install-mount-helper`: a link to the `mount.fuse.quiltmount` console script where mount(8)
looks for helpers (/sbin, with PATH removed from their environment), so that `mount -t fuse.quiltmount` and
fstab lines work.  The script's first line names its interpreter by absolute path, so the link is all it
takes.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os

from quiltmount.errors import UserError

HELPER_NAME = "mount.fuse.quiltmount"


def helper_script() -> str:
    """The absolute path of the `mount.fuse.quiltmount` script installed with quiltmount (the first
    installation that has one: a source tree's stale `.egg-info` on the path lists no files)."""
    for distribution in importlib.metadata.distributions(name="quiltmount"):
        for file in distribution.files or ():
            if file.name == HELPER_NAME:
                path = os.path.normpath(str(distribution.locate_file(file)))
                if os.access(path, os.X_OK):
                    return path
    raise UserError(f"the {HELPER_NAME} script is not installed with this quiltmount: reinstall quiltmount "
                    "(pip install) so that its console scripts are created")


def install_helper(directory: str) -> str:
    """Link DIRECTORY/mount.fuse.quiltmount to the installed script; returns what was done."""
    target = helper_script()
    link = os.path.join(directory, HELPER_NAME)
    if not os.path.isdir(directory):
        raise UserError(f"not a directory: {directory}")
    if os.path.islink(link) and os.readlink(link) == target:
        return f"already installed: {link} -> {target}"
    if os.path.lexists(link) and not os.path.islink(link):
        raise UserError(f"{link} exists and is not a symlink: remove it first")
    temporary = f"{link}.{os.getpid()}.tmp"
    try:
        os.symlink(target, temporary)
        os.replace(temporary, link)  # replaces a link to another installation at once
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise UserError(f"cannot create {link}: {exc.strerror}" + (
            " (run it as root, e.g. with sudo)" if isinstance(exc, PermissionError) else "")) from None
    return f"installed {link} -> {target}"


def remove_helper(directory: str) -> str:
    """Remove DIRECTORY/mount.fuse.quiltmount (a symlink only); returns what was done."""
    link = os.path.join(directory, HELPER_NAME)
    if not os.path.lexists(link):
        return f"not installed: {link}"
    if not os.path.islink(link):
        raise UserError(f"{link} is not a symlink: not removing it")
    try:
        os.unlink(link)
    except OSError as exc:
        raise UserError(f"cannot remove {link}: {exc.strerror}" + (
            " (run it as root, e.g. with sudo)" if isinstance(exc, PermissionError) else "")) from None
    return f"removed {link}"
