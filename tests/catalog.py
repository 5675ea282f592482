"""A test double of a Quilt catalog ("Quilt stack") speaking the real HTTP protocol (spec sections 1.4, 2, 3, 4).

It runs a Flask app with werkzeug's threaded server on 127.0.0.1 (free port) and answers from the objects and
packages actually present in an S3 server (the moto test server), listed at request time:

* ``GET /config.json``                 the catalog config autoconfig reads (no auth)
* ``GET /login``                       an HTML page showing a fresh refresh token, the "code" (no auth)
* ``POST /api/token``                  form ``refresh_token`` -> ``{refresh_token, access_token, expires_at}``;
                                       refresh tokens rotate (each works once); unknown token -> ``{"error"}``
* ``GET /api/auth/get_credentials``    STS-style AWS credentials that moto accepts
* ``POST /graphql``                    the four API-key operations of ``quilt3.api_keys``
* ``GET /api/search``                  ``action=search`` (query string) and ``action=freeform`` (JSON DSL)

Every other endpoint requires ``Authorization: Bearer <access token or API key>``; otherwise 401.
Every error body is JSON with a ``message``.  All requests are recorded in ``requests``.

Usage::

    with CatalogDouble(s3_server.endpoint_url) as catalog:
        quilt3.config(catalog.url)
        quilt3.session.login_with_token(catalog.issue_refresh_token())
"""

from __future__ import annotations

import fnmatch
import hashlib
import html
import json
import re
import secrets
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import boto3
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

POINTERS_PREFIX = ".quilt/named_packages/"
MANIFESTS_PREFIX = ".quilt/packages/"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


def _error(status: int, message: str, **extra: Any) -> Response:
    return _json({"message": message, **extra}, status)


