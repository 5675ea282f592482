"""Config, login state and catalog calls, compared with the real quilt3 8.0.0 on the same files.

quilt3 fixes its data directory at import time; both clients share the session's isolated one and every test
starts from an empty directory.  End-to-end tests run against the catalog double of tests/catalog.py
(backed by the moto server).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import stat
import subprocess
import sys
import time

import pytest

from quiltmount import api_keys, auth, catalog, quiltconfig as qconfig
from quiltmount.catalog_search import search
from quiltmount.errors import QuiltException


@pytest.fixture(scope="session")
def quilt3_module():
    """quilt3, imported after the isolated environment is in place (it reads XDG dirs at import)."""
    os.environ.setdefault("QUILT_DISABLE_USAGE_METRICS", "true")
    import quilt3

    return quilt3


@pytest.fixture
def clean(quilt3_module):
    """An empty quilt3 data directory, no API key and no cached session in either client."""
    import quilt3.session

    def reset() -> None:
        base = qconfig.data_dir()
        if base.exists():
            for path in base.iterdir():
                if path.name.startswith(("config.yml", "auth.json", "credentials.json")):
                    path.unlink()
        auth.clear_api_key()
        quilt3.session.clear_api_key()

    assert qconfig.data_dir() == quilt3_module.util.BASE_PATH
    reset()
    yield quilt3_module
    reset()


@pytest.fixture
def stack(clean, s3_server):
    from catalog import CatalogDouble

    with CatalogDouble(s3_server.endpoint_url) as double:
        yield double


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- config --------------------------------------------------------------------------------------------------

def test_config_without_file_returns_defaults_without_network(clean):
    result = qconfig.config()
    assert list(result) == list(qconfig.template())
    assert result["default_local_registry"] == (qconfig.data_dir() / "packages").as_uri()
    assert not qconfig.config_path().exists()
    assert repr(result).startswith(f"<QuiltConfig at '{qconfig.config_path()}' {{")


def test_set_values_written_like_quilt3(clean):
    q3 = clean
    ours = qconfig.config(default_remote_registry="s3://b", navigator_url=" https://cat.example.com/ ",
                          foo_url="http://x:1", telemetry_disabled="true")
    ours_text = qconfig.config_path().read_text()
    assert ours["navigator_url"] == "https://cat.example.com"
    qconfig.config_path().unlink()
    theirs = q3.config(default_remote_registry="s3://b", navigator_url=" https://cat.example.com/ ",
                       foo_url="http://x:1", telemetry_disabled="true")
    assert qconfig.config_path().read_text() == ours_text
    assert dict(theirs) == dict(ours)
    assert list(theirs) == list(ours)
    assert "telemetry_disabled: 'true'" in ours_text
    assert list(os.listdir(qconfig.data_dir())).count("config.yml") == 1
    assert not [p for p in os.listdir(qconfig.data_dir()) if ".backup." in p]  # no backup for set


def test_quilt3_reads_ours_and_we_read_quilt3s(clean):
    q3 = clean
    qconfig.config(default_remote_registry="s3://ours", unknown_key=[1, 2])
    assert q3.config()["default_remote_registry"] == "s3://ours"
    assert q3.config()["unknown_key"] == [1, 2]
    q3.config(default_remote_registry="s3://theirs", region="eu-west-1")
    loaded = qconfig.config()
    assert loaded["default_remote_registry"] == "s3://theirs"
    assert loaded["region"] == "eu-west-1"
    assert loaded["unknown_key"] == [1, 2]
    assert qconfig.default_remote_registry() == "s3://theirs"


@pytest.mark.parametrize("values", [
    {"navigator_url": "not a url"},
    {"foo_url": "example.com"},
    {"bar_url": "http://host:port"},
    {"navigator_url": 5},
])
def test_validation_errors_match_quilt3(clean, values):
    q3 = clean
    with pytest.raises(Exception) as theirs:
        q3.config(**values)
    with pytest.raises(Exception) as ours:
        qconfig.config(**values)
    assert str(ours.value) == str(theirs.value)
    if isinstance(theirs.value, q3.util.QuiltException):
        assert isinstance(ours.value, QuiltException)
    else:
        assert type(ours.value) is type(theirs.value)
    assert not qconfig.config_path().exists()


def test_argument_errors_match_quilt3(clean):
    q3 = clean
    for args, kwargs in ((("http://a",), {"region": "x"}), (("http://a", "http://b"), {})):
        with pytest.raises(q3.util.QuiltException) as theirs:
            q3.config(*args, **kwargs)
        with pytest.raises(QuiltException) as ours:
            qconfig.config(*args, **kwargs)
        assert str(ours.value) == str(theirs.value)


def test_stored_values_show_unvalidated_like_quilt3_cli(clean):
    """Validation is for setting values (spec 1.3): values config.yml holds that could not be set still show,
    as `quilt3 config` prints them, and other keys can be set beside them."""
    qconfig.config_path().parent.mkdir(parents=True, exist_ok=True)
    qconfig.config_path().write_text("navigator_url: 'ftp:/x'\nfoo_url: 5\n")
    ours = subprocess.run([sys.executable, "-m", "quiltmount", "config"], capture_output=True, text=True)
    theirs = subprocess.run([os.path.join(os.path.dirname(sys.executable), "quilt3"), "config"],
                            capture_output=True, text=True)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) == (0, "ftp:/x\n"), ours.stderr
    shown = subprocess.run([sys.executable, "-m", "quiltmount", "config", "--json"], capture_output=True, text=True)
    assert shown.returncode == 0 and json.loads(shown.stdout)["foo_url"] == 5, shown.stderr
    assert qconfig.config(region="eu-west-1")["foo_url"] == 5
    assert qconfig.config()["navigator_url"] == "ftp:/x"
    with pytest.raises(QuiltException, match="^Invalid URL -- Requires a string: 5$"):
        qconfig.config(foo_url=5)


def test_registry_url_key_not_validated(clean):
    assert qconfig.config(registryUrl="whatever")["registryUrl"] == "whatever"


def test_autoconfig_and_reset_like_quilt3(stack):
    import quilt3 as q3
    qconfig.config(default_remote_registry="s3://lost")
    ours = qconfig.config(stack.url + "/")
    ours_text = qconfig.config_path().read_text()
    backups = [p for p in os.listdir(qconfig.data_dir()) if p.startswith("config.yml.backup.")]
    assert len(backups) == 1
    assert ours["default_remote_registry"] is None
    assert ours["navigator_url"] == stack.url and ours["registryUrl"] == stack.url
    assert ours["region"] == "us-east-1" and "mode" not in ours
    theirs = q3.config(stack.url + "/")
    assert qconfig.config_path().read_text() == ours_text
    assert dict(theirs) == dict(ours)
    assert [r["path"] for r in stack.requests] == ["/config.json", "/config.json"]
    assert "Authorization" not in stack.requests[0]["headers"]

    reset = qconfig.config("")
    assert dict(reset) == qconfig.template()
    reset_text = qconfig.config_path().read_text()
    q3.config("")
    assert qconfig.config_path().read_text() == reset_text
    assert len([p for p in os.listdir(qconfig.data_dir()) if p.startswith("config.yml.backup.")]) == 4


def test_autoconfig_http_error_and_garbage(stack, clean, monkeypatch):
    q3 = clean
    with pytest.raises(q3.util.QuiltException) as theirs:
        q3.config(stack.url + "/nope")
    with pytest.raises(QuiltException) as ours:
        qconfig.config(stack.url + "/nope")
    assert str(ours.value) == str(theirs.value) == "An HTTP Error (401) occurred: UNAUTHORIZED"
    monkeypatch.setattr(stack, "config", lambda: ["not", "a", "mapping"])
    with pytest.raises(QuiltException, match="not a Quilt catalog configuration"):
        qconfig.config(stack.url)
    assert not qconfig.config_path().exists()
    with pytest.raises(QuiltException, match="Invalid URL"):
        qconfig.config("nohost")


# -- auth files ----------------------------------------------------------------------------------------------

def test_login_with_token_shared_with_quilt3(stack):
    import quilt3.session as q3s

    qconfig.config(stack.url)
    auth.login_with_token(stack.issue_refresh_token())
    assert _mode(auth.auth_path()) == 0o600 and _mode(auth.credentials_path()) == 0o600
    assert auth.logged_in() == stack.url
    assert q3s.logged_in() == stack.url
    entry = q3s._load_auth()[stack.url]
    assert set(entry) == {"refresh_token", "access_token", "expires_at"}
    assert set(q3s._load_credentials()) == {"access_key", "secret_key", "token", "expiry_time"}
    token_request = [r for r in stack.requests if r["path"] == "/api/token"][-1]
    assert token_request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    creds_request = [r for r in stack.requests if r["path"] == "/api/auth/get_credentials"][-1]
    assert creds_request["headers"]["Authorization"] == f"Bearer {entry['access_token']}"
    assert creds_request["headers"]["User-Agent"].startswith("quilt-python/8.0.0 (")
    # quilt3 uses our login
    q3s.clear_session()
    assert q3s.get_session().headers["Authorization"] == f"Bearer {entry['access_token']}"

    # and we use quilt3's
    auth.logout()
    assert auth.load_auth() == {} and auth.load_credentials() == {}
    assert auth.logged_in() is None and q3s.logged_in() is None
    q3s.login_with_token(stack.issue_refresh_token())
    assert auth.logged_in() == stack.url
    stack.requests.clear()
    api_keys.list()
    assert stack.requests[-1]["headers"]["Authorization"] == \
        f"Bearer {q3s._load_auth()[stack.url]['access_token']}"


def test_tokens_are_kept_under_registry_url_as_configured(stack):
    """quilt3 keys auth.json by registryUrl exactly as configured: a trailing `/` included."""
    import quilt3.session as q3s

    qconfig.config(stack.url)
    qconfig.config(registryUrl=stack.url + "/")
    auth.login_with_token(stack.issue_refresh_token())
    assert list(auth.load_auth()) == [stack.url + "/"]
    assert auth.logged_in() == q3s.logged_in() == stack.url  # (navigator_url)
    assert auth.current_token() == q3s._load_auth()[stack.url + "/"]["access_token"]


def test_logout_when_logged_out(clean, capsys):
    auth.logout()
    assert capsys.readouterr().out == "Already logged out.\n"
    assert not auth.auth_path().exists()


def test_interactive_login_reads_code_from_stdin(stack, monkeypatch, capsys):
    qconfig.config(stack.url)
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url))
    monkeypatch.setattr("sys.stdin", io.StringIO(stack.issue_refresh_token() + "\n"))
    auth.login()
    out = capsys.readouterr().out
    assert f"If that didn't work, please visit the following URL: {stack.url}/login" in out
    assert opened == [f"{stack.url}/login"]
    assert auth.logged_in() == stack.url


def test_login_requires_config(clean):
    with pytest.raises(QuiltException, match="currently set to None"):
        auth.login()


def test_bad_refresh_token(stack):
    qconfig.config(stack.url)
    with pytest.raises(QuiltException, match="^Failed to log in: Invalid refresh token$"):
        auth.login_with_token("refresh-bogus")


def test_refresh_before_each_request_in_long_running_process(stack):
    qconfig.config(stack.url)
    stack.access_ttl = 30  # below the 60 s margin: every use refreshes
    auth.login_with_token(stack.issue_refresh_token())
    first = auth.load_auth()[stack.url]["access_token"]
    session = catalog.get_session()
    stack.requests.clear()
    api_keys.list()
    assert catalog.get_session() is session  # same session, new token
    paths = [r["path"] for r in stack.requests]
    assert paths == ["/api/token", "/graphql"]
    second = auth.load_auth()[stack.url]["access_token"]
    assert second != first
    assert stack.requests[-1]["headers"]["Authorization"] == f"Bearer {second}"
    # quilt3 can still use the rotated refresh token we stored
    import quilt3.session as q3s
    q3s.clear_session()
    q3s.get_session()
    assert q3s._load_auth()[stack.url]["access_token"] != second


def test_refresh_failure_message(stack):
    qconfig.config(stack.url)
    auth.save_auth({stack.url: {"refresh_token": "refresh-bogus", "access_token": "a", "expires_at": 0}})
    with pytest.raises(QuiltException, match=r"^Failed to update the access token \(Failed to log in: "):
        api_keys.list()


def test_api_key_memory_only(stack):
    import quilt3.session as q3s

    qconfig.config(stack.url)
    with pytest.raises(ValueError, match="^API key must start with 'qk_' prefix$"):
        auth.login_with_api_key("nope")
    auth.login_with_token(stack.issue_refresh_token())
    _key, secret = api_keys.create("ci")
    before = {p: p.read_bytes() for p in qconfig.data_dir().iterdir() if p.is_file()}
    auth.login_with_api_key(secret)
    assert auth.logged_in() == stack.url
    stack.requests.clear()
    assert [k.name for k in api_keys.list()] == ["ci"]
    assert stack.requests[-1]["headers"]["Authorization"] == f"Bearer {secret}"
    after = {p: p.read_bytes() for p in qconfig.data_dir().iterdir() if p.is_file()}
    assert after == before
    assert all(secret.encode() not in data for data in after.values())
    auth.clear_api_key()
    api_keys.list()
    assert stack.requests[-1]["headers"]["Authorization"] != f"Bearer {secret}"
    assert q3s._api_key is None


def test_error_hook_messages(stack):
    qconfig.config(stack.url)
    with pytest.raises(QuiltException, match=r"^Authentication failed\. Check your credentials or API key\.$"):
        api_keys.list()  # no token: 401
    auth.login_with_token(stack.issue_refresh_token())
    with pytest.raises(QuiltException, match="^no such index"):
        catalog.search_api("x", index="no-such-bucket")
    qconfig.config(registryUrl=stack.url + "/login")  # an HTML page: not JSON
    with pytest.raises(catalog.InvalidCatalogResponse, match="did not answer with JSON"):
        catalog.get_json("")
    qconfig.config(registryUrl=None)
    with pytest.raises(QuiltException, match="No Quilt catalog is configured"):
        search("x")


@pytest.mark.parametrize("module", ["api_keys", "catalog_search", "bucket"])
def test_modules_that_ask_the_catalog_as_the_user_hand_it_the_token(module):
    """The catalog client does not import `auth` (which needs it); importing `auth` hands the client its token
    provider, so each module sending the user's requests imports `auth`, even when imported on its own."""
    code = (f"import sys, quiltmount.{module}; from quiltmount import catalog; "
            "assert catalog._token_provider is sys.modules['quiltmount.auth'].current_token")
    subprocess.run([sys.executable, "-c", code], check=True)


