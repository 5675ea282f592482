"""The catalog test double (tests/catalog.py) against the REAL quilt3 client.

The double is only useful if it speaks what quilt3 speaks, so every test drives quilt3 8.0.0's public (or
documented) functions against it and checks both quilt3's results and the HTTP requests the double recorded.
quilt3 keeps process-wide state (the HTTP session, the API key) and writes config.yml/auth.json/
credentials.json in the isolated data dir; the `qc` fixture resets all of it around every test.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest
import requests

from catalog import CatalogDouble
from test_registry import q3, quilt3_module  # noqa: F401  (fixtures)


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture
def catalog(s3_server):
    with CatalogDouble(s3_server.endpoint_url) as double:
        yield double


@pytest.fixture
def qc(q3, catalog):
    """quilt3, logged out, with no API key, configured against `catalog`; state restored afterwards."""
    from quilt3.util import CONFIG_PATH

    saved_config = CONFIG_PATH.read_bytes() if CONFIG_PATH.exists() else None
    _reset(q3)
    q3.config(catalog.url)
    yield q3
    _reset(q3)
    if saved_config is None:
        CONFIG_PATH.unlink(missing_ok=True)
    else:
        CONFIG_PATH.write_bytes(saved_config)


def _reset(quilt3) -> None:
    quilt3.session.clear_api_key()
    quilt3.session._save_auth({})
    quilt3.session._save_credentials({})
    quilt3.session.clear_session()


def _login(quilt3, catalog: CatalogDouble) -> None:
    quilt3.session.login_with_token(catalog.issue_refresh_token())


def _requests(catalog: CatalogDouble, path: str) -> list[dict]:
    return [r for r in catalog.requests if r["path"] == path]


def _versioned_bucket(s3) -> str:
    name = f"cat-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


# ---------------------------------------------------------------------------------------------- config

def test_autoconfig_writes_config_yml_as_the_spec_shows(qc, catalog):
    from quilt3.util import BASE_PATH, CONFIG_PATH

    expected = (
        f"apiGatewayEndpoint: {catalog.url}/apigw\n"
        "binaryApiGatewayEndpoint: null\n"
        "default_install_location: null\n"
        f"default_local_registry: file://{BASE_PATH}/packages\n"
        "default_registry_version: 1\n"
        "default_remote_registry: null\n"
        f"navigator_url: {catalog.url}\n"
        "region: us-east-1\n"
        f"registryUrl: {catalog.url}\n"
        f"s3Proxy: {catalog.url}/proxy\n"
        "telemetry_disabled: false\n"
    )
    assert CONFIG_PATH.read_text() == expected
    (config_request,) = _requests(catalog, "/config.json")
    assert config_request["method"] == "GET"
    assert "Authorization" not in config_request["headers"]
    assert qc.logged_in() is None


def test_config_json_and_unknown_paths(catalog):
    config = requests.get(f"{catalog.url}/config.json", timeout=10).json()
    assert config["registryUrl"] == catalog.url
    assert config["mode"] == "PRODUCT" and config["region"] == "us-east-1"
    response = requests.get(f"{catalog.url}/no/such/thing", timeout=10)
    assert response.status_code == 401  # auth is checked first
    assert "message" in response.json()


# ---------------------------------------------------------------------------------------------- login

def test_login_page_code_logs_quilt3_in(qc, catalog):
    from quilt3.session import AUTH_PATH, CREDENTIALS_PATH

    page = requests.get(f"{catalog.url}/login", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    code = re.search(r'<pre id="code">([^<]+)</pre>', page.text).group(1)

    qc.session.login_with_token(code)  # what quilt3.login() does with the pasted code

    auth = json.loads(AUTH_PATH.read_text())
    entry = auth[catalog.url]
    assert set(entry) == {"refresh_token", "access_token", "expires_at"}
    assert entry["refresh_token"] != code  # rotated
    assert time.time() + 3000 < entry["expires_at"] < time.time() + 3700
    assert AUTH_PATH.stat().st_mode & 0o777 == 0o600

    creds = json.loads(CREDENTIALS_PATH.read_text())
    assert creds["access_key"] == "testing" and creds["secret_key"] == "testing"
    assert creds["token"].startswith("catalog-double-session-")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", creds["expiry_time"])

    assert qc.logged_in() == catalog.url

    (token_request,) = _requests(catalog, "/api/token")
    assert token_request["method"] == "POST"
    assert token_request["body"] == f"refresh_token={code}"
    assert "Authorization" not in token_request["headers"]
    (creds_request,) = _requests(catalog, "/api/auth/get_credentials")
    assert creds_request["headers"]["Authorization"] == f"Bearer {entry['access_token']}"
    assert creds_request["headers"]["User-Agent"].startswith("quilt-python/")


def test_refresh_tokens_work_once_and_unknown_ones_fail(qc, catalog):
    code = catalog.issue_refresh_token()
    qc.session.login_with_token(code)
    with pytest.raises(qc.util.QuiltException, match="^Failed to log in: Invalid refresh token$"):
        qc.session.login_with_token(code)
    with pytest.raises(qc.util.QuiltException, match="^Failed to log in: "):
        qc.session.login_with_token("made-up")


def test_short_lived_access_token_is_refreshed_at_session_creation(qc, catalog):
    from quilt3.session import AUTH_PATH

    catalog.access_ttl = 30  # < 60 s: quilt3 refreshes whenever it creates a session
    _login(qc, catalog)
    before = json.loads(AUTH_PATH.read_text())[catalog.url]
    token_calls = len(_requests(catalog, "/api/token"))

    qc.session.clear_session()
    assert qc.api_keys.list() == []

    after = json.loads(AUTH_PATH.read_text())[catalog.url]
    assert len(_requests(catalog, "/api/token")) == token_calls + 1
    assert _requests(catalog, "/api/token")[-1]["body"] == f"refresh_token={before['refresh_token']}"
    assert after["access_token"] != before["access_token"]
    assert _requests(catalog, "/graphql")[-1]["headers"]["Authorization"] == f"Bearer {after['access_token']}"


def test_expired_access_token_gets_401_until_a_new_session(qc, catalog):
    catalog.access_ttl = 1.0
    _login(qc, catalog)
    time.sleep(1.2)
    # quilt3 keeps using the session (and its token) it created during login
    with pytest.raises(qc.util.QuiltException, match="^Authentication failed. Check your credentials or API key.$"):
        qc.api_keys.list()
    qc.session.clear_session()  # a new session refreshes the token first
    assert qc.api_keys.list() == []


def test_requests_without_a_token_get_401(qc, catalog, s3):
    bucket = _versioned_bucket(s3)
    auth_failed = "^Authentication failed. Check your credentials or API key.$"
    with pytest.raises(qc.util.QuiltException, match=auth_failed):
        qc.api_keys.list()
    with pytest.raises(qc.util.QuiltException, match=auth_failed):
        qc.search("anything")
    with pytest.raises(qc.util.QuiltException, match=auth_failed):
        qc.Bucket(f"s3://{bucket}").search("anything")
    with pytest.raises(qc.util.QuiltException, match=auth_failed):
        qc.session._refresh_credentials()
    qc.session.login_with_api_key("qk_not-a-real-key")
    with pytest.raises(qc.util.QuiltException, match=auth_failed):
        qc.api_keys.list()

    for path in ("/graphql", "/api/search", "/api/auth/get_credentials"):
        for r in _requests(catalog, path):
            assert r["headers"].get("Authorization") in (None, "Bearer qk_not-a-real-key")
    response = requests.get(f"{catalog.url}/api/auth/get_credentials", timeout=10)
    assert response.status_code == 401 and response.json()["message"]
    response = requests.get(f"{catalog.url}/api/auth/get_credentials", timeout=10,
                            headers={"Authorization": "Bearer access-forged"})
    assert response.status_code == 401 and response.json()["message"]


# ---------------------------------------------------------------------------------------------- API keys

def test_api_keys_lifecycle(qc, catalog):
    _login(qc, catalog)
    assert qc.api_keys.list() == []

    key, secret = qc.api_keys.create("ci", expires_in_days=30)
    assert secret.startswith("qk_")
    assert key.name == "ci" and key.status == "ACTIVE" and key.user_email == "user@example.com"
    assert key.last_used_at is None
    assert key.created_at.tzinfo is not None
    assert 29.9 < (key.expires_at - key.created_at).total_seconds() / 86400 < 30.1
    other, _ = qc.api_keys.create("laptop")

    assert {k.id for k in qc.api_keys.list()} == {key.id, other.id}
    assert qc.api_keys.list(name="ci") == [key]
    assert qc.api_keys.list(fingerprint=other.fingerprint) == [other]
    assert len(qc.api_keys.list(status="ACTIVE")) == 2
    assert qc.api_keys.list(status="EXPIRED") == []
    assert qc.api_keys.list(name="nope") == []
    assert qc.api_keys.get(key.id) == key
    assert qc.api_keys.get("no-such-id") is None

    create_request = [r for r in _requests(catalog, "/graphql") if '"apiKeyCreate"' in r["body"]][0]
    body = json.loads(create_request["body"])
    assert body["operationName"] == "apiKeyCreate"
    assert body["variables"] == {"input": {"name": "ci", "expiresInDays": 30}}

    # the secret works as a credential, and last_used_at gets set
    qc.session.login_with_api_key(secret)
    assert len(qc.api_keys.list()) == 2
    assert _requests(catalog, "/graphql")[-1]["headers"]["Authorization"] == f"Bearer {secret}"
    assert qc.api_keys.get(key.id).last_used_at is not None

    # revoke by secret, then the secret is refused
    qc.api_keys.revoke(secret=secret)
    with pytest.raises(qc.util.QuiltException, match="^Authentication failed"):
        qc.api_keys.list()
    qc.session.clear_api_key()

    qc.api_keys.revoke(id=other.id)
    assert qc.api_keys.list() == []


def test_api_key_errors(qc, catalog):
    _login(qc, catalog)
    qc.api_keys.create("taken")
    with pytest.raises(qc.api_keys.APIKeyError, match="Name taken") as info:
        qc.api_keys.create("taken")
    (error,) = info.value.result.errors
    assert (error.path, error.name) == ("input.name", "Conflict")
    with pytest.raises(qc.api_keys.APIKeyError, match="input.name"):
        qc.api_keys.create("")
    with pytest.raises(qc.api_keys.APIKeyError, match="expiresInDays"):
        qc.api_keys.create("too-long", expires_in_days=1000)
    with pytest.raises(qc.api_keys.APIKeyError, match="not found"):
        qc.api_keys.revoke(id="no-such-id")
    with pytest.raises(qc.api_keys.APIKeyError, match="not found"):
        qc.api_keys.revoke(secret="qk_unknown")
    with pytest.raises(ValueError, match="Must provide either id or secret"):
        qc.api_keys.revoke()
    assert [k.name for k in qc.api_keys.list()] == ["taken"]


def test_unknown_graphql_operation_is_a_graphql_error(qc, catalog):
    _login(qc, catalog)
    response = qc.session.get_session().post(f"{catalog.url}/graphql",
                                             json={"query": "query x { me { name } }", "operationName": "x",
                                                   "variables": {}})
    assert response.status_code == 200
    assert response.json()["errors"][0]["message"]


# ---------------------------------------------------------------------------------------------- credentials

def test_get_boto3_session_works_against_moto(qc, catalog, s3):
    bucket = _versioned_bucket(s3)
    s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hi")
    with pytest.raises(qc.util.QuiltException, match="No Quilt credentials found"):
        qc.get_boto3_session(fallback=False)
    _login(qc, catalog)

    session = qc.get_boto3_session(fallback=False)
    assert session.region_name == "us-east-1"
    frozen = session.get_credentials().get_frozen_credentials()
    assert frozen.token == json.loads(qc.session.CREDENTIALS_PATH.read_text())["token"]
    listing = session.client("s3").list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listing["Contents"]] == ["hello.txt"]


def test_expiring_credentials_are_refreshed_through_the_catalog(qc, catalog, s3):
    bucket = _versioned_bucket(s3)
    catalog.credentials_ttl = 300  # inside botocore's refresh window (15 min advisory)
    _login(qc, catalog)
    first = json.loads(qc.session.CREDENTIALS_PATH.read_text())
    calls = len(_requests(catalog, "/api/auth/get_credentials"))

    qc.get_boto3_session().client("s3").list_objects_v2(Bucket=bucket)

    assert len(_requests(catalog, "/api/auth/get_credentials")) > calls
    assert json.loads(qc.session.CREDENTIALS_PATH.read_text())["token"] != first["token"]


# ---------------------------------------------------------------------------------------------- search

@pytest.fixture
def search_data(qc, catalog, s3, tmp_path: Path):
    """Two buckets: one with plain objects and a pushed package, one with an unrelated object."""
    bucket, other = _versioned_bucket(s3), _versioned_bucket(s3)
    s3.put_object(Bucket=bucket, Key="data/alpha.csv", Body=b"a,b\n1,2\n")
    s3.put_object(Bucket=bucket, Key="notes/beta.txt", Body=b"beta\n")
    s3.put_object(Bucket=other, Key="elsewhere/alpha-copy.csv", Body=b"x\n")
    (tmp_path / "gamma.txt").write_bytes(b"gamma\n")
    pkg = qc.Package().set("gamma.txt", str(tmp_path / "gamma.txt"))
    pushed = pkg.push("demo/gamma", registry=f"s3://{bucket}", message="first revision", force=True)
    _login(qc, catalog)
    return bucket, other, pushed.top_hash


def test_search_all_indexes_for_objects(qc, catalog, s3, search_data):
    bucket, other, _ = search_data
    hits = qc.search("alpha", limit=50)
    by_key = {h["_source"]["key"]: h for h in hits if h["_index"] in (bucket, other)}
    assert set(by_key) >= {"data/alpha.csv", "elsewhere/alpha-copy.csv"}
    hit = by_key["data/alpha.csv"]
    head = s3.head_object(Bucket=bucket, Key="data/alpha.csv")
    assert hit["_index"] == bucket
    assert hit["_id"] == f"data/alpha.csv:{head['VersionId']}"
    source = hit["_source"]
    assert source["version_id"] == head["VersionId"] and source["size"] == 8
    assert source["etag"] == head["ETag"].strip('"') and source["ext"] == ".csv"
    assert "beta" not in json.dumps(hits)

    request = _requests(catalog, "/api/search")[-1]
    assert request["query"] == {"index": "_all", "action": "search", "query": "alpha", "size": "50"}
    assert request["headers"]["Authorization"].startswith("Bearer access-")


def test_bucket_search_for_packages_and_objects(qc, catalog, search_data):
    bucket, _, top_hash = search_data
    b = qc.Bucket(f"s3://{bucket}")

    hits = b.search("demo/gamma")
    pointer_hits = [h for h in hits if "ptr_name" in h["_source"]]
    assert {h["_source"]["ptr_tag"] for h in pointer_hits} >= {"latest"} and len(pointer_hits) == 2
    assert all(h["_index"] == f"{bucket}_packages" for h in pointer_hits)
    # push copied the file to demo/gamma/gamma.txt: an object hit in the bucket's own index
    assert [h["_source"]["key"] for h in hits if h["_index"] == bucket] == ["demo/gamma/gamma.txt"]
    assert _requests(catalog, "/api/search")[-1]["query"]["index"] == f"{bucket},{bucket}_packages"

    keys = [h["_source"].get("key") for h in b.search("ext:.csv")]
    assert keys == ["data/alpha.csv"]  # not the other bucket's csv, not .quilt/ objects

    (manifest,) = [h for h in b.search({"query": {"term": {"mnfst_hash": top_hash}}})
                   if "mnfst_message" in h["_source"]]
    assert manifest["_source"]["mnfst_message"] == "first revision"
    assert manifest["_source"]["mnfst_stats"] == {"total_bytes": 6, "total_files": 1}

    (latest,) = b.search({"query": {"bool": {"must": [{"term": {"ptr_tag": "latest"}},
                                                       {"match": {"ptr_name": "gamma"}}]}}})
    assert latest["_source"]["mnfst_hash"] == top_hash


def test_freeform_search(qc, catalog, search_data):
    bucket, _, _ = search_data
    b = qc.Bucket(f"s3://{bucket}")
    everything = b.search({"query": {"match_all": {}}}, limit=100)
    assert {h["_index"] for h in everything} == {bucket, f"{bucket}_packages"}
    assert len(b.search({"query": {"match_all": {}}}, limit=2)) == 2
    assert [h["_source"]["key"] for h in b.search({"query": {"match": {"key": "beta"}}})] == ["notes/beta.txt"]
    assert sorted(h["_source"]["key"] for h in b.search({"query": {"query_string": {"query": "key:*.txt"}}})) \
        == ["demo/gamma/gamma.txt", "notes/beta.txt"]
    entries = b.search({"query": {"match": {"entry_lk": "gamma.txt"}}})
    assert [h["_source"]["entry_size"] for h in entries] == [6]

    request = _requests(catalog, "/api/search")[-1]
    assert request["query"]["action"] == "freeform"
    assert json.loads(request["query"]["body"]) == {"query": {"match": {"entry_lk": "gamma.txt"}}}

    with pytest.raises(qc.util.QuiltException, match="no such index"):
        qc.Bucket("s3://no-such-bucket-here").search("x")
    with pytest.raises(qc.util.QuiltException, match="Unsupported query"):
        b.search({"query": {"geo_shape": {"x": {}}}})
