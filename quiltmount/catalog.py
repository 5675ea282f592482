"""HTTP access to a Quilt catalog ("stack"): the authenticated session, GraphQL and search transport.

Behaves like quilt3's `session.py` (spec section 2.1): one process-wide `requests.Session` with quilt3's
headers and response hook.  Difference: the Authorization header is computed before *every* request, so a
long-running process refreshes an expiring access token instead of sending it until it is rejected.

The tokens belong to `auth`, which needs this client (to fetch AWS credentials) and so hands it a token
provider (`set_token_provider`) when it is imported, instead of this module importing `auth`.
"""

from __future__ import annotations

import json
import platform
import threading
from collections.abc import Callable
from typing import Any

import requests

from quiltmount.errors import QuiltException
from quiltmount.quiltconfig import get_from_config

REQUEST_TIMEOUT = 60.0
QUILT3_COMPAT_VERSION = "8.0.0"

#: Gives the bearer token for the next catalog request, or None to send none.
TokenProvider = Callable[[], str | None]


class InvalidCatalogResponse(QuiltException):
    """The catalog answered 2xx with something that is not the expected JSON."""


class GraphQLError(QuiltException):
    """The GraphQL response carried an `errors` array (str: the messages joined by "; ")."""

    def __init__(self, errors: Any) -> None:
        items = errors if isinstance(errors, list) else [errors]
        messages = [str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in items]
        super().__init__("; ".join(messages), errors=errors)


def registry_url() -> str:
    """`registryUrl` of the config; a clear error instead of quilt3's TypeError/URL error when unset."""
    url = get_from_config("registryUrl")
    if not url:
        raise QuiltException("No Quilt catalog is configured: run `quiltmount config CATALOG_URL` "
                             "(or quilt3.config('CATALOG_URL')) first.")
    return str(url).rstrip("/")


def user_agent() -> str:
    return (f"quilt-python/{QUILT3_COMPAT_VERSION} ({platform.system()} {platform.release()}) "
            f"{platform.python_implementation()}/{platform.python_version()}")


def _handle_response(resp: requests.Response, **kwargs: Any) -> None:
    """quilt3's response hook: errors become `QuiltException` before callers see the body."""
    if resp.status_code == 401:
        raise QuiltException("Authentication failed. Check your credentials or API key.", response=resp)
    if not resp.ok:
        try:
            data = resp.json()
        except ValueError:
            raise QuiltException(f"Unexpected failure: error {resp.status_code}", response=resp) from None
        message = data.get("message") if isinstance(data, dict) else None
        raise QuiltException(str(message) if message else f"Unexpected failure: error {resp.status_code}",
                             response=resp)


def _check_token(token: object) -> None:
    """Refuse a token that cannot be an HTTP header value, without quoting it: requests would put it (a
    secret) into its error message."""
    if not isinstance(token, str) or not token or not (token.isascii() and token.isprintable()) \
            or token != token.strip():
        raise QuiltException("The stored access token or API key is malformed (not a one-line string): "
                             "run `quiltmount login` (or set a valid API key) again.")


_token_provider: TokenProvider | None = None


def set_token_provider(provider: TokenProvider) -> None:
    """Ask `provider` for the bearer token of every catalog request from now on (`auth` does, on import).

    Until a provider is set, requests carry no token, as when nobody is logged in."""
    global _token_provider
    _token_provider = provider


class _BearerAuth(requests.auth.AuthBase):
    """Asks the token provider for the token (which `auth` refreshes when it expires within a minute) before
    each request."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        provider = _token_provider
        token = provider() if provider is not None else None
        if token is not None:
            _check_token(token)
            request.headers["Authorization"] = f"Bearer {token}"
        else:
            request.headers.pop("Authorization", None)
        return request


_session: requests.Session | None = None
_session_lock = threading.Lock()


def get_session() -> requests.Session:
    """The process-wide authenticated session (created on first use)."""
    global _session
    with _session_lock:
        if _session is None:
            session = requests.Session()
            session.hooks["response"].append(_handle_response)
            session.headers.update({"Content-Type": "application/json", "Accept": "application/json",
                                    "User-Agent": user_agent()})
            session.auth = _BearerAuth()
            _session = session
        return _session


def clear_session() -> None:
    global _session
    with _session_lock:
        if _session is not None:
            _session.close()
            _session = None


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        snippet = response.text[:80].replace("\n", " ")
        raise InvalidCatalogResponse(
            f"The catalog at {response.url} did not answer with JSON (HTTP {response.status_code}, "
            f"{response.headers.get('Content-Type', 'no content type')}): {snippet!r}") from None


def _send(method: str, path: str, **kwargs: Any) -> Any:
    url = registry_url() + path
    kwargs.setdefault("timeout", REQUEST_TIMEOUT)
    try:
        response = get_session().request(method, url, **kwargs)
    except requests.RequestException as exc:
        raise QuiltException(f"Failed to connect to the catalog at {url}: {exc}") from None
    return _json(response)


def get_json(path: str, params: Any = None, timeout: float = REQUEST_TIMEOUT) -> Any:
    """GET `<registryUrl><path>` through the authenticated session and decode the JSON answer."""
    return _send("GET", path, params=params, timeout=timeout)


def graphql(document: str, operation_name: str, variables: dict[str, Any]) -> dict[str, Any]:
    """POST a GraphQL operation; return `data`, raising on `errors` or a malformed answer."""
    payload = {"query": document, "operationName": operation_name, "variables": variables}
    answer = _send("POST", "/graphql", data=json.dumps(payload))
    # Messages name the shape, never the content: an answer may carry secrets (apiKeyCreate does).
    if not isinstance(answer, dict) or ("data" not in answer and "errors" not in answer):
        raise InvalidCatalogResponse(f"Invalid GraphQL response from the catalog: a JSON {json_kind(answer)} "
                                     "without 'data' or 'errors'")
    if answer.get("errors"):
        raise GraphQLError(answer["errors"])
    data = answer.get("data")
    if not isinstance(data, dict):
        raise InvalidCatalogResponse(f"Invalid GraphQL response from the catalog: 'data' is a JSON {json_kind(data)}, "
                                     "not an object")
    return data


def json_kind(value: Any) -> str:
    """The JSON type name of a decoded value (for messages that must not quote it)."""
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def search_api(query: str | dict, index: str, limit: int = 10, timeout: float = REQUEST_TIMEOUT) -> Any:
    """quilt3's `search_api`: GET /api/search with the parameters in quilt3's order."""
    if isinstance(query, dict):
        params = {"index": index, "action": "freeform", "body": json.dumps(query), "size": limit}
    else:
        params = {"index": index, "action": "search", "query": query, "size": limit}
    answer = get_json("/api/search", params=params, timeout=timeout)
    if not isinstance(answer, dict) or not isinstance(answer.get("hits"), dict) \
            or not isinstance(answer["hits"].get("hits"), list):
        raise InvalidCatalogResponse("Invalid search response from the catalog (no hits.hits list)")
    if not all(isinstance(hit, dict) and isinstance(hit.get("_source", {}), dict) for hit in answer["hits"]["hits"]):
        raise InvalidCatalogResponse("Invalid search response from the catalog (a hit is not an object with an "
                                     "object _source)")
    return answer


__all__ = ["GraphQLError", "InvalidCatalogResponse", "TokenProvider", "clear_session", "get_json", "get_session",
           "graphql", "json_kind", "registry_url", "search_api", "set_token_provider", "user_agent"]