def _as_dicts(value):
    if value is None:
        return None
    if isinstance(value, list):
        return [_as_dicts(v) for v in value]
    return dataclasses.asdict(value)  # datetimes compare equal across tzinfo implementations


# -- API keys ------------------------------------------------------------------------------------------------

def test_api_keys_same_requests_and_results_as_quilt3(stack):
    import quilt3.api_keys as q3k
    import quilt3.session as q3s

    qconfig.config(stack.url)
    auth.login_with_token(stack.issue_refresh_token())
    key, secret = api_keys.create("one", expires_in_days=30)
    assert secret.startswith("qk_") and key.name == "one" and key.status == "ACTIVE"
    assert key.created_at.tzinfo is not None and key.last_used_at is None
    ours_req = stack.requests[-1]
    q3s.clear_session()
    theirs_key, _ = q3k.create("two", expires_in_days=30)
    theirs_req = stack.requests[-1]
    assert ours_req["body"].replace('"one"', '"two"') == theirs_req["body"]
    assert {k: v for k, v in ours_req["headers"].items() if k not in ("Authorization", "Content-Length")} == \
        {k: v for k, v in theirs_req["headers"].items() if k not in ("Authorization", "Content-Length")}

    for call in (lambda m: m.list(), lambda m: m.list(name="one", status="ACTIVE"),
                 lambda m: m.get(key.id), lambda m: m.get("missing")):
        ours = call(api_keys)
        ours_body = stack.requests[-1]["body"]
        theirs = call(q3k)
        assert stack.requests[-1]["body"] == ours_body
        assert _as_dicts(ours) == _as_dicts(theirs)

    for module, error in ((api_keys, api_keys.APIKeyError), (q3k, q3k.APIKeyError)):
        with pytest.raises(error) as raised:
            module.create("one")
        if module is api_keys:
            ours_message = str(raised.value)
        else:
            assert str(raised.value) == ours_message
    assert ours_message == ("[InvalidInputSelectionErrors(path='input.name', message='Name taken', "
                            "name='Conflict', context=None)]")
    with pytest.raises(ValueError, match="^Must provide either id or secret$"):
        api_keys.revoke()
    api_keys.revoke(id=key.id)
    body = stack.requests[-1]["body"]
    q3k.revoke(secret=_)
    assert [k.name for k in api_keys.list()] == []
    assert '"variables": {"id": "' in body and '"secret": null' in body
    with pytest.raises(api_keys.APIKeyError, match="API key not found"):
        api_keys.revoke(id="gone")


