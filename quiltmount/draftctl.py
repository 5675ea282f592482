"""Package drafts of live mounts, from outside the daemon (no FUSE here): open one, see what it changes,
commit it.  Re-exported by `quiltmount.api`.

A draft is a directory of a mount: `MOUNT/.packages/NS/NAME/draft` in a bucket or registry mount, `MOUNT/.draft`
in a single-package mount.  Everything goes through the file system: `mkdir` opens a draft, extended
attributes carry the rest (`user.quilt.package` and `user.quilt.parent` identify it; setting
`user.quilt.parent` starts an unchanged draft from another revision; setting `user.quilt.commit` commits it in
the daemon, which reports through `user.quilt.commit_progress` and `user.quilt.commit_result`).
"""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Callable
from typing import Any

from quiltmount import state
from quiltmount.errors import QuiltException
from quiltmount.fs.draftrecord import (
    CHANGE_XATTR, COMMIT_PROGRESS_XATTR, COMMIT_RESULT_XATTR, COMMIT_XATTR, PACKAGE_XATTR, PARENT_XATTR, read_changes,
)
from quiltmount.names import is_valid_package_name

#: How often a waiting `commit_draft` reads the commit's progress.
PROGRESS_INTERVAL = 0.25


def open_draft(name: str, mountpoint: str | None = None, *, from_revision: str | None = None) -> str:
    """Open a draft of package `name` in the mount at `mountpoint` (default: the only writable mount that can
    hold it) and return its path.  It starts from `latest` (a single-package mount: the mounted revision), or
    from `from_revision` (a top hash, a unique prefix of 6+ characters, or a pointer name); a package that does
    not exist yet starts empty.  Raises `QuiltException` if the package already has a draft there."""
    if not is_valid_package_name(name):
        raise QuiltException(f"invalid package name: {name!r} (expected namespace/name)")
    record = _mount_for(name, mountpoint)
    root = record["mountpoint"]
    package_mount = record.get("package") is not None
    path = os.path.join(root, ".draft") if package_mount else os.path.join(root, ".packages", *name.split("/"), "draft")
    if os.path.lexists(path):
        raise QuiltException(f"{name} already has a draft: {path}")
    try:
        os.makedirs(path)
    except OSError as exc:
        raise QuiltException(f"cannot open a draft of {name} in {root}: {os.strerror(exc.errno or errno.EIO)}") \
            from None
    if from_revision:
        try:
            os.setxattr(path, PARENT_XATTR, from_revision.encode("utf-8"))
        except OSError as exc:
            os.rmdir(path)  # it is empty: nothing is lost
            reason = "no such revision" if exc.errno == errno.EINVAL else os.strerror(exc.errno or errno.EIO)
            raise QuiltException(f"cannot start the draft of {name} from {from_revision!r}: {reason}") from None
    return path


def _mount_for(name: str, mountpoint: str | None) -> dict[str, Any]:
    """The status record of the live, writable mount that holds `name`'s drafts."""
    if mountpoint is not None:
        record = state.read_record(os.path.realpath(mountpoint))
        if record is None:
            raise QuiltException(f"{mountpoint}: not a quiltmount mount point")
        candidates = [record]
    else:
        candidates = state.live_records()
    usable = [record for record in candidates
              if not record.get("read_only") and record.get("package") in (None, name)]
    if len(usable) == 1:
        return usable[0]
    if mountpoint is not None:
        record = candidates[0]
        why = "it is read-only" if record.get("read_only") else f"it shows package {record.get('package')}"
        raise QuiltException(f"{mountpoint}: cannot hold a draft of {name}: {why}")
    if not usable:
        raise QuiltException(f"no writable quiltmount mount can hold a draft of {name}: mount its registry first")
    raise QuiltException(f"several mounts can hold a draft of {name}: give one "
                         f"({', '.join(record['mountpoint'] for record in usable)})")


