"""Quilt catalog authentication, sharing quilt3's files (spec sections 2.2-2.7).

`auth.json` (tokens keyed by registry URL) and `credentials.json` (AWS credentials from the stack) live in
quilt3's data directory, mode 0600, in quilt3's JSON formats, so a login done by either client is seen by the
other.  An API key is kept in memory only.  Differences from quilt3: files are created 0600 from the start
(quilt3 chmods after opening) and written atomically; the access token is re-checked (and refreshed when it
expires within 60 s) before every catalog request, not only when the session is created.  Importing this
module hands the catalog client its token provider (`current_token`): `catalog` must not import `auth`.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import threading
import time
import webbrowser
from pathlib import Path
from typing import Any

import requests

from quiltmount import catalog
from quiltmount.errors import QuiltException
from quiltmount.files import atomic_file
from quiltmount.quiltconfig import data_dir, get_from_config

REFRESH_MARGIN = 60.0
TOKEN_TIMEOUT = 30.0

_api_key: str | None = None
_lock = threading.RLock()


def auth_path() -> Path:
    return data_dir() / "auth.json"


def credentials_path() -> Path:
    return data_dir() / "credentials.json"


def _load(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            value = json.load(stream)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise QuiltException(f"Cannot read {path}: {exc}") from None
    return value if isinstance(value, dict) else {}


def _save(path: Path, value: dict[str, Any]) -> None:
    """Write JSON like quilt3 (`json.dump` defaults), via a 0600 temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(str(path)) as stream:
        stream.write(json.dumps(value).encode("utf-8"))


def load_auth() -> dict[str, Any]:
    return _load(auth_path())


def save_auth(value: dict[str, Any]) -> None:
    _save(auth_path(), value)


def load_credentials() -> dict[str, Any]:
    return _load(credentials_path())


def save_credentials(value: dict[str, Any]) -> None:
    _save(credentials_path(), value)


def _registry_url_or_none() -> str | None:
    value = get_from_config("registryUrl")
    return str(value) if value else None


def update_auth(refresh_token: str, timeout: float | None = TOKEN_TIMEOUT) -> dict[str, Any]:
    """Exchange a refresh token at `POST <registryUrl>/api/token` (plain client, form-encoded)."""
    url = catalog.registry_url()
    try:
        response = requests.post(f"{url}/api/token", timeout=timeout, data={"refresh_token": refresh_token})
    except requests.RequestException as exc:
        raise QuiltException(f"Failed to connect: {exc}") from None
    if response.status_code != 200:
        raise QuiltException(f"Authentication error: {response.status_code}")
    try:
        data = response.json()
    except ValueError:
        raise catalog.InvalidCatalogResponse(
            f"The catalog at {url} answered /api/token with something that is not JSON") from None
    if not isinstance(data, dict):
        raise catalog.InvalidCatalogResponse(
            f"The catalog at {url} answered /api/token with a JSON {catalog.json_kind(data)}, not an object")
    if data.get("error") is not None:
        raise QuiltException(f"Failed to log in: {data['error']}")
    try:
        result = {"refresh_token": data["refresh_token"], "access_token": data["access_token"],
                  "expires_at": data["expires_at"]}
    except KeyError as exc:
        raise catalog.InvalidCatalogResponse(f"The catalog's /api/token answer lacks {exc}") from None
    if not isinstance(result["expires_at"], (int, float)) or isinstance(result["expires_at"], bool):
        raise catalog.InvalidCatalogResponse("The catalog's /api/token answer has a non-numeric expires_at")
    if not all(isinstance(result[key], str) and result[key] for key in ("refresh_token", "access_token")):
        raise catalog.InvalidCatalogResponse("The catalog's /api/token answer has a token that is not a string")
    return result


def current_token() -> str | None:
    """The bearer token for the next catalog request: the API key if set, else the stored access token of
    the current registry, refreshed first when it expires within a minute; None when not logged in."""
    with _lock:
        if _api_key is not None:
            return _api_key
        url = _registry_url_or_none()
        if url is None:
            return None
        contents = load_auth()
        entry = contents.get(url)
        if not isinstance(entry, dict):
            return None
        expires_at = entry.get("expires_at")
        if not isinstance(expires_at, (int, float)) or expires_at < time.time() + REFRESH_MARGIN:
            try:
                entry = update_auth(entry.get("refresh_token", ""))
            except QuiltException as exc:
                raise QuiltException(f"Failed to update the access token ({exc}). "
                                     "Run `quiltmount login` (or `quilt3 login`) again.") from None
            contents = load_auth()  # another process may have written meanwhile
            contents[url] = entry
            save_auth(contents)
        return entry.get("access_token")


catalog.set_token_provider(current_token)


def _read_code() -> str:
    """The code the user pastes: read without echo on a terminal (getpass), else a line of stdin.  Ctrl-D at
    the prompt gives `""` (login cancelled) instead of quilt3's EOFError traceback."""
    prompt = "Enter the code from the webpage: "
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            return getpass.getpass(prompt)
        except EOFError:
            print()
            return ""
    print(prompt, end="", flush=True)
    line = sys.stdin.readline() if sys.stdin is not None else ""
    print()
    return line.strip()


def login() -> None:
    """Interactive login: open `<registryUrl>/login`, read the code (a refresh token), store the tokens."""
    url = _registry_url_or_none()
    if url is None:
        raise QuiltException(
            "You attempted to authenticate to a Quilt catalog, but your home catalog is currently set to None. "
            "Please first specify your home catalog by running \"quilt3.config('$URL')\" "
            "(or `quiltmount config URL`), replacing '$URL' with your catalog homepage.")
    login_url = f"{url}/login"
    print("Launching a web browser...")
    print(f"If that didn't work, please visit the following URL: {login_url}")
    try:
        webbrowser.open(login_url)
    except Exception as exc:  # noqa: BLE001 - a missing browser must not stop the login
        print(f"Failed to launch the browser: {exc}")
    print()
    code = _read_code().strip()
    if not code:
        raise QuiltException("No code entered; login cancelled.")
    login_with_token(code)


