"""Catalog search, like `quilt3.search` (spec section 4).  Unlike quilt3, no config call that could
autoconfigure against open.quiltdata.com: an unconfigured catalog is a clear error."""

from __future__ import annotations

from typing import Any

from quiltmount import auth  # noqa: F401  (its import gives the catalog client the user's token)
from quiltmount.catalog import search_api


def search(query: str | dict, limit: int = 10) -> list[dict[str, Any]]:
    """Search every bucket of the catalog: a query-string query (`str`) or an Elasticsearch DSL body
    (`dict`); returns the raw hits (`response["hits"]["hits"]`)."""
    return search_api(query, index="_all", limit=limit)["hits"]["hits"]


__all__ = ["search"]