def commit_draft(path: str, message: str | None = None, *, meta: Any = ..., workflow: Any = ...,
                 force: bool = False, dedupe: bool = False,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Commit the package draft at `path` as a new revision, in the daemon of the mount that holds it.
    `meta` replaces the header's user_meta (default: the draft's); `workflow`, `force` and `dedupe` as
    `quilt3 push`.  `progress` is called every `PROGRESS_INTERVAL` seconds while it runs with the daemon's
    report (`phase`, `parent_entries`, `files_done`, `files_total`, `bytes_done`, `bytes_total`).  Returns the
    outcome (`package`, `top_hash`, `pointer`: None when `dedupe` found it already latest, `entries`); raises
    `QuiltException` with the reason in one line."""
    _draft_location(path)
    options: dict[str, Any] = {"message": message, "force": force, "dedupe": dedupe}
    if meta is not ...:
        options["meta"] = meta
    if workflow is not ...:
        options["workflow"] = workflow
    failure: list[OSError] = []

    def commit() -> None:
        try:
            os.setxattr(path, COMMIT_XATTR, json.dumps(options).encode("utf-8"))
        except OSError as exc:
            failure.append(exc)

    if progress is None:
        commit()
    else:
        worker = threading.Thread(target=commit, name="commit", daemon=True)
        worker.start()
        while not _joined(worker, PROGRESS_INTERVAL):
            report = _read_json(path, COMMIT_PROGRESS_XATTR)
            if report:
                progress(report)
    if failure:
        exc = failure[0]
        if exc.errno in (errno.ENOTSUP, errno.ENOENT, errno.ENOTDIR, errno.EROFS):
            raise _not_a_draft(path) from None
        reason = _read_json(path, COMMIT_RESULT_XATTR).get("error")
        raise QuiltException(reason or f"{path}: {os.strerror(exc.errno or errno.EIO)}") from None
    return _read_json(path, COMMIT_RESULT_XATTR)


def _joined(thread: threading.Thread, timeout: float) -> bool:
    thread.join(timeout)
    return not thread.is_alive()


def _read_json(path: str, name: str) -> dict[str, Any]:
    try:
        return json.loads(os.getxattr(path, name))
    except (OSError, ValueError):
        return {}


def diff_draft(path: str) -> list[tuple[str, str]]:
    """What committing the draft at `path` would change, as `git status --short` does: (`A`, `M`, `D` or `R`,
    logical key; `old -> new` for `R`), by key.  `M` is new bytes or new metadata.

    Read from the draft's record and journal (atomic files), so a busy daemon is not disturbed; only whether
    a written key is new to the parent is asked of the mount, one attribute per written file."""
    mountpoint, name = _draft_location(path)
    record = state.read_record(mountpoint)
    if record is None or not record.get("cache_dir"):
        raise _not_a_draft(path)
    changes = read_changes(os.path.join(record["cache_dir"], "drafts", *name.split("/")))

    def written(key: str) -> str:
        try:
            return os.getxattr(os.path.join(path, key), CHANGE_XATTR).decode()
        except OSError:  # no longer written (a change after the journal was read)
            return "A"

    found = [(written(key), key) for key in changes.written]
    found += [("R", f"{old} -> {new}") for new, old in changes.renamed.items()]
    gone = changes.deleted - set(changes.written) - changes.renamed.keys() - set(changes.renamed.values())
    found += [("D", key) for key in gone]
    found += [("M", key) for key in changes.meta_changed - set(changes.written) - changes.deleted]
    return sorted(found, key=lambda item: item[1].rpartition(" -> ")[2])


def _not_a_draft(path: str) -> QuiltException:
    return QuiltException(f"{path}: not the draft of a package in a quiltmount mount "
                          "(MOUNT/.packages/NS/NAME/draft, or MOUNT/.draft of a package mount)")


def _draft_location(path: str) -> tuple[str, str]:
    """(mountpoint, package name) of the draft at `path`; QuiltException if it is not one."""
    try:
        name = os.getxattr(path, PACKAGE_XATTR).decode()  # only a mount's drafts have it
    except OSError:
        raise _not_a_draft(path) from None
    mountpoint = os.path.dirname(os.path.abspath(path))
    while not os.path.ismount(mountpoint):
        mountpoint = os.path.dirname(mountpoint)
    return mountpoint, name
