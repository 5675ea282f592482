"""S3 endpoint URLs (`--endpoint-url`, `AWS_ENDPOINT_URL`) and regions (`--region`), checked before botocore
sees them: it fails on a bad URL with a bare "Invalid endpoint" ValueError, or with urllib's traceback, and on
a bad region with its own traceback (or, for an empty one, at the first request, in the signer)."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from quiltmount.errors import UserError

#: Where botocore takes an S3 endpoint from when none is given, the service's own variable first.
ENVIRONMENT = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
#: A DNS name or an IPv4 address, as botocore accepts hosts (IPv6 hosts are checked by urlsplit).
_HOST = re.compile(r"((?!-)[A-Za-z0-9-]{1,63}(?<!-)\.)*(?!-)[A-Za-z0-9-]{1,63}(?<!-)\.?")
#: A region name as botocore accepts it (`botocore.utils.validate_region_name`: a host label, not all digits),
#: and not empty.
_REGION = re.compile(r"(?![0-9]+$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def endpoint_url_problem(url: str) -> str | None:
    """Why `url` cannot be an S3 endpoint (an http or https scheme, a host, a numeric port), or None."""
    if not url.isprintable():  # urlsplit drops tabs and newlines without a word
        return "control characters in it"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed [IPv6 address
        return f"not a URL ({exc})"
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        return f"invalid port ({exc})"
    if parts.scheme not in ("http", "https"):
        return "expected http://HOST[:PORT] or https://HOST[:PORT]"
    if not parts.hostname:
        return "no host"
    if ":" not in parts.hostname and not _HOST.fullmatch(parts.hostname):
        return f"invalid host {parts.hostname!r}"
    return None


def region_problem(region: str) -> str | None:
    """Why `region` cannot be an AWS region name, or None."""
    if not _REGION.fullmatch(region):
        return "expected a name such as us-east-1 (letters, digits and hyphens)"
    return None


def environment_endpoint_url() -> str | None:
    """The S3 endpoint the environment sets (as botocore will read it), or None; `UserError` naming the
    variable if it is not one."""
    for variable in ENVIRONMENT:
        url = os.environ.get(variable)
        if url:
            problem = endpoint_url_problem(url)
            if problem:
                raise UserError(f"invalid {variable} {url!r}: {problem}")
            return url
    return None
