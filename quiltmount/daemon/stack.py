"""What a mount takes from the Quilt catalog: the API key from the environment, the stack's AWS credentials,
and the search behind `.search/`.

The control API is imported inside each function: importing the daemon loads none of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from quiltmount.errors import QuiltException, UserError

log = logging.getLogger("quiltmount")

SEARCH_TIMEOUT = 30.0


def use_api_key(variable: str | None) -> None:
    """Catalog requests use the API key from the environment (`--api-key-env VAR` or QUILT_API_KEY)."""
    from quiltmount.auth import login_with_api_key_from_env

    try:
        if login_with_api_key_from_env(variable):
            log.info("catalog requests use the API key from $%s", variable or "QUILT_API_KEY")
    except ValueError as exc:
        raise UserError(str(exc)) from None


def stack_session() -> Any:
    """A boto3 session on the Quilt stack's AWS credentials, refreshed from the catalog before they expire."""
    from quiltmount.auth import get_boto3_session

    try:
        session = get_boto3_session(fallback=False)
    except QuiltException as exc:
        raise UserError(f"--quilt-credentials: {exc.message.rstrip('.')}: log in first with `quiltmount login`"
                        " (or `quilt3 login`)") from None
    log.info("S3 requests use the Quilt stack's credentials (refreshed from the catalog)")
    return session


def bucket_search(bucket: str) -> Callable[[str | dict, int], dict]:
    """The catalog's search of `bucket`'s objects and packages (`Bucket.search`'s indexes), as `.search/`
    calls it: (query, limit) -> the catalog's answer."""
    from quiltmount import auth  # noqa: F401  (its import gives the catalog client the user's token)
    from quiltmount.catalog import search_api

    def search(query: str | dict, limit: int) -> dict:
        return search_api(query, index=f"{bucket},{bucket}_packages", limit=limit, timeout=SEARCH_TIMEOUT)

    return search
