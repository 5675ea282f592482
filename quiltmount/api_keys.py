"""Your own catalog API keys, like `quilt3.api_keys` (spec section 3): same GraphQL documents,
operation names and variables, same results and errors."""

from __future__ import annotations

import builtins
import dataclasses
import datetime
import textwrap
from typing import Any, Literal

from quiltmount import auth  # noqa: F401  (its import gives the catalog client the user's token)
from quiltmount.catalog import InvalidCatalogResponse, graphql, json_kind

APIKeyStatus = Literal["ACTIVE", "EXPIRED"]

_API_KEY_FRAGMENT = """
fragment APIKeySelection on APIKey {
  id
  name
  fingerprint
  createdAt
  expiresAt
  lastUsedAt
  status
  userEmail
}
"""

_INVALID_INPUT_FRAGMENT = """
fragment InvalidInputSelection on InvalidInput {
  errors {
    path
    message
    name
    context
  }
}
"""

LIST_DOCUMENT = """query apiKeysList($name: String, $fingerprint: String, $status: APIKeyStatus) {
  me {
    apiKeys(name: $name, fingerprint: $fingerprint, status: $status) {
      ...APIKeySelection
    }
  }
}
""" + _API_KEY_FRAGMENT

GET_DOCUMENT = """query apiKeyGet($id: ID!) {
  me {
    apiKey(id: $id) {
      ...APIKeySelection
    }
  }
}
""" + _API_KEY_FRAGMENT

CREATE_DOCUMENT = """mutation apiKeyCreate($input: APIKeyCreateInput!) {
  apiKeyCreate(input: $input) {
    __typename
    ... on APIKeyCreated {
      apiKey {
        ...APIKeySelection
      }
      secret
    }
    ...InvalidInputSelection
  }
}
""" + _API_KEY_FRAGMENT + _INVALID_INPUT_FRAGMENT

REVOKE_DOCUMENT = """mutation apiKeyRevoke($id: ID, $secret: String) {
  apiKeyRevoke(id: $id, secret: $secret) {
    __typename
    ...InvalidInputSelection
  }
}
""" + _INVALID_INPUT_FRAGMENT


def _as_sent(document: str) -> str:
    """quilt3 sends its documents exactly as written in its source: leading newline, 12-space indentation."""
    return "\n" + textwrap.indent(document.strip("\n").replace("\n\n\n", "\n\n"), " " * 12) + "\n" + " " * 12


LIST_DOCUMENT, GET_DOCUMENT, CREATE_DOCUMENT, REVOKE_DOCUMENT = (
    _as_sent(d) for d in (LIST_DOCUMENT, GET_DOCUMENT, CREATE_DOCUMENT, REVOKE_DOCUMENT))


def _datetime(value: Any) -> datetime.datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        parsed = value
    else:
        text = str(value)
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        parsed = datetime.datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