class CatalogDouble:
    """A fake Quilt catalog on 127.0.0.1, backed by the S3 server at ``s3_endpoint_url``."""

    access_ttl: float = 3600
    credentials_ttl: float = 3600
    #: HTTP status of the ``/api/token`` answer for an unknown refresh token (quilt3 reads ``error`` on 200).
    token_error_status: int = 200

    def __init__(self, s3_endpoint_url: str, *, region: str = "us-east-1",
                 user_email: str = "user@example.com") -> None:
        self.s3_endpoint_url = s3_endpoint_url
        self.region = region
        self.user_email = user_email
        self.url = ""
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._refresh_tokens: set[str] = set()
        self._access_tokens: dict[str, float] = {}  # token -> expires_at
        self._api_keys: dict[str, dict] = {}  # id -> record (incl. "secret")
        self._credential_count = 0
        self._server = None
        self._thread: threading.Thread | None = None
        self._s3 = boto3.client(
            "s3", endpoint_url=s3_endpoint_url, region_name=region,
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
        self.app = self._make_app()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> CatalogDouble:
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="catalog-double", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> CatalogDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ tokens

    def issue_refresh_token(self) -> str:
        """A new refresh token: what the /login page would show the user (the "code")."""
        token = "refresh-" + secrets.token_hex(16)
        with self._lock:
            self._refresh_tokens.add(token)
        return token

    def _exchange(self, refresh_token: str) -> dict | None:
        with self._lock:
            if refresh_token not in self._refresh_tokens:
                return None
            self._refresh_tokens.discard(refresh_token)  # rotation: a refresh token works once
            new_refresh = "refresh-" + secrets.token_hex(16)
            access = "access-" + secrets.token_hex(16)
            expires_at = time.time() + self.access_ttl
            self._refresh_tokens.add(new_refresh)
            self._access_tokens[access] = expires_at
        return {"refresh_token": new_refresh, "access_token": access, "expires_at": expires_at}

    def _authenticate(self) -> str | None:
        """None if the request carries a valid access token or API key, else the reason."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return "Missing bearer token"
        token = header[len("Bearer "):].strip()
        now = time.time()
        with self._lock:
            if token.startswith("qk_"):
                for key in self._api_keys.values():
                    if key["secret"] == token:
                        if key["expires_at"] <= now:
                            return "API key expired"
                        key["last_used_at"] = now
                        return None
                return "Invalid API key"
            expires_at = self._access_tokens.get(token)
        if expires_at is None:
            return "Invalid access token"
        if expires_at <= now:
            return "Access token expired"
        return None

    # ------------------------------------------------------------------ app

    def _make_app(self) -> Flask:
        app = Flask("catalog_double")

        @app.before_request
        def record() -> Response | None:
            self.requests.append({
                "method": request.method,
                "path": request.path,
                "query": request.args.to_dict(flat=True),
                "headers": dict(request.headers),
                "body": request.get_data(cache=True, as_text=True),
            })
            if request.path in ("/config.json", "/login", "/api/token"):
                return None
            reason = self._authenticate()
            if reason is not None:
                return _error(401, f"Unauthorized: {reason}")
            return None

        @app.errorhandler(HTTPException)
        def http_error(exc: HTTPException) -> Response:
            return _error(exc.code or 500, f"{exc.name}: {request.method} {request.path}")

        @app.errorhandler(Exception)
        def internal(exc: Exception) -> Response:
            return _error(500, f"Internal error: {type(exc).__name__}: {exc}")

        @app.get("/config.json")
        def config_json() -> Response:
            return _json(self.config())

        @app.get("/login")
        def login_page() -> Response:
            code = html.escape(self.issue_refresh_token())
            page = ("<!doctype html><html><head><title>Quilt: code</title></head><body>"
                    "<p>Paste this code into the Quilt client:</p>"
                    f'<pre id="code">{code}</pre></body></html>')
            return Response(page, mimetype="text/html")

        @app.post("/api/token")
        def token() -> Response:
            refresh_token = request.form.get("refresh_token", "")
            result = self._exchange(refresh_token)
            if result is None:
                return _json({"error": "Invalid refresh token", "message": "Invalid refresh token"},
                             self.token_error_status)
            return _json(result)

        @app.get("/api/auth/get_credentials")
        def get_credentials() -> Response:
            with self._lock:
                self._credential_count += 1
                n = self._credential_count
            return _json({
                "AccessKeyId": "testing",
                "SecretAccessKey": "testing",
                "SessionToken": f"catalog-double-session-{n}",
                "Expiration": _iso(time.time() + self.credentials_ttl),
            })

        @app.post("/graphql")
        def graphql() -> Response:
            body = request.get_json(force=True, silent=True)
            if not isinstance(body, dict):
                return _error(400, "Request body must be a JSON object")
            operation = body.get("operationName")
            variables = body.get("variables") or {}
            handler = {
                "apiKeysList": self._gql_list,
                "apiKeyGet": self._gql_get,
                "apiKeyCreate": self._gql_create,
                "apiKeyRevoke": self._gql_revoke,
            }.get(operation)
            if handler is None:
                return _json({"data": None, "errors": [{"message": f"Unsupported operation: {operation!r}"}]})
            return _json({"data": handler(variables)})

        @app.get("/api/search")
        def search() -> Response:
            return self._search()

        return app

    def config(self) -> dict:
        return {
            "registryUrl": self.url,
            "region": self.region,
            "apiGatewayEndpoint": f"{self.url}/apigw",
            "s3Proxy": f"{self.url}/proxy",
            "mode": "PRODUCT",
            "alwaysRequiresAuth": True,
            "noDownload": False,
            "passwordAuth": "DISABLED",
            "ssoAuth": "ENABLED",
            "ssoProviders": "",
            "serviceBucket": "",
            "analyticsBucket": "",
            "stackVersion": "0.0.0-catalog-double",
            "packageRoot": "",
            "crc64Checksums": False,
        }

    # ------------------------------------------------------------------ GraphQL: API keys

    def _key_view(self, key: dict, now: float) -> dict:
        return {
            "id": key["id"],
            "name": key["name"],
            "fingerprint": key["fingerprint"],
            "createdAt": _iso(key["created_at"]),
            "expiresAt": _iso(key["expires_at"]),
            "lastUsedAt": _iso(key["last_used_at"]) if key["last_used_at"] is not None else None,
            "status": "ACTIVE" if key["expires_at"] > now else "EXPIRED",
            "userEmail": key["user_email"],
        }

    @staticmethod
    def _invalid(path: str | None, message: str, name: str) -> dict:
        return {"__typename": "InvalidInput",
                "errors": [{"path": path, "message": message, "name": name, "context": None}]}

    def _gql_list(self, variables: dict) -> dict:
        now = time.time()
        with self._lock:
            views = [self._key_view(k, now) for k in self._api_keys.values()]
        for field in ("name", "fingerprint", "status"):
            wanted = variables.get(field)
            if wanted is not None:
                views = [v for v in views if v[field] == wanted]
        return {"me": {"apiKeys": views}}

    def _gql_get(self, variables: dict) -> dict:
        with self._lock:
            key = self._api_keys.get(str(variables.get("id")))
            view = self._key_view(key, time.time()) if key is not None else None
        return {"me": {"apiKey": view}}

    def _gql_create(self, variables: dict) -> dict:
        data = variables.get("input") or {}
        name = data.get("name")
        days = data.get("expiresInDays", 90)
        if not isinstance(name, str) or not name.strip():
            return {"apiKeyCreate": self._invalid("input.name", "Name must not be empty", "ValidationError")}
        if not isinstance(days, int) or not 1 <= days <= 365:
            return {"apiKeyCreate": self._invalid("input.expiresInDays",
                                                  "expiresInDays must be between 1 and 365", "ValidationError")}
        now = time.time()
        with self._lock:
            if any(k["name"] == name for k in self._api_keys.values()):
                return {"apiKeyCreate": self._invalid("input.name", "Name taken", "Conflict")}
            secret = "qk_" + secrets.token_urlsafe(32)
            key = {
                "id": str(uuid.uuid4()),
                "name": name,
                "fingerprint": "qk_" + hashlib.sha256(secret.encode()).hexdigest()[:12],
                "created_at": now,
                "expires_at": now + days * 86400,
                "last_used_at": None,
                "user_email": self.user_email,
                "secret": secret,
            }
            self._api_keys[key["id"]] = key
            view = self._key_view(key, now)
        return {"apiKeyCreate": {"__typename": "APIKeyCreated", "apiKey": view, "secret": secret}}

    def _gql_revoke(self, variables: dict) -> dict:
        key_id, secret = variables.get("id"), variables.get("secret")
        if key_id is None and secret is None:
            return {"apiKeyRevoke": self._invalid(None, "Either id or secret is required", "ValidationError")}
        with self._lock:
            for key in list(self._api_keys.values()):
                if (key_id is not None and key["id"] == key_id) or (secret is not None and key["secret"] == secret):
                    del self._api_keys[key["id"]]
                    return {"apiKeyRevoke": {"__typename": "Ok"}}
        path = "id" if key_id is not None else "secret"
        return {"apiKeyRevoke": self._invalid(path, "API key not found", "NotFound")}

    # ------------------------------------------------------------------ search

    def _search(self) -> Response:
        args = request.args
        action = args.get("action")
        try:
            size = int(args.get("size", 10))
        except ValueError:
            return _error(400, "size must be an integer")
        if action == "search":
            query = args.get("query")
            if query is None:
                return _error(400, "Missing parameter: query")
            predicate = _query_string_predicate(query, None)
        elif action == "freeform":
            try:
                body = json.loads(args.get("body", "{}"))
            except json.JSONDecodeError as exc:
                return _error(400, f"Invalid body: {exc}")
            if not isinstance(body, dict):
                return _error(400, "Invalid body: must be a JSON object")
            if "size" in body and "size" not in args:
                size = int(body["size"])
            try:
                predicate = _dsl_predicate(body.get("query", {"match_all": {}}))
            except ValueError as exc:
                return _error(400, str(exc))
        else:
            return _error(400, f"Unsupported action: {action!r}")

        try:
            docs = self._documents(args.get("index", "_all"))
        except LookupError as exc:
            return _error(404, str(exc))

        hits = []
        for index, doc_id, source in docs:
            score = predicate(source)
            if score:
                hits.append({"_index": index, "_type": "_doc", "_id": doc_id, "_score": float(score),
                             "_source": source})
        hits.sort(key=lambda h: -h["_score"])  # stable: ties keep listing order
        return _json({
            "took": 1,
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {"total": {"value": len(hits), "relation": "eq"},
                     "max_score": hits[0]["_score"] if hits else None,
                     "hits": hits[:max(size, 0)]},
        })

    def _documents(self, index_param: str) -> list[tuple[str, str, dict]]:
        existing = [b["Name"] for b in self._s3.list_buckets().get("Buckets", [])]
        wanted: list[tuple[str, str]] = []  # (bucket, "objects" | "packages")
        for name in filter(None, (part.strip() for part in index_param.split(","))):
            if name in ("_all", "*"):
                for bucket in existing:
                    wanted += [(bucket, "objects"), (bucket, "packages")]
            elif name.endswith("_packages") and name[:-len("_packages")] in existing:
                wanted.append((name[:-len("_packages")], "packages"))
            elif name in existing:
                wanted.append((name, "objects"))
            else:
                raise LookupError(f"no such index [{name}]")
        docs: list[tuple[str, str, dict]] = []
        for bucket, kind in dict.fromkeys(wanted):
            docs += self._object_docs(bucket) if kind == "objects" else self._package_docs(bucket)
        return docs

    def _object_docs(self, bucket: str) -> list[tuple[str, str, dict]]:
        docs = []
        paginator = self._s3.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=bucket):
            for version in page.get("Versions", []):
                key = version["Key"]
                if not version.get("IsLatest") or key.startswith(".quilt/"):
                    continue
                version_id = version.get("VersionId") or "null"
                name = key.rsplit("/", 1)[-1]
                ext = "." + name.rsplit(".", 1)[-1].lower() if "." in name.lstrip(".") else ""
                modified = version["LastModified"].astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                docs.append((bucket, f"{key}:{version_id}", {
                    "key": key,
                    "version_id": version_id,
                    "last_modified": modified,
                    "size": version["Size"],
                    "etag": version["ETag"].strip('"'),
                    "ext": ext,
                    "content": "",
                    "delete_marker": False,
                    "updated": modified,
                    "event": "ObjectCreated:Put",
                    "s3_tags": {},
                }))
        return docs

    def _package_docs(self, bucket: str) -> list[tuple[str, str, dict]]:
        index = f"{bucket}_packages"
        docs = []
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=POINTERS_PREFIX):
            for obj in page.get("Contents", []):
                parts = obj["Key"][len(POINTERS_PREFIX):].split("/")
                if len(parts) != 3 or not all(parts):
                    continue
                name, tag = f"{parts[0]}/{parts[1]}", parts[2]
                top_hash = self._s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                try:
                    top_hash = top_hash.decode().strip()
                except UnicodeDecodeError:  # not a pointer: the indexer skips it
                    continue
                docs.append((index, f"ptr:{name}:{tag}", {
                    "ptr_name": name,
                    "ptr_tag": tag,
                    "ptr_last_modified": obj["LastModified"].astimezone(timezone.utc).isoformat(),
                    "mnfst_hash": top_hash,
                    "delete_marker": False,
                }))
        for page in paginator.paginate(Bucket=bucket, Prefix=MANIFESTS_PREFIX):
            for obj in page.get("Contents", []):
                top_hash = obj["Key"][len(MANIFESTS_PREFIX):]
                if not re.fullmatch(r"[0-9a-f]{64}", top_hash):
                    continue
                raw = self._s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                try:  # a broken manifest is skipped, as the indexer would
                    lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
                except ValueError:
                    continue
                if not all(isinstance(line, dict) for line in lines):
                    continue
                header = lines[0] if lines else {}
                entries = [line for line in lines[1:]
                           if line.get("physical_keys") and isinstance(line.get("logical_key"), str)]
                docs.append((index, f"mnfst:{top_hash}", {
                    "mnfst_hash": top_hash,
                    "mnfst_last_modified": obj["LastModified"].astimezone(timezone.utc).isoformat(),
                    "mnfst_message": header.get("message"),
                    "mnfst_metadata": header.get("user_meta"),
                    "mnfst_stats": {"total_bytes": sum(e["size"] for e in entries if isinstance(e.get("size"), int)),
                                    "total_files": len(entries)},
                    "mnfst_workflow": header.get("workflow"),
                }))
                for entry in entries:
                    docs.append((index, f"entry:{top_hash}:{entry['logical_key']}", {
                        "entry_lk": entry["logical_key"],
                        "entry_pk": entry["physical_keys"][0],
                        "entry_size": entry.get("size"),
                        "entry_hash": entry.get("hash"),
                        "entry_metadata": (entry.get("meta") or {}).get("user_meta"),
                        "mnfst_hash": top_hash,
                    }))
        return docs


# ---------------------------------------------------------------------- matching (a tiny Elasticsearch)

# fields a bare query-string term is matched against (like the catalog's default fields)
DEFAULT_FIELDS = ("key", "ext", "content", "ptr_name", "ptr_tag", "mnfst_hash", "mnfst_message", "entry_lk")


def _field_values(source: dict, field: str) -> list[Any]:
    field = field.removesuffix(".keyword")
    if field in ("*", "_all"):
        return [source.get(f) for f in DEFAULT_FIELDS if source.get(f) is not None]
    value: Any = source
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return []
        value = value[part]
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _text_match(value: Any, term: str) -> bool:
    """Case-insensitive substring match; ``*``/``?`` make it a wildcard match of the whole value."""
    text, term = str(value).lower(), term.lower()
    if "*" in term or "?" in term:
        words = re.split(r"[/\s._-]+", text)
        return fnmatch.fnmatchcase(text, term) or any(fnmatch.fnmatchcase(w, term) for w in words)
    return term in text


def _query_string_predicate(query: str, default_field: str | None):
    """A predicate for an Elasticsearch query string: terms (``foo``, ``"a b"``, ``field:value``, wildcards),
    joined by OR (default) or AND; a leading ``-``/``NOT`` negates; ``*`` alone matches everything."""
    tokens = re.findall(r'-?(?:[\w.]+:)?"[^"]*"|\S+', query.strip())
    conjunction = any(t == "AND" for t in tokens)
    clauses: list[tuple[bool, str | None, str]] = []
    negate_next = False
    for token in tokens:
        if token in ("AND", "OR", "&&", "||"):
            continue
        if token == "NOT":
            negate_next = True
            continue
        negate = negate_next or token.startswith("-")
        negate_next = False
        token = token.lstrip("-+")
        field = default_field
        match = re.fullmatch(r'([\w.]+):(.*)', token)
        if match and not token.startswith('"'):
            field, token = match.group(1), match.group(2)
        clauses.append((negate, field, token.strip('"')))

    def predicate(source: dict) -> float:
        score = 0.0
        positives = 0
        for negate, field, term in clauses:
            if term == "*" and field is None:
                hit = True
            else:
                hit = any(_text_match(v, term) for v in _field_values(source, field or "*"))
            if negate:
                if hit:
                    return 0.0
                continue
            positives += 1
            if hit:
                score += 1.0
            elif conjunction:
                return 0.0
        if positives == 0:
            return 1.0 if clauses else 0.0
        return score

    return predicate


def _dsl_predicate(query: dict):
    """A predicate for a subset of the Elasticsearch query DSL: match_all, match, match_phrase, term, terms,
    prefix, wildcard, exists, query_string, simple_query_string, bool (must/filter/should/must_not)."""
    if not isinstance(query, dict) or len(query) != 1:
        raise ValueError(f"Unsupported query: {query!r}")
    (kind, spec), = query.items()
    if kind == "match_all":
        return lambda source: 1.0
    if kind in ("query_string", "simple_query_string"):
        fields = spec.get("fields") or [spec.get("default_field")]
        preds = [_query_string_predicate(spec["query"], f) for f in fields]
        return lambda source: max(p(source) for p in preds)
    if kind == "bool":
        def clauses(name: str) -> list:
            value = spec.get(name, [])
            return [_dsl_predicate(q) for q in (value if isinstance(value, list) else [value])]
        must, filt, should, must_not = (clauses(n) for n in ("must", "filter", "should", "must_not"))

        def bool_predicate(source: dict) -> float:
            if any(p(source) for p in must_not):
                return 0.0
            score = 0.0
            for p in must + filt:
                s = p(source)
                if not s:
                    return 0.0
                score += s
            should_scores = [p(source) for p in should]
            if should and not (must or filt) and not any(should_scores):
                return 0.0
            score += sum(should_scores)
            return score or 1.0
        return bool_predicate
    if kind == "exists":
        field = spec["field"]
        return lambda source: 1.0 if _field_values(source, field) else 0.0
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(f"Unsupported {kind} query: {spec!r}")
    (field, value), = spec.items()
    if isinstance(value, dict):
        value = value.get("query", value.get("value"))
    if kind in ("match", "match_phrase"):
        words = [str(value)] if kind == "match_phrase" else str(value).split()
        return lambda source: float(sum(any(_text_match(v, w) for v in _field_values(source, field))
                                        for w in words))
    if kind in ("term", "terms"):
        wanted = value if kind == "terms" else [value]
        return lambda source: 1.0 if any(v == w for v in _field_values(source, field) for w in wanted) else 0.0
    if kind == "prefix":
        return lambda source: 1.0 if any(str(v).startswith(str(value)) for v in _field_values(source, field)) else 0.0
    if kind == "wildcard":
        return lambda source: 1.0 if any(fnmatch.fnmatchcase(str(v), str(value))
                                         for v in _field_values(source, field)) else 0.0
    raise ValueError(f"Unsupported query type: {kind}")
