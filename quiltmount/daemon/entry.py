"""The daemon's entry: `main` for `python -m quiltmount.daemon OPTIONS-JSON READY-FD` (started by `launcher`),
or `run_mount` in the command's own process for `quiltmount mount --foreground`.

It sets up its process, serves the mount (`serve.serve`) and turns any failure into one line on the ready
pipe and exit status 1.  Stop signals are taken over first of all (`stopping`).  Only the foreground
process notifies systemd: a background daemon is not its unit's main process.
"""

from __future__ import annotations

import logging
import os

from quiltmount.errors import UserError
from quiltmount.daemon.launcher import MountOptions, ReadySignal
from quiltmount.daemon.serve import serve
from quiltmount.daemon.process import bound_malloc, dump_threads_on_sigusr1, setup_logging
from quiltmount.daemon.stopping import Stopper

log = logging.getLogger("quiltmount")


def run_mount(options: MountOptions, ready_fd: int | None = None) -> int:
    """Mount and serve until unmounted.  Returns the process exit status."""
    if ready_fd is not None:
        os.environ.pop("NOTIFY_SOCKET", None)
    signal = ReadySignal(ready_fd)
    stopper = Stopper(options.stop_timeout, signal)
    stopper.install()
    log_file = options.log_path
    setup_logging(log_file, options.log_level, also_stderr=ready_fd is None, chosen=options.log_file is not None)
    dump_threads_on_sigusr1(log_file)
    bound_malloc()
    try:
        return serve(options, log_file, signal, stopper)
    except UserError as exc:
        log.error("%s", exc)
        signal.fail(str(exc))
        return 1
    except Exception as exc:  # a bug: keep the traceback in the log, one line for the user
        log.exception("mount failed")
        signal.fail(f"mount failed: {exc} (details in {log_file})")
        return 1


def main(argv: list[str]) -> int:
    options = MountOptions.from_json(argv[0])
    return run_mount(options, int(argv[1]) if len(argv) > 1 else None)
