"""`quiltmount.bucket.Bucket` against the moto server, side by side with the real `quilt3.Bucket`.

Every scenario runs twice on two identical buckets, once with each implementation (read-only ones on the same
bucket); results, bucket contents, local files and error types/messages must be the same.  Public buckets are
made with `SigningGate`, a proxy that denies signed requests the way S3 denies credentials without access.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest
from botocore.exceptions import ClientError

from quiltmount.bucket import Bucket
from quiltmount.errors import QuiltException


@pytest.fixture(scope="session")
def quilt3_module():
    os.environ.setdefault("QUILT_DISABLE_USAGE_METRICS", "true")
    import quilt3

    return quilt3


@pytest.fixture
def env(quilt3_module, s3_server, s3, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("QUILT_MINIMIZE_STDOUT", "true")
    from quiltmount import auth

    assert not auth.load_credentials()  # plain AWS credentials, like quilt3 without a login
    names = []
    for _ in range(2):
        name = f"bk-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=name)
        names.append(name)
    src = tmp_path / "src"
    for rel, data in {"README.md": b"# hi\n", "data/a.csv": b"a,b\n1,2\n", "data/deep/x.bin": os.urandom(3000),
                      ".hidden": b"h", "empty.txt": b""}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    monkeypatch.chdir(tmp_path)
    return {"q3": quilt3_module, "s3": s3, "ours": names[0], "theirs": names[1], "src": src, "tmp": tmp_path}


def _contents(s3, bucket):
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            out[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def _tree(root: Path):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} \
        if root.exists() else None


def _outcome(fn):
    try:
        return ("ok", fn())
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, QuiltException) or type(exc).__name__ == "QuiltException":
            kind = "QuiltException"
        else:
            kind = type(exc).__name__
        if isinstance(exc, ClientError):  # botocore names some subclasses after the code (AccessDenied)
            return ("ClientError", exc.response["Error"]["Code"])
        return (kind, str(exc))


def _both(env, action, local: str | None = None):
    """Run `action(bucket_obj, name, workdir)` with each implementation; return both outcomes."""
    results = []
    for impl, name in (("ours", env["ours"]), ("theirs", env["theirs"])):
        work = env["tmp"] / impl
        work.mkdir(exist_ok=True)
        bucket = Bucket(f"s3://{name}") if impl == "ours" else env["q3"].Bucket(f"s3://{name}")
        outcome = _outcome(lambda: action(bucket, work))
        results.append((outcome, _contents(env["s3"], name), _tree(work)))
    assert results[0] == results[1], results
    return results[0]


def test_constructor_errors(quilt3_module):
    for uri in ("s3://b/path", "s3://b?versionId=1", "file:///tmp/x"):
        with pytest.raises(quilt3_module.util.QuiltException) as theirs:
            quilt3_module.Bucket(uri)
        with pytest.raises(QuiltException) as ours:
            Bucket(uri)
        assert str(ours.value) == str(theirs.value)


def test_put_file_variants(env):
    src = env["src"]
    assert _both(env, lambda b, w: b.put_file("k/one.md", str(src / "README.md")))[0] == ("ok", None)
    out = _both(env, lambda b, w: b.put_file("dir/", str(src / "data" / "a.csv")))
    assert "dir/a.csv" in out[1]
    _both(env, lambda b, w: b.put_file("", str(src / "empty.txt")))
    _both(env, lambda b, w: b.put_file("uri.md", (src / "README.md").as_uri()))
    out = _both(env, lambda b, w: b.put_file("x", str(src / "missing.txt")))
    assert out[0] == ("QuiltException", f"Not a file: {str(src / 'missing.txt')!r}")
    # SHA-256 checksum stored with the upload
    head = env["s3"].head_object(Bucket=env["ours"], Key="k/one.md", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(b"# hi\n").digest()).decode()


def test_put_dir_and_keys(env):
    src = env["src"]
    out = _both(env, lambda b, w: b.put_dir("pre", str(src)))
    assert set(out[1]) == {"pre/README.md", "pre/data/a.csv", "pre/data/deep/x.bin", "pre/.hidden",
                           "pre/empty.txt"}
    _both(env, lambda b, w: b.put_dir("", str(src / "data")))
    keys = _both(env, lambda b, w: b.keys())[0]
    assert keys[0] == "ok" and "a.csv" in keys[1] and "pre/.hidden" in keys[1]
    empty = env["tmp"] / "emptydir"
    empty.mkdir()
    assert _both(env, lambda b, w: b.put_dir("e/", str(empty)))[0] == ("QuiltException", "No objects to download.")
    assert _both(env, lambda b, w: b.put_dir("e/", str(env["tmp"] / "nope")))[0] == \
        ("QuiltException", "Provided directory does not exist")


def test_fetch_variants(env):
    src = env["src"]
    for name in (env["ours"], env["theirs"]):
        for path in src.rglob("*"):
            if path.is_file():
                env["s3"].put_object(Bucket=name, Key="p/" + path.relative_to(src).as_posix(),
                                     Body=path.read_bytes())
    assert _both(env, lambda b, w: b.fetch("p/README.md", str(w / "one.md")))[0] == ("ok", None)
    _both(env, lambda b, w: b.fetch("p/data/a.csv", str(w / "into") + "/"))
    out = _both(env, lambda b, w: b.fetch("p/", str(w / "all") + "/"))
    assert out[2]["all/data/deep/x.bin"] == (src / "data/deep/x.bin").read_bytes()
    assert _both(env, lambda b, w: b.fetch("p/", str(w / "noslash")))[0] == \
        ("ValueError", "Destination path must end in /")
    assert _both(env, lambda b, w: b.fetch("none/", str(w / "n") + "/"))[0] == \
        ("QuiltException", "No objects to download.")
    assert _both(env, lambda b, w: b.fetch("p/data", str(w / "d")))[0] == ("ClientError", "404")
    for name in (env["ours"], env["theirs"]):
        env["s3"].put_object(Bucket=name, Key="p/sub/", Body=b"")
    assert _both(env, lambda b, w: b.fetch("p/", str(w / "bad") + "/"))[0] == \
        ("ValueError", "Invalid relative path: 'sub/'")


def test_delete_and_delete_dir(env):
    for name in (env["ours"], env["theirs"]):
        for key in ("a/1", "a/2", "a/b/3", "top"):
            env["s3"].put_object(Bucket=name, Key=key, Body=b"x")
    assert _both(env, lambda b, w: b.delete(""))[0] == ("QuiltException", "Must specify the key to delete")
    assert _both(env, lambda b, w: b.delete("a/"))[0] == \
        ("QuiltException", "Must use delete_dir to delete directories")
    assert _both(env, lambda b, w: b.delete("missing"))[0] == ("ClientError", "404")
    _both(env, lambda b, w: b.delete("top"))
    assert _both(env, lambda b, w: b.delete_dir("a"))[0] == ("ValueError", "Prefix must end with /")
    _both(env, lambda b, w: b.delete_dir("none/"))
    out = _both(env, lambda b, w: b.delete_dir("a/b/"))
    assert set(out[1]) == {"a/1", "a/2"}
    assert _both(env, lambda b, w: b.delete_dir(""))[1] == {}


def test_ls_same_shape(env):
    for name in (env["ours"], env["theirs"]):
        for key in ("a/1", "a/b/2", "top"):
            env["s3"].put_object(Bucket=name, Key=key, Body=b"x")

    def shape(result):
        return [[item.get("Prefix") or item.get("Key") for item in part] for part in result]

    assert _both(env, lambda b, w: shape(b.ls()))[0][1] == [["a/"], ["top"], []]
    _both(env, lambda b, w: shape(b.ls("a")))
    _both(env, lambda b, w: shape(b.ls("a/", recursive=True)))


def test_search_through_catalog(env, s3_server):
    import quilt3.session as q3s
    from catalog import CatalogDouble

    from quiltmount import auth, quiltconfig as qconfig

    env["s3"].put_object(Bucket=env["ours"], Key="docs/report.csv", Body=b"x")
    with CatalogDouble(s3_server.endpoint_url) as stack:
        try:
            qconfig.config(stack.url)
            auth.login_with_token(stack.issue_refresh_token())
            q3s.clear_session()
            ours = Bucket(f"s3://{env['ours']}").search("report", limit=3)
            ours_query = stack.requests[-1]["query"]
            theirs = env["q3"].Bucket(f"s3://{env['ours']}").search("report", limit=3)
            assert stack.requests[-1]["query"] == ours_query == {
                "index": f"{env['ours']},{env['ours']}_packages", "action": "search", "query": "report",
                "size": "3"}
            assert ours == theirs and ours[0]["_source"]["key"] == "docs/report.csv"
        finally:
            auth.logout()
            qconfig.config("")
            for p in qconfig.data_dir().iterdir():
                if p.name.startswith(("config.yml", "auth.json", "credentials.json")):
                    p.unlink()
            q3s.clear_session()


# -- public buckets: anonymous reads when signed ones are denied -------------------------------------------------

DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
          b"<Message>Access Denied</Message></Error>")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class SigningGate:
    """An HTTP proxy in front of the test S3 server that acts like S3's access control: every signed request
    (one with an Authorization header) to a bucket in `signed_denied` gets `403 AccessDenied`, as when the
    caller's credentials have no access to someone else's public bucket, and every request to a bucket in
    `closed` does.  Other requests pass unchanged (moto itself refuses anonymous reads of objects that are not
    public-read).  `log` records (method, bucket, signed, status) of each request."""

    def __init__(self, upstream: str, signed_denied: set[str], closed: set[str]) -> None:
        target = urlparse(upstream)
        self.log: list[tuple[str, str, bool, int]] = []
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                bucket = urlparse(self.path).path.split("/")[1]
                signed = "Authorization" in self.headers
                if bucket in closed or (signed and bucket in signed_denied):
                    gate.log.append((self.command, bucket, signed, 403))
                    self._deny()
                    return
                body = self._body()
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                connection.request(self.command, self.path, body=body or None, headers=headers)
                response = connection.getresponse()
                data = response.read()
                gate.log.append((self.command, bucket, signed, response.status))
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP and not (key.lower() == "content-length" and data):
                        self.send_header(key, value)
                if data:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                connection.close()

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)

            def _deny(self) -> None:
                """403 without reading the request body, so the connection is closed afterwards."""
                self.close_connection = True
                self.send_response(403)
                self.send_header("Connection", "close")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(DENIED)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(DENIED)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SigningGate:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _same_for_both(env, name: str, action):
    """Run `action(bucket_obj, workdir)` on the same bucket with each implementation; the outcomes and the
    local files written must be the same."""
    results = []
    for impl in ("ours", "theirs"):
        work = env["tmp"] / impl
        work.mkdir(exist_ok=True)
        bucket = Bucket(f"s3://{name}") if impl == "ours" else env["q3"].Bucket(f"s3://{name}")
        results.append((_outcome(lambda: action(bucket, work)), _tree(work)))
    assert results[0] == results[1], results
    return results[0]


@pytest.fixture
def public_buckets(env, s3):
    """A public bucket (objects public-read) and a private one, holding the same objects."""
    names = {"public": f"pub-{uuid.uuid4().hex[:12]}", "private": f"priv-{uuid.uuid4().hex[:12]}"}
    for kind, name in names.items():
        s3.create_bucket(Bucket=name)
        for key, data in {"p/README.md": b"# public\n", "p/data/a.csv": b"a,b\n", "top.bin": bytes(2000)}.items():
            s3.put_object(Bucket=name, Key=key, Body=data, **({"ACL": "public-read"} if kind == "public" else {}))
    return names


def test_reads_fall_back_to_anonymous_like_quilt3(env, public_buckets, s3_server, monkeypatch):
    public, private = public_buckets["public"], public_buckets["private"]
    with SigningGate(s3_server.endpoint_url, signed_denied={public, private}, closed=set()) as gate:
        monkeypatch.setenv("AWS_ENDPOINT_URL", gate.endpoint_url)

        keys = _same_for_both(env, public, lambda b, w: b.keys())
        assert keys == (("ok", ["p/README.md", "p/data/a.csv", "top.bin"]), {})
        listing = _same_for_both(env, public, lambda b, w: [[i.get("Prefix") or i["Key"] for i in part]
                                                           for part in b.ls()])
        assert listing[0] == ("ok", [["p/"], ["top.bin"], []])
        _same_for_both(env, public, lambda b, w: len(b.ls("p", recursive=True)[0]))
        one = _same_for_both(env, public, lambda b, w: b.fetch("top.bin", str(w / "one.bin")))
        assert one == (("ok", None), {"one.bin": bytes(2000)})
        tree = _same_for_both(env, public, lambda b, w: b.fetch("p/", str(w / "all") + "/"))
        assert tree[1]["all/data/a.csv"] == b"a,b\n"
        assert ("GET", public, False, 200) in gate.log and ("GET", public, True, 403) in gate.log

        # Objects that are not public: both clients are denied.
        denied = _same_for_both(env, private, lambda b, w: b.fetch("top.bin", str(w / "x")))
        assert denied[0] == ("S3NoValidClientError", f"S3 AccessDenied for S3Api.HEAD_OBJECT on bucket: {private}")

        # Writes are never retried unsigned.
        gate.log.clear()
        (env["tmp"] / "small.txt").write_bytes(b"small")
        put = _same_for_both(env, public, lambda b, w: b.put_file("new.txt", str(env["tmp"] / "small.txt")))
        assert put[0] == ("ClientError", "AccessDenied")
        assert _same_for_both(env, public, lambda b, w: b.delete("top.bin"))[0] == ("ClientError", "403")
        assert not [entry for entry in gate.log if entry[0] in ("PUT", "DELETE") and not entry[2]]


def test_closed_bucket_errors_like_quilt3(env, public_buckets, s3_server, monkeypatch):
    closed = public_buckets["public"]
    with SigningGate(s3_server.endpoint_url, signed_denied=set(), closed={closed}) as gate:
        monkeypatch.setenv("AWS_ENDPOINT_URL", gate.endpoint_url)
        for action, api in ((lambda b, w: b.keys(), "LIST_OBJECTS_V2"),
                            (lambda b, w: b.ls(), "LIST_OBJECT_VERSIONS"),
                            (lambda b, w: b.fetch("p/", str(w / "d") + "/"), "LIST_OBJECTS_V2")):
            assert _same_for_both(env, closed, action)[0] == \
                ("S3NoValidClientError", f"S3 AccessDenied for S3Api.{api} on bucket: {closed}")


def test_no_credentials_at_all_reads_anonymously(env, public_buckets, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    public = public_buckets["public"]
    assert _same_for_both(env, public, lambda b, w: b.keys())[0][0] == "ok"
    assert _same_for_both(env, public, lambda b, w: b.fetch("p/README.md", str(w / "r.md")))[1] == \
        {"r.md": b"# public\n"}


# -- uploads skipped when the destination already holds the same bytes ----------------------------------------

def _version_counts(s3, bucket) -> dict[str, int]:
    counts: dict[str, int] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for version in page.get("Versions", []):
            counts[version["Key"]] = counts.get(version["Key"], 0) + 1
    return counts


def test_unchanged_uploads_are_skipped_like_quilt3(env):
    """From 1 KiB on, quilt3 HEADs the destination and uploads nothing if size and SHA-256 (or, for objects
    without one, the MD5 ETag) match; on versioned buckets every PUT would add a version."""
    s3, src = env["s3"], env["src"]
    for name in (env["ours"], env["theirs"]):
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    big = src / "data/deep/x.bin"  # 3000 bytes
    for _ in range(2):
        _both(env, lambda b, w: b.put_file("k/x.bin", str(big)))
        _both(env, lambda b, w: b.put_file("k/README.md", str(src / "README.md")))  # 5 bytes: always sent
    for _ in range(2):
        _both(env, lambda b, w: b.put_dir("d", str(src)))
    counts = _version_counts(s3, env["ours"])
    assert counts == _version_counts(s3, env["theirs"])
    assert counts == {"k/x.bin": 1, "k/README.md": 2, "d/data/deep/x.bin": 1, "d/README.md": 2,
                      "d/data/a.csv": 2, "d/.hidden": 2, "d/empty.txt": 2}

    # Same size, other bytes: uploaded.
    big.write_bytes(os.urandom(3000))
    assert _both(env, lambda b, w: b.put_file("k/x.bin", str(big)))[1]["k/x.bin"] == big.read_bytes()
    assert _version_counts(s3, env["ours"])["k/x.bin"] == _version_counts(s3, env["theirs"])["k/x.bin"] == 2

    # Objects stored without a SHA-256 checksum (boto3's default CRC32) are compared by MD5 ETag, also the
    # multipart "<md5 of part md5s>-<parts>" ETag of a 9 MiB upload.
    large = env["tmp"] / "large.bin"
    large.write_bytes(os.urandom(9 * 1024 * 1024))
    for name in (env["ours"], env["theirs"]):
        s3.put_object(Bucket=name, Key="plain.bin", Body=big.read_bytes())
        s3.upload_file(str(large), name, "large.bin")
    assert "ChecksumSHA256" not in s3.head_object(Bucket=env["ours"], Key="plain.bin", ChecksumMode="ENABLED")
    assert s3.head_object(Bucket=env["ours"], Key="large.bin")["ETag"].endswith('-2"')
    _both(env, lambda b, w: b.put_file("plain.bin", str(big)))
    _both(env, lambda b, w: b.put_file("large.bin", str(large)))
    for name in (env["ours"], env["theirs"]):
        assert _version_counts(s3, name)["plain.bin"] == _version_counts(s3, name)["large.bin"] == 1
    big.write_bytes(os.urandom(3000))
    _both(env, lambda b, w: b.put_file("plain.bin", str(big)))
    assert _version_counts(s3, env["ours"])["plain.bin"] == 2


# -- copies from S3 (server-side) ------------------------------------------------------------------------------

def _name(bucket) -> str:
    return bucket.name if isinstance(bucket, Bucket) else bucket._pk.bucket


def test_put_file_from_s3_and_fetch_to_s3_copy_server_side(env):
    s3 = env["s3"]
    source = f"src-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=source)
    s3.put_bucket_versioning(Bucket=source, VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket=source, Key="p/README.md", Body=b"old\n")["VersionId"]
    for key, data in {"p/README.md": b"new\n", "p/data/a.csv": b"a,b\n", "p/x.bin": bytes(3000)}.items():
        s3.put_object(Bucket=source, Key=key, Body=data)

    out = _both(env, lambda b, w: b.put_file("c/one.md", f"s3://{source}/p/README.md"))
    assert out[0] == ("ok", None) and out[1]["c/one.md"] == b"new\n"
    assert "c/README.md" in _both(env, lambda b, w: b.put_file("c/", f"s3://{source}/p/README.md"))[1]
    out = _both(env, lambda b, w: b.put_file("old.md", f"s3://{source}/p/README.md?versionId={first}"))
    assert out[1]["old.md"] == b"old\n"
    out = _both(env, lambda b, w: b.put_file("tree/", f"s3://{source}/p/"))
    assert {k: v for k, v in out[1].items() if k.startswith("tree/")} == {
        "tree/README.md": b"new\n", "tree/data/a.csv": b"a,b\n", "tree/x.bin": bytes(3000)}
    assert _both(env, lambda b, w: b.put_file("t", f"s3://{source}/p/"))[0] == \
        ("ValueError", "Destination path must end in /")
    assert _both(env, lambda b, w: b.put_file("t/", f"s3://{source}/p/?versionId={first}"))[0] == \
        ("ValueError", f"Directories cannot have version IDs: s3://{source}/p/?versionId={first}")
    assert _both(env, lambda b, w: b.put_file("t/", f"s3://{source}/none/"))[0] == \
        ("QuiltException", "No objects to download.")
    assert _both(env, lambda b, w: b.put_file("x", f"s3://{source}/missing"))[0] == ("ClientError", "404")
    assert _both(env, lambda b, w: b.put_dir("x", f"s3://{source}/p/"))[0] == \
        ("QuiltException", "Provided directory does not exist")  # put_dir is for local directories only

    # fetch to an s3:// destination copies too
    out = _both(env, lambda b, w: b.fetch("c/one.md", f"s3://{_name(b)}/back/"))
    assert out[1]["back/one.md"] == b"new\n"
    out = _both(env, lambda b, w: b.fetch("tree/", f"s3://{_name(b)}/t2/"))
    assert out[1]["t2/data/a.csv"] == b"a,b\n"
    head = s3.head_object(Bucket=env["ours"], Key="tree/x.bin", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(bytes(3000)).digest()).decode()


def test_copy_from_s3_multipart(env):
    """From 8 MiB on the copy is UploadPartCopy parts (quilt3 itself fails there against moto, whose
    CompleteMultipartUpload answer lacks the checksum quilt3 requires)."""
    s3 = env["s3"]
    data = os.urandom(9 * 1024 * 1024)
    s3.put_object(Bucket=env["theirs"], Key="big.bin", Body=data)
    Bucket(f"s3://{env['ours']}").put_file("copied.bin", f"s3://{env['theirs']}/big.bin")
    assert s3.get_object(Bucket=env["ours"], Key="copied.bin")["Body"].read() == data
    assert s3.head_object(Bucket=env["ours"], Key="copied.bin")["ETag"].endswith('-2"')
