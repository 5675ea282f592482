"""Helpers for driving the `quiltmount` command and its mounts from tests."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quiltmount.state import pid_alive

CLI_TIMEOUT = 120


def run_cli(*args: str, timeout: float = CLI_TIMEOUT, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run `quiltmount ARGS...` as a user would (a real subprocess)."""
    return subprocess.run([sys.executable, "-m", "quiltmount", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


def status() -> list[dict[str, Any]]:
    result = run_cli("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["mounts"]


def refuse_links_and_fifos(directory: Path, existing: str, symlink_errno: int) -> None:
    """`ln -s`, `mkfifo` (both `symlink_errno`) and a hard link to the file `existing` (ENOTSUP) in
    `directory` are each refused with that errno."""
    attempts: list[tuple[Callable[[], object], int]] = [
        (lambda: os.symlink(existing, directory / "link"), symlink_errno),
        (lambda: os.mkfifo(directory / "fifo"), symlink_errno),
        (lambda: os.link(directory / existing, directory / "hard"), errno.ENOTSUP)]
    for attempt, code in attempts:
        try:
            attempt()
        except OSError as exc:
            assert exc.errno == code, (attempt, exc)
        else:
            raise AssertionError(f"{attempt} was not refused")


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
            if not pid_alive(pid):  # (an exited daemon waits for init to reap it: a zombie is gone)
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)


#: The login prompt of `quiltmount login` and `quilt3 login`.
LOGIN_PROMPT = "Enter the code from the webpage: "
#: Runs a console entry point ("module:function") with the pseudo-terminal on fd 0 as its controlling terminal
#: (so getpass opens it as /dev/tty), like a program started from an interactive shell.
ON_TERMINAL = ("import fcntl, importlib, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
               "module, function = sys.argv.pop(1).split(':'); sys.argv[0] = module.split('.')[0]; "
               "sys.exit(getattr(importlib.import_module(module), function)())")


def on_terminal(entry: str, *args: str, env: dict | None = None, answer: str | None = None,
                prompt: str = LOGIN_PROMPT, timeout: float = 120) -> tuple[int, str]:
    """Run `entry` (e.g. "quiltmount.cli:main") with ARGS in a new session whose stdin, stdout and stderr are
    a new pseudo-terminal; type `answer` once `prompt` is on the screen.  Returns the exit status and
    everything the terminal showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0x0
    process = subprocess.Popen([sys.executable, "-c", ON_TERMINAL, entry, *args], stdin=slave, stdout=slave,
                               stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"{entry} {args} still running after {timeout} s; the terminal shows {screen!r}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                break
            if not chunk:
                break
            screen += chunk
            if answer is not None and prompt.encode() in screen:
                os.write(master, answer.encode())
                answer = None
        return process.wait(timeout=timeout), screen.decode(errors="replace")
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
