"""`quiltmount.bucket.Bucket` against the moto server, side by side with the real `quilt3.Bucket`.

Every scenario runs twice on two identical buckets, once with each implementation; results, bucket
contents, local files and error types/messages must be the same.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from pathlib import Path

import pytest

from quiltmount.bucket import Bucket
from quiltmount.catalog import QuiltException


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
        if kind == "ClientError":
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