@dataclasses.dataclass
class APIKey:
    """An API key for programmatic access."""

    id: str
    name: str
    fingerprint: str
    created_at: datetime.datetime
    expires_at: datetime.datetime
    last_used_at: datetime.datetime | None
    status: APIKeyStatus
    user_email: str

    @classmethod
    def from_graphql(cls, data: dict[str, Any]) -> APIKey:
        try:
            return cls(id=str(data["id"]), name=data["name"], fingerprint=data["fingerprint"],
                       created_at=_datetime(data["createdAt"]), expires_at=_datetime(data["expiresAt"]),
                       last_used_at=_datetime(data.get("lastUsedAt")), status=data["status"],
                       user_email=data["userEmail"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidCatalogResponse(f"Invalid API key in the catalog's answer: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly dict (ISO-8601 datetimes)."""
        return {field.name: (value.isoformat() if isinstance(value, datetime.datetime) else value)
                for field in dataclasses.fields(self) for value in [getattr(self, field.name)]}


@dataclasses.dataclass
class InvalidInputSelectionErrors:
    path: str | None
    message: str
    name: str
    context: Any = None


InputError = InvalidInputSelectionErrors  # repr named like quilt3's, for identical APIKeyError messages


@dataclasses.dataclass
class InvalidInput:
    """The `InvalidInput` result of a mutation (quilt3's `InvalidInputSelection`)."""

    errors: builtins.list[InvalidInputSelectionErrors]


class APIKeyError(Exception):
    """The catalog refused the operation (an `InvalidInput` result); `.result` holds it."""

    def __init__(self, result: Any) -> None:
        self.result = result
        if hasattr(result, "message"):
            super().__init__(result.message)
        elif hasattr(result, "errors"):
            super().__init__(str(result.errors))
        else:
            super().__init__(str(result))


def _object(value: Any, what: str) -> dict[str, Any] | None:
    """`value` if it is a JSON object or null; else `InvalidCatalogResponse` naming its type (never its content,
    which may hold a secret)."""
    if value is not None and not isinstance(value, dict):
        raise InvalidCatalogResponse(f"Invalid {what} in the catalog's answer: a JSON {json_kind(value)}, "
                                     "not an object")
    return value


def _is_input_error(error: Any) -> bool:
    """An `InputError` as the schema types it: `message` and `name` strings, `path` a string or null (quilt3's
    pydantic model refuses anything else)."""
    return (isinstance(error, dict) and isinstance(error.get("message", ""), str)
            and isinstance(error.get("name", ""), str) and isinstance(error.get("path"), (str, type(None))))


def _handle_errors(result: Any, what: str, success: str) -> dict[str, Any]:
    """The mutation's result if its `__typename` is `success`; `APIKeyError` for an `InvalidInput`, and
    `InvalidCatalogResponse` for anything else, as quilt3 refuses a result that is neither (spec 3.3): a
    revocation the catalog did not confirm must not pass for one."""
    result = _object(result, what)
    if result is None:
        raise InvalidCatalogResponse(f"Invalid {what} in the catalog's answer: null")
    typename = result.get("__typename")
    if typename == "InvalidInput":
        errors = result.get("errors") or []
        if not isinstance(errors, builtins.list) or not all(map(_is_input_error, errors)):
            raise InvalidCatalogResponse(f"Invalid {what} in the catalog's answer: 'errors' is not a list of input "
                                         "errors (objects with string messages and names)")
        raise APIKeyError(InvalidInput(errors=[
            InvalidInputSelectionErrors(path=e.get("path"), message=e.get("message", ""), name=e.get("name", ""),
                                        context=e.get("context")) for e in errors]))
    if typename != success:
        raise InvalidCatalogResponse(f"Unexpected {what}: {str(typename)[:80]!r}, not {success!r}")
    return result


def list(name: str | None = None, fingerprint: str | None = None,
         status: APIKeyStatus | None = None) -> builtins.list[APIKey]:
    """Your API keys, optionally filtered (by the server) by name, fingerprint or status."""
    if status is not None and status not in ("ACTIVE", "EXPIRED"):
        raise ValueError(f"'{status}' is not a valid APIKeyStatus")
    data = graphql(LIST_DOCUMENT, "apiKeysList", {"name": name, "fingerprint": fingerprint, "status": status})
    me = _object(data.get("me"), "me")
    if me is None:
        return []
    keys = me.get("apiKeys") or []
    if not isinstance(keys, builtins.list):
        raise InvalidCatalogResponse(f"Invalid apiKeys in the catalog's answer: a JSON {json_kind(keys)}, not a list")
    return [APIKey.from_graphql(item) for item in keys]


def get(id: str) -> APIKey | None:
    """The API key with this ID, or None."""
    data = graphql(GET_DOCUMENT, "apiKeyGet", {"id": id})
    me = _object(data.get("me"), "me")
    if me is None or me.get("apiKey") is None:
        return None
    return APIKey.from_graphql(me["apiKey"])


def _whole_number(value: Any, name: str) -> int:
    """`value` as quilt3's pydantic model takes an `int`: an int, or a float or text holding a whole number
    (`"5"`, `5.0`); ValueError otherwise."""
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                pass
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"{name} must be a whole number, not {value!r}")


def create(name: str, expires_in_days: int = 90) -> tuple[APIKey, str]:
    """Create an API key; returns `(APIKey, secret)` -- the secret is shown only once."""
    days = _whole_number(expires_in_days, "expires_in_days")
    data = graphql(CREATE_DOCUMENT, "apiKeyCreate", {"input": {"name": name, "expiresInDays": days}})
    result = _handle_errors(data.get("apiKeyCreate"), "apiKeyCreate result", "APIKeyCreated")
    if not isinstance(result.get("secret"), str):
        raise InvalidCatalogResponse("Unexpected apiKeyCreate result: APIKeyCreated without a secret")
    return APIKey.from_graphql(result.get("apiKey")), result["secret"]


def revoke(id: str | None = None, secret: str | None = None) -> None:
    """Revoke an API key given its ID or its secret."""
    if id is None and secret is None:
        raise ValueError("Must provide either id or secret")
    data = graphql(REVOKE_DOCUMENT, "apiKeyRevoke", {"id": id, "secret": secret})
    _handle_errors(data.get("apiKeyRevoke"), "apiKeyRevoke result", "Ok")


__all__ = ["APIKey", "APIKeyError", "APIKeyStatus", "create", "get", "list", "revoke"]
