"""The table of live mounts: one JSON record per mount, written by its daemon, read by `status`/`umount`."""

from __future__ import annotations

import json
import os
import select
import time
from typing import Any

from quiltmount.files import atomic_file, remove_file
from quiltmount.paths import mounts_dir, slug


def record_path(mountpoint: str) -> str:
    return os.path.join(mounts_dir(), slug(mountpoint) + ".json")


def write_record(mountpoint: str, record: dict[str, Any]) -> None:
    """Atomically replace the mount's record (readers never see half a file)."""
    directory = mounts_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with atomic_file(record_path(mountpoint)) as file:
        file.write(json.dumps(record, indent=1, sort_keys=True).encode("utf-8"))


def report_path(mountpoint: str) -> str:
    return os.path.join(mounts_dir(), slug(mountpoint) + ".report")


def write_report(mountpoint: str, report: dict[str, Any]) -> None:
    """What a daemon leaves for `umount` when it exits (uploads that did not land)."""
    os.makedirs(mounts_dir(), mode=0o700, exist_ok=True)
    with open(report_path(mountpoint), "w", encoding="utf-8") as file:
        json.dump(report, file)


def take_report(mountpoint: str) -> dict[str, Any] | None:
    """Read and remove the exit report of the mount's last daemon."""
    report = _read_json(report_path(mountpoint))
    if report is not None:
        os.unlink(report_path(mountpoint))
    return report


def discard_report(mountpoint: str, stranded_dir: str) -> None:
    """Drop the exit report of the mount's last daemon if it was about the staging area whose files go to
    `stranded_dir`: a new daemon that recovered that area (uploads retried, files left open set aside)
    supersedes it."""
    report = _read_json(report_path(mountpoint))
    if report is not None and report.get("stranded_dir") == stranded_dir:
        remove_file(report_path(mountpoint))


def remove_record(mountpoint: str) -> None:
    remove_file(record_path(mountpoint))


def read_record(mountpoint: str) -> dict[str, Any] | None:
    return _read_json(record_path(mountpoint))


def _read_json(path: str) -> Any:
    """The JSON document at `path`; None if it is missing or unreadable (being replaced, or half written)."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def wait_for_exit(pid: int, timeout: float) -> None:
    """Return when process `pid` exits or after `timeout` seconds, whichever comes first."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (old kernel, gone already): a plain pause
        time.sleep(timeout)
        return
    try:
        select.select([pidfd], [], [], timeout)  # readable once the process has exited
    finally:
        os.close(pidfd)


def pid_alive(pid: int) -> bool:
    """True while process `pid` runs; an exited child not yet reaped by its parent (zombie) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            return file.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def live_records() -> list[dict[str, Any]]:
    """Records of mounts whose daemon is still running; records of dead daemons are removed."""
    records = []
    directory = mounts_dir()
    if not os.path.isdir(directory):
        return records
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as file:
                record = json.load(file)
        except (OSError, ValueError):
            continue
        if pid_alive(int(record.get("pid", 0))):
            records.append(record)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass
    return records
