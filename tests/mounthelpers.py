"""Helpers for driving the `quiltmount` command and its mounts from tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CLI_TIMEOUT = 120


def run_cli(*args: str, timeout: float = CLI_TIMEOUT, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run `quiltmount ARGS...` as a user would (a real subprocess)."""
    return subprocess.run([sys.executable, "-m", "quiltmount", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


def status() -> list[dict[str, Any]]:
    result = run_cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["mounts"]


def mount_record(mountpoint: Path) -> dict[str, Any]:
    for record in status():
        if record["mountpoint"] == str(mountpoint):
            return record
    raise AssertionError(f"{mountpoint} is not in quiltmount status")


def fresh_record(mountpoint: Path) -> dict[str, Any]:
    """The mount's status record, after waiting for the daemon to refresh it (every second)."""
    time.sleep(1.3)
    return mount_record(mountpoint)


def is_mounted(mountpoint: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as file:
        return any(line.split()[4] == str(mountpoint) for line in file)


def force_unmount(mountpoint: Path) -> None:
    """Teardown: unmount politely, then by force; never leave a mount or a daemon behind."""
    record = None
    try:
        record = mount_record(mountpoint)
    except AssertionError:
        pass
    if is_mounted(mountpoint):
        result = run_cli("umount", str(mountpoint), timeout=60)
        if result.returncode != 0 and is_mounted(mountpoint):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False, capture_output=True)
    if record is not None:
        pid = int(record["pid"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