def test_api_key_expiry_days_are_taken_as_quilt3_takes_them(stack):
    import quilt3.api_keys as q3k

    qconfig.config(stack.url)
    auth.login_with_token(stack.issue_refresh_token())
    for number, days in enumerate(("5", 5.0, " 7 ")):
        api_keys.create(f"ours-{number}", expires_in_days=days)
        ours = json.loads(stack.requests[-1]["body"])["variables"]["input"]["expiresInDays"]
        q3k.create(f"theirs-{number}", expires_in_days=days)
        assert ours == json.loads(stack.requests[-1]["body"])["variables"]["input"]["expiresInDays"] == int(days)
    for bad in ("soon", 5.5, None):
        with pytest.raises(ValueError):
            q3k.create("bad", expires_in_days=bad)
        with pytest.raises(ValueError, match="^expires_in_days must be a whole number"):
            api_keys.create("bad", expires_in_days=bad)


# -- search and boto3 session --------------------------------------------------------------------------------

def test_search_same_as_quilt3(stack, s3, bucket):
    q3 = __import__("quilt3")
    s3.put_object(Bucket=bucket, Key="data/hello.csv", Body=b"a,b\n")
    qconfig.config(stack.url)
    auth.login_with_token(stack.issue_refresh_token())
    for query in ("hello", {"query": {"match_all": {}}}):
        ours = search(query, limit=5)
        ours_req = stack.requests[-1]
        theirs = q3.search(query, limit=5)
        theirs_req = stack.requests[-1]
        assert ours_req["query"] == theirs_req["query"]
        assert ours == theirs
    assert any(hit["_source"].get("key") == "data/hello.csv" for hit in search("hello", limit=1000))


