"""Human-friendly sizes and durations for command-line options; the sizes of multipart uploads."""

from __future__ import annotations

import math
import re

#: The part size of multipart uploads to S3, which is also quilt3's checksum chunk: the two must be equal, so
#: that S3's composite SHA-256 of an object uploaded in parts of this size is quilt3's `sha2-256-chunked` hash
#: of it.  quilt3 (through boto3) uploads files of this size and more in parts of this size; so does quiltmount.
PART_SIZE = 8 << 20
#: S3's limit on the parts of one multipart upload (quilt3 doubles its chunk while a file would need more).
MAX_PARTS = 10_000
#: The blocks the caches hold (memory and disk): block i of an object is its bytes [i, i + 1) x this size.
BLOCK_SIZE = 1 << 20
#: The smallest `--memory-cache-size`: read-ahead keeps at least one 8 MiB part in flight (its GETs are whole
#: parts), and as much again is left for cached blocks.
MIN_MEMORY_BUDGET = 16 << 20
#: Parts in flight at once for all the uploads (and server-side copies) to one bucket, by default.
PART_WORKERS = 8

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_MULTIPLIERS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Parse `512`, `64K`, `256M`, `1.5G`, `2GiB` into bytes (binary multiples; plain numbers are bytes)."""
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError(f"invalid size {text!r}: use a number of bytes or a K/M/G/T suffix, e.g. 512M")
    number, unit, _ = match.groups()
    return int(float(number) * _MULTIPLIERS[unit.lower()])


def format_size(num_bytes: float) -> str:
    """Format bytes as a short human string: `0 B`, `1.5 KiB`, `256 MiB`."""
    if num_bytes < 1024:
        return f"{int(num_bytes)} B"
    exponent = min(int(math.log(num_bytes, 1024)), 4)
    value = num_bytes / (1024**exponent)
    unit = ["B", "KiB", "MiB", "GiB", "TiB"][exponent]
    return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"


def parse_ttl(text: str) -> float:
    """Parse a metadata TTL: seconds (`0`, `1.5`, `60`) or `indefinite` (never expires)."""
    if str(text).strip().lower() in ("indefinite", "inf", "infinite"):
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid TTL {text!r}: use a number of seconds or 'indefinite'") from None
    if value < 0 or math.isnan(value):
        raise ValueError(f"invalid TTL {text!r}: must be >= 0")
    return value
