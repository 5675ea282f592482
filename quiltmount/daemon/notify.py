"""systemd's readiness protocol (sd_notify(3)) for `quiltmount mount --foreground` in a `Type=notify` unit.

A notification is one datagram of newline-separated `KEY=VALUE` lines sent to the AF_UNIX socket named by
`NOTIFY_SOCKET` (a path, or an abstract name written with a leading '@'), so no libsystemd is needed.
Without the variable every call does nothing; a socket that refuses is logged, never fatal.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*assignments: str) -> bool:
    """Send `assignments` (e.g. "READY=1", "STATUS=...") to the service manager; True if they were sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):  # e.g. vsock:CID:PORT (virtual machines): not a unit's socket
        log.warning("NOTIFY_SOCKET=%s: only AF_UNIX sockets are supported; not notifying", address)
        return False
    message = "\n".join(text.replace("\n", " ") for text in assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("cannot notify the service manager at NOTIFY_SOCKET: %s", exc)
        return False
    return True
