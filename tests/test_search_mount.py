"""Search as a directory: `MOUNT/.search/<query>/` against the catalog double, whose search answers from the
objects and packages really in the moto bucket; packages are pushed by the real quilt3."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from mounthelpers import mount_record
from quiltmount import api_keys, auth, quiltconfig
from quiltmount.bucket import Bucket
from test_config_auth import clean, stack  # noqa: F401  (fixtures: empty quilt3 state, the catalog double)
from test_registry import q3, quilt3_module  # noqa: F401  (fixture: quilt3 talking to the test server)

OBJECTS = {
    "data/iris.csv": b"sepal_length,species\n5.1,setosa\n",
    "data/nested/iris-2.csv": b"sepal_length,species\n6.3,virginica\n",
    "notes/readme.txt": b"all about flowers\n",
    "other.bin": b"\x00\x01",
}


def _walk_links(root: Path) -> dict[str, str]:
    """Every symlink under `root` (not followed) -> its target."""
    links = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            if path.is_symlink():
                links[str(path.relative_to(root))] = os.readlink(path)
    return links


@pytest.fixture
def searchable(q3, stack, s3, tmp_path) -> tuple[str, dict[str, str]]:
    """A bucket with plain objects and two revisions of demo/iris, a configured catalog and a login shared
    with the daemon (auth.json); returns (bucket, pointer name -> top hash)."""
    bucket = f"srch-{os.urandom(4).hex()}"
    s3.create_bucket(Bucket=bucket)
    for key, data in OBJECTS.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "iris.csv").write_bytes(b"a,b\n1,2\n")
    q3.Package().set_dir(".", str(src)).push("demo/iris", registry=f"s3://{bucket}", message="iris v1", force=True)
    (src / "iris.csv").write_bytes(b"a,b\n3,4\n")
    q3.Package().set_dir(".", str(src)).push("demo/iris", registry=f"s3://{bucket}", message="iris v2", force=True)
    pointers = {}
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=".quilt/named_packages/demo/iris/")["Contents"]:
        tag = item["Key"].rsplit("/", 1)[1]
        pointers[tag] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode().strip()
    quiltconfig.config(stack.url)
    auth.login_with_token(stack.issue_refresh_token())
    return bucket, pointers


def _expected_object_links(s3, bucket: str, term: str) -> set[str]:
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    return {key for key in keys if term in key.lower() and not key.startswith(".quilt/")}


def test_hits_are_links_into_the_mount(searchable, s3, mount):
    bucket, pointers = searchable
    root = mount(f"s3://{bucket}")
    query_dir = root / ".search" / "iris"

    links = _walk_links(query_dir)
    objects = {path for path in links if not path.startswith(".packages/")}
    assert objects == _expected_object_links(s3, bucket, "iris") and "data/iris.csv" in objects
    assert {path for path in links if path.startswith(".packages/")} == \
        {f".packages/demo/iris/{tag}" for tag in pointers}
    for path, target in links.items():
        assert target == "../" * (path.count("/") + 2) + path  # relative: works wherever the mount is
    # object hits read the bytes boto3 sees, with cat and with Python
    for path in objects:
        assert (query_dir / path).read_bytes() == s3.get_object(Bucket=bucket, Key=path)["Body"].read()
    assert subprocess.run(["cat", str(query_dir / "data/iris.csv")], capture_output=True,
                          check=True).stdout == OBJECTS["data/iris.csv"]
    # pointer hits resolve to the right revision
    for tag, top_hash in pointers.items():
        link = query_dir / ".packages/demo/iris" / tag
        assert os.path.realpath(link) == str(root / ".packages/demo/iris" / f"@{top_hash}")
    latest = query_dir / ".packages/demo/iris/latest"
    assert (latest / "iris.csv").read_bytes() == b"a,b\n3,4\n"
    found = subprocess.run(["find", "-L", str(query_dir), "-type", "f", "-name", "*.csv"], capture_output=True,
                           text=True, check=True).stdout.split()
    assert str(query_dir / "data/iris.csv") in found and str(latest / "iris.csv") in found

    # .hits.json holds the catalog's raw answer: the same hits quiltmount's (and quilt3's) Bucket.search gets
    raw = json.loads((query_dir / ".hits.json").read_text())
    direct = Bucket(f"s3://{bucket}").search("iris", limit=1000)
    assert [hit["_id"] for hit in raw["hits"]["hits"]] == [hit["_id"] for hit in direct]
    manifest_hits = [hit for hit in direct if "mnfst_message" in hit["_source"]]
    assert manifest_hits, "manifest documents are only in .hits.json"

    # each hit's score and document are extended attributes of its link
    hit = next(h for h in direct if h["_source"].get("key") == "data/iris.csv")
    link = query_dir / "data/iris.csv"
    assert json.loads(os.getxattr(link, "quilt.hit", follow_symlinks=False)) == hit
    assert float(os.getxattr(link, "quilt.score", follow_symlinks=False)) == hit["_score"]
    listed = subprocess.run(["getfattr", "-h", "-m", "-", "-d", str(link)], capture_output=True, text=True)
    assert listed.returncode == 0 and "quilt.score" in listed.stdout, listed.stderr


def test_query_names_listing_forgetting_and_read_only(searchable, mount):
    bucket, _ = searchable
    root = mount(f"s3://{bucket}", "--search-limit", "2")
    search = root / ".search"
    assert os.listdir(search) == []
    # %2F stands for '/', a JSON object is a DSL query
    assert _walk_links(search / "data%2Fnested") == {"data/nested/iris-2.csv": "../../../../data/nested/iris-2.csv"}
    dsl = '{"query": {"term": {"ext": ".txt"}}}'
    assert set(_walk_links(search / dsl)) == {"notes/readme.txt"}
    # --search-limit caps the hits
    assert len(json.loads((search / "iris" / ".hits.json").read_text())["hits"]["hits"]) == 2
    assert sorted(os.listdir(search)) == sorted(["data%2Fnested", dsl, "iris"])
    assert ".search" not in os.listdir(root)

    for action in (lambda: (search / "iris" / "new.txt").write_text("x"),
                   lambda: (search / "iris" / ".hits.json").write_text("x"),
                   lambda: os.unlink(search / dsl / "notes/readme.txt"),
                   lambda: os.symlink("x", search / "iris" / "link"),
                   lambda: os.mkdir(search / "iris" / "sub")):
        with pytest.raises(OSError) as failure:
            action()
        assert failure.value.errno == errno.EROFS
    result = subprocess.run(["mkdir", "-p", str(search / "notes")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr  # mkdir -p runs a query too
    assert "notes" in os.listdir(search)
    with pytest.raises(FileExistsError):
        os.mkdir(search / "another")  # looking the name up ran the query

    subprocess.run(["rmdir", str(search / "iris")], check=True)
    assert "iris" not in os.listdir(search)
    assert (root / "notes/readme.txt").read_bytes() == OBJECTS["notes/readme.txt"]  # the bucket is untouched


def test_results_are_kept_for_the_metadata_ttl(searchable, s3, mount):
    bucket, _ = searchable
    root = mount(f"s3://{bucket}", "--metadata-ttl", "2")
    query_dir = root / ".search" / "flowers.csv"
    assert _walk_links(query_dir) == {}
    s3.put_object(Bucket=bucket, Key="new/flowers.csv", Body=b"x")
    assert _walk_links(query_dir) == {}  # cached
    time.sleep(2.2)
    assert set(_walk_links(query_dir)) == {"new/flowers.csv"}


def _error_text(query_dir: Path) -> str:
    started = time.monotonic()
    assert os.listdir(query_dir) == ["ERROR.txt"]
    assert time.monotonic() - started < 40
    return (query_dir / "ERROR.txt").read_text()


def test_errors_say_what_to_run(clean, stack, s3, bucket, mount, monkeypatch):
    s3.put_object(Bucket=bucket, Key="a.txt", Body=b"a")
    root = mount(f"s3://{bucket}")
    text = _error_text(root / ".search" / "a")
    assert "No Quilt catalog is configured" in text and "quiltmount config" in text
    log_text = Path(mount_record(root)["log_file"]).read_text()
    assert "search 'a' in" in log_text and "failed" in log_text

    quiltconfig.config(stack.url)  # configured, not logged in: the catalog answers 401
    time.sleep(2.1)  # a failure is shown for ERROR_TTL, then retried
    text = _error_text(root / ".search" / "a")
    assert "Authentication failed" in text and "quiltmount login" in text

    auth.login_with_token(stack.issue_refresh_token())
    subprocess.run(["rmdir", str(root / ".search" / "a")], check=True)  # retry at once
    assert set(_walk_links(root / ".search" / "a")) == {"a.txt"}


def test_api_key_from_the_environment(stack, s3, bucket, mount, monkeypatch):
    s3.put_object(Bucket=bucket, Key="keyed.txt", Body=b"k")
    quiltconfig.config(stack.url)
    auth.login_with_token(stack.issue_refresh_token())
    _, secret = api_keys.create("mount")
    auth.logout()
    monkeypatch.setenv("MY_QUILT_KEY", secret)  # the daemon inherits the environment, never argv
    root = mount(f"s3://{bucket}", "--api-key-env", "MY_QUILT_KEY")
    assert set(_walk_links(root / ".search" / "keyed")) == {"keyed.txt"}
    searches = [r for r in stack.requests if r["path"] == "/api/search"]
    assert searches[-1]["headers"]["Authorization"] == f"Bearer {secret}"
    assert secret not in Path(mount_record(root)["log_file"]).read_text()


def test_catalog_down_and_local_directories(stack, s3, bucket, mount, tmp_path):
    quiltconfig.config(stack.url)
    auth.login_with_token(stack.issue_refresh_token())
    root = mount(f"s3://{bucket}")
    stack.stop()
    assert "Failed to connect to the catalog" in _error_text(root / ".search" / "x")
    local = tmp_path / "dir"
    local.mkdir()
    text = _error_text(mount(str(local)) / ".search" / "x")
    assert "needs a mount of an S3 bucket" in text


def test_which_hits_become_links():
    """Placement rules, on the tree alone: the mount's prefix, reserved (`.versions` anywhere) and impossible
    names, directories winning over links, and documents that name no object or pointer of this bucket."""
    from quiltmount.fs.searchtree import SearchTree

    def hit(index: str, **source: object) -> dict:
        return {"_index": index, "_id": str(source), "_score": 1.5, "_source": source}

    hits = [hit("b", key="p/a"), hit("b", key="p/a/b"), hit("b", key="p/x.csv", delete_marker=True),
            hit("b", key="elsewhere/y"), hit("b", key="p/.packages/z"), hit("b", key="p/" + "n" * 300),
            hit("b", key="p/.hits.json"), hit("b", key="p/c//d"), hit("other", key="p/e"),
            hit("b", key="p/vv/.versions/zebra.txt"), hit("b", key="p/.versions/yak.txt"),  # hidden, as in the bucket
            hit("b_packages", ptr_name="ns/pkg", ptr_tag="latest"), hit("b_packages", ptr_name="bad", ptr_tag="1"),
            hit("b_packages", ptr_name="ns/pkg", ptr_tag="../x"), hit("b_packages", mnfst_hash="f" * 64),
            hit("b_packages", entry_lk="a.csv", mnfst_hash="f" * 64), "not a hit"]
    tree = SearchTree(lambda query, limit: {"hits": {"hits": hits}}, bucket="b", key_prefix="p/")
    assert set(tree.readdir("q")) == {"a", ".packages", ".hits.json"}
    assert tree.readdir("q/a") == {"b": tree.lookup("q/a/b")}
    assert tree.readlink("q/a/b") == "../../../a/b"
    assert tree.readlink("q/.packages/ns/pkg/latest") == "../../../../../.packages/ns/pkg/latest"
    assert tree.lookup("q/a").is_dir and tree.xattrs("q/a") == {}
    assert json.loads(tree.xattrs("q/a/b")["quilt.hit"]) == hits[1]
    assert json.loads(tree.open_local("q/.hits.json").read(0, 1 << 20)) == {"hits": {"hits": hits}}