def test_boto3_session_refreshes_from_stack(stack, s3_server, bucket, monkeypatch):
    import botocore.credentials

    qconfig.config(stack.url)
    assert auth.get_boto3_session().region_name == "us-east-1"  # no stack credentials: plain session
    with pytest.raises(QuiltException, match="^No Quilt credentials found.$"):
        auth.get_boto3_session(fallback=False)
    auth.login_with_token(stack.issue_refresh_token())
    creds = auth.load_credentials()
    creds["expiry_time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 300))
    auth.save_credentials(creds)
    qconfig.config(region="eu-central-1")
    session = auth.get_boto3_session(fallback=False)
    assert session.region_name == "eu-central-1"
    frozen = session.get_credentials()
    assert isinstance(frozen, botocore.credentials.RefreshableCredentials)
    assert frozen.method == "quilt-registry"
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    stack.requests.clear()
    session.client("s3").list_objects_v2(Bucket=bucket)
    assert [r["path"] for r in stack.requests] == ["/api/auth/get_credentials"]
    assert auth.load_credentials()["token"] != creds["token"]
    assert _mode(auth.credentials_path()) == 0o600


# -- CLI verbs (through a parser built like quiltmount.cli's) ------------------------------------------------

def _cli(*argv):
    import argparse

    from quiltmount.errors import QuiltmountError
    from quiltmount.stackcli import add_stack_commands

    parser = argparse.ArgumentParser(prog="quiltmount")
    add_stack_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except QuiltmountError as exc:
        return f"error: {exc}"


def test_cli_verbs(stack, capsys, monkeypatch):
    assert _cli("config", stack.url) == 0
    assert _cli("config") == 0
    assert capsys.readouterr().out.splitlines()[-1] == stack.url
    assert _cli("config", "--set", "foo_url=bad").startswith("error: Invalid URL")
    auth.login_with_token(stack.issue_refresh_token())
    capsys.readouterr()
    assert _cli("api-keys", "create", "cli", "--expires-in-days", "7", "--json") == 0
    created = json.loads(capsys.readouterr().out)
    assert created["secret"].startswith("qk_") and created["api_key"]["name"] == "cli"
    assert _cli("api-keys", "create", "cli") == "error: input.name: Name taken"
    auth.logout()
    monkeypatch.setenv("MY_KEY", created["secret"])
    capsys.readouterr()
    assert _cli("api-keys", "list", "--api-key-env", "MY_KEY", "--json") == 0
    assert [k["name"] for k in json.loads(capsys.readouterr().out)] == ["cli"]
    assert stack.requests[-1]["headers"]["Authorization"] == f"Bearer {created['secret']}"
    assert not any(created["secret"].encode() in p.read_bytes() for p in qconfig.data_dir().iterdir()
                   if p.is_file())
    assert _cli("search", '{"query": {"match_all": {}}}', "--json", "--api-key-env", "MY_KEY") == 0
    assert stack.requests[-1]["query"]["action"] == "freeform"
    assert _cli("api-keys", "revoke", "--id", created["api_key"]["id"], "--api-key-env", "MY_KEY") == 0
