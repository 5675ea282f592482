"""Value types for argparse options: each turns bad input into a one-line usage error (exit 2)."""

from __future__ import annotations

import argparse
import datetime
import json
import re
from typing import Any

from quiltmount.names import split_package_spec
from quiltmount.posixmeta import MAX_ID
from quiltmount.storage.endpoint import endpoint_url_problem, region_problem
from quiltmount.units import BLOCK_SIZE, MIN_MEMORY_BUDGET, format_size, parse_size, parse_ttl


def size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def memory_budget(text: str) -> int:
    """`--memory-cache-size`: at least MIN_MEMORY_BUDGET (below it read-ahead alone would take it all)."""
    value = size(text)
    if value < MIN_MEMORY_BUDGET:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: must be at least {format_size(MIN_MEMORY_BUDGET)} "
                                         "(8 MiB of read-ahead in flight, and as much for cached blocks)")
    return value


def disk_cap(text: str) -> int:
    """`--disk-cache-size`: 0 (off) or at least one block (a smaller cap could hold no block of 1 MiB)."""
    value = size(text)
    if 0 < value < BLOCK_SIZE:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: must be 0 (no disk cache) or at least "
                                         f"{format_size(BLOCK_SIZE)} (one block)")
    return value


def ttl(text: str) -> float:
    try:
        return parse_ttl(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid mode {text!r}: use octal, e.g. 0644") from None
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"invalid mode {text!r}: must be between 0000 and 7777")
    return value


#: The longest `--stop-timeout`: a year.  A longer wait is the same in practice, and one beyond what
#: sigtimedwait(2) takes (about 292 years) crashed the daemon's stop-signal thread.
MAX_STOP_TIMEOUT = 365 * 24 * 3600


def _at_least(text: str, least: int, most: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: must be >= {least}")
    if most is not None and value > most:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: must be <= {most}")
    return value


def positive(text: str) -> int:
    return _at_least(text, 1)


def non_negative(text: str) -> int:
    return _at_least(text, 0)


def stop_timeout(text: str) -> int:
    return _at_least(text, 0, MAX_STOP_TIMEOUT)


def not_empty(text: str) -> str:
    """A file or variable name: an empty one would be taken as none given, silently."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def id_number(text: str) -> int:
    """A user or group id; a larger one would wrap around in the kernel (2**32 shows as 0: root)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid id {text!r}: must be a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid id {text!r}: must be >= 0")
    if value > MAX_ID:
        raise argparse.ArgumentTypeError(f"invalid id {text!r}: must be <= {MAX_ID}")
    return value


def package_spec(text: str) -> str:
    """`NS/NAME[@HASH|:TAG]`, with something after its `@` or `:` (the name itself is checked where it is
    looked up)."""
    try:
        split_package_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid package {text!r}: {exc}") from None
    return text


def endpoint_url(text: str) -> str:
    problem = endpoint_url_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"invalid endpoint URL {text!r}: {problem}")
    return text


def region(text: str) -> str:
    problem = region_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"invalid region {text!r}: {problem}")
    return text


def json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None


def timestamp(text: str) -> float:
    """A moment as Unix seconds: from ISO 8601 with a time zone (`2026-12-07T03:15:00Z`, `...+01:00`, or basic
    `20261207T031500Z`), or Unix seconds (digits) of a time in years 1-9999."""
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        return _representable(text, float(text))
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: use ISO 8601, e.g. 2026-12-07T03:15:00Z, "
                                         "or Unix seconds") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: give its time zone, e.g. 2026-12-07T03:15:00Z "
                                         "or 2026-12-07T04:15:00+01:00")
    return moment.timestamp()


def _representable(text: str, seconds: float) -> float:
    """`seconds` if it names a date (years 1-9999), which the daemon's log and version checks can show."""
    try:
        datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    except (OverflowError, ValueError, OSError):
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: out of range (years 1-9999)") from None
    return seconds