def login_with_token(refresh_token: str) -> None:
    """Exchange `refresh_token`, store the tokens in auth.json and the stack's AWS credentials."""
    with _lock:
        auth = update_auth(refresh_token)
        url = _registry_url_or_none()  # the key quilt3 uses: registryUrl exactly as configured
        contents = load_auth()
        contents[url] = auth
        save_auth(contents)
    catalog.clear_session()
    get_credentials()


def logout() -> None:
    """Forget Quilt credentials: both files become `{}` and the API key is cleared."""
    global _api_key
    with _lock:
        if load_auth() or load_credentials() or _api_key is not None:
            save_auth({})
            save_credentials({})
            _api_key = None
        else:
            print("Already logged out.")
    catalog.clear_session()


def logged_in() -> str | None:
    """The catalog URL (`navigator_url`) if authenticated (API key or auth.json entry), else None."""
    if _api_key is not None or _registry_url_or_none() in load_auth():
        return get_from_config("navigator_url")
    return None


#: The environment variable an API key is taken from by default (the CLI and the mount daemon).
API_KEY_ENV = "QUILT_API_KEY"


def login_with_api_key(key: str) -> None:
    """Use an API key (`qk_...`) for catalog requests; kept in memory only, never written to disk."""
    global _api_key
    if not key.startswith("qk_"):
        raise ValueError("API key must start with 'qk_' prefix")
    with _lock:
        _api_key = key
    catalog.clear_session()


def login_with_api_key_from_env(variable: str | None = None) -> bool:
    """Use the API key in environment variable `variable` (default `QUILT_API_KEY`, if set): keys come from
    the environment, never from argv or a file.  True if a key is now in use; ValueError with a one-line
    reason if the named variable is unset or its value is not an API key."""
    value = os.environ.get(variable or API_KEY_ENV)
    if variable and not value:
        raise ValueError(f"{variable}: the environment variable is not set")
    if not value:
        return False
    try:
        login_with_api_key(value.strip())
    except ValueError as exc:
        raise ValueError(f"{variable or API_KEY_ENV}: {exc}") from None
    return True


def clear_api_key() -> None:
    global _api_key
    with _lock:
        _api_key = None
    catalog.clear_session()


_CREDENTIAL_FIELDS = ("access_key", "secret_key", "token", "expiry_time")


def _credentials_problem(value: Any) -> str | None:
    """Why `value` is not credentials.json's shape, or None: four strings, `expiry_time` a time botocore can
    parse, with a time zone (botocore compares it with an aware "now": a naive time is a TypeError there, in
    quilt3 too)."""
    from dateutil.parser import parse  # what botocore's refreshable credentials parse the expiry with

    if not isinstance(value, dict) or not all(isinstance(value.get(key), str) for key in _CREDENTIAL_FIELDS):
        return "a field is missing or not a string"
    try:
        expiry = parse(value["expiry_time"])
    except (ValueError, OverflowError):
        return "the expiry time is not a time"
    if expiry.tzinfo is None:
        return "the expiry time has no time zone"
    return None


def get_credentials() -> dict[str, Any]:
    """Fetch AWS credentials from `GET <registryUrl>/api/auth/get_credentials`, save credentials.json."""
    creds = catalog.get_json("/api/auth/get_credentials")
    try:
        result = {"access_key": creds["AccessKeyId"], "secret_key": creds["SecretAccessKey"],
                  "token": creds["SessionToken"], "expiry_time": creds["Expiration"]}
    except (KeyError, TypeError):
        result = None
    problem = _credentials_problem(result)
    if problem:  # never quote the answer: it holds secrets
        raise catalog.InvalidCatalogResponse(
            f"The catalog's /api/auth/get_credentials answer is not a set of AWS credentials: {problem}")
    save_credentials(result)
    return result


def _botocore_session(credentials: dict[str, Any]):
    import botocore.session
    from botocore.credentials import CredentialProvider, CredentialResolver, RefreshableCredentials

    class QuiltProvider(CredentialProvider):
        METHOD = "quilt-registry"
        CANONICAL_NAME = "QuiltRegistry"

        def load(self):
            return RefreshableCredentials.create_from_metadata(
                metadata=credentials, method=self.METHOD, refresh_using=get_credentials)

    session = botocore.session.get_session()
    session.register_component("credential_provider", CredentialResolver([QuiltProvider()]))
    return session


def get_boto3_session(*, fallback: bool = True):
    """A boto3 session with the stack's refreshable AWS credentials and the config `region`; without
    stack credentials a default `boto3.Session()` if `fallback`, else `QuiltException`."""
    import boto3

    credentials = load_credentials()
    if not credentials:
        if fallback:
            return boto3.Session()
        raise QuiltException("No Quilt credentials found.")
    problem = _credentials_problem(credentials)
    if problem:
        raise QuiltException(f"{credentials_path()} does not hold AWS credentials (access_key, secret_key, token, "
                             f"expiry_time): {problem}; run `quiltmount login` (or `quilt3 login`) again.")
    return boto3.Session(botocore_session=_botocore_session(credentials), region_name=get_from_config("region"))


__all__ = ["auth_path", "clear_api_key", "credentials_path", "current_token", "get_boto3_session",
           "get_credentials", "logged_in", "login", "login_with_api_key", "login_with_token", "logout"]
