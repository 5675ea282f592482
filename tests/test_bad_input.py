"""Bad input, as a corpus: every malformed or hostile thing gets a clear error, and nothing else suffers.

* Through one real mount of one bucket: malformed manifests and pointers (written straight into the moto
  bucket), hostile logical keys, odd S3 keys, next to a good package made by the real quilt3.  Each case gets
  its errno and a log line; the good package and the rest of the bucket keep working; nothing is written
  outside the mount's cache directory and no file outside it changes.
* Broken `config.yml` / `auth.json` / `credentials.json`, catalog answers that are not JSON or have the wrong
  shape, and bad command-line arguments: one line on stderr, exit 1 (2 for usage), never a traceback, never
  a secret in the message.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Response

from mounthelpers import mount_record
from quiltmount import api_keys, auth, catalog, cli, quiltconfig
from quiltmount.errors import QuiltException, QuiltmountError
from quiltmount.packages import manifest as mf
from quiltmount.paths import index_dir
from test_config_auth import clean, stack  # noqa: F401  (fixtures)
from test_registry import q3, quilt3_module  # noqa: F401  (fixtures)

GOOD_FILES = {"README.md": b"# good\n", "data/x.csv": b"a,b\n1,2\n"}
TIMESTAMP = "1795424102"  # the first timestamp the q3 fixture's clock gives quilt3
SECRET = "SeCrEt-4f1d2c"  # planted in bad input: must never show up in an error message

# ---------------------------------------------------------------------------------------------------------
# Building the corpus bucket


def errno_of(action: Callable[[], Any]) -> int | None:
    """The errno `action` fails with, or None if it succeeds."""
    try:
        action()
    except OSError as exc:
        return exc.errno
    return None


def manifest_bytes(header: dict, entries: list[mf.Entry]) -> tuple[str, bytes]:
    """(top hash, bytes) of a manifest in quilt3's format, whatever its logical keys (even lone surrogates)."""
    records = [header] + [{"logical_key": e.logical_key, "physical_keys": [e.physical_key], "size": e.size,
                           "hash": e.hash_object(), "meta": e.meta} for e in entries]
    return mf.compute_top_hash(header, entries), b"".join(json.dumps(r).encode() + b"\n" for r in records)


class Corpus:
    """A bucket holding a good package (pushed by quilt3) and bad registry content written with boto3."""

    def __init__(self, s3, bucket: str, good_hash: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.good_hash = good_hash
        self.good = mf.parse_manifest(self.get(f".quilt/packages/{good_hash}"))

    def get(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)

    def entry(self, logical_key: str = "README.md", **changes: Any) -> mf.Entry:
        """A copy of a good entry (its bytes are in the bucket), renamed and changed as asked."""
        original = next(e for e in self.good.entries if e.logical_key == "README.md")
        fields = dict(logical_key=logical_key, physical_key=original.physical_key, size=original.size,
                      hash_type=original.hash_type, hash_value=original.hash_value, meta={})
        fields.update(changes)
        return mf.Entry(**fields)

    def package(self, name: str, top_hash: str, *, pointer: str = "latest") -> None:
        self.put(f".quilt/named_packages/{name}/{pointer}", top_hash.encode())

    def raw_revision(self, name: str, body: bytes, top_hash: str | None = None) -> str:
        """A package whose latest manifest is `body` (named by `top_hash`, default the sha256 of `body`)."""
        top_hash = top_hash or hashlib.sha256(body).hexdigest()
        self.put(f".quilt/packages/{top_hash}", body)
        self.package(name, top_hash)
        return top_hash

    def revision(self, name: str, entries: list[mf.Entry], message: str = "corpus") -> str:
        """A package whose latest manifest has these entries, named by its true top hash."""
        top_hash, body = manifest_bytes({"version": "v0", "message": message}, entries)
        return self.raw_revision(name, body, top_hash)


HEADER = b'{"version": "v0", "message": null}\n'


def entry_line(**fields: Any) -> bytes:
    line = {"logical_key": "f", "physical_keys": ["s3://b/k"], "size": 1,
             "hash": {"type": "SHA256", "value": "00"}, "meta": {}}
    line.update(fields)
    return json.dumps(line).encode() + b"\n"


#: Manifests that are not manifests: the whole revision is EIO.
MALFORMED_MANIFESTS = {
    "not-json": b"this is not json\n",
    "empty": b"",
    "binary": bytes(range(256)),
    "header-array": b"[1, 2]\n",
    "no-header": entry_line(),
    "entry-array": HEADER + b"[]\n",
    "blank-line": HEADER + b"\n" + entry_line(),
    "size-string": HEADER + entry_line(size="7"),
    "size-negative": HEADER + entry_line(size=-1),
    "size-huge": HEADER + entry_line(size=2 ** 64),
    "size-nan": HEADER + entry_line().replace(b'"size": 1', b'"size": NaN'),
    "no-hash": HEADER + entry_line().replace(b', "hash": {"type": "SHA256", "value": "00"}', b""),
    "hash-string": HEADER + entry_line(hash="abc"),
    "hash-no-value": HEADER + entry_line(hash={"type": "SHA256"}),
    "meta-array": HEADER + entry_line(meta=[]),
    "physical-keys-string": HEADER + entry_line(physical_keys="s3://b/k"),
    "physical-key-http": HEADER + entry_line(physical_keys=["http://example.com/k"]),
    "physical-key-relative-file": HEADER + entry_line(physical_keys=["file:relative/x"]),
    "deep-nesting": HEADER + entry_line().replace(b'"meta": {}', b'"meta": ' + b"[" * 100_000 + b"]" * 100_000),
    "duplicate-keys": HEADER + entry_line() + entry_line(),
    "file-and-directory": HEADER + entry_line(logical_key="a") + entry_line(logical_key="a/b"),
    "dir-meta-no-slash": HEADER + b'{"logical_key": "d", "meta": {}}\n',
}

#: Logical keys that would leave the revision directory or cannot be file names: the revision is EIO.
HOSTILE_LOGICAL_KEYS = {
    "dotdot": "../x",
    "dotdot-etc": "../../../../../../etc/x",
    "inner-dotdot": "data/../../x",
    "absolute": "/etc/passwd",
    "nul": "a\x00b",
    "double-slash": "a//b",
    "dot": ".",
    "inner-dot": "a/./b",
    "trailing-slash": "dir/",
    "empty": "",
    "surrogate": "\udc80",
}

#: Pointer contents that are not a top hash: the pointer is left out (logged), the package's others stay.
BAD_POINTERS = {
    "garbage": b"hello world",
    "short-hex": b"a" * 63,
    "uppercase": None,  # the good hash in capitals: not how quilt3 writes it
    "empty": b"",
    "binary": b"\xff\xfe\x00",
    "traversal": b"../../../etc/passwd",
    "huge": b"0" * (2 << 20),  # never downloaded: larger than any pointer
}


def remove_bucket(s3, bucket: str) -> None:
    """Delete an (unversioned) bucket and its objects: the S3 server lives for the whole session, and other
    tests read every bucket (the catalog double's search), so bad input must not outlive its test."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])
    s3.delete_bucket(Bucket=bucket)


@pytest.fixture
def scratch_bucket(s3) -> Iterator[str]:
    """A new, empty bucket, removed after the test (list it before `mount`: it is removed after unmounting)."""
    bucket = f"scratch-{os.urandom(4).hex()}"
    s3.create_bucket(Bucket=bucket)
    yield bucket
    remove_bucket(s3, bucket)


@pytest.fixture
def corpus(q3, s3, scratch_bucket: str, tmp_path: Path) -> Corpus:
    bucket = scratch_bucket
    source = tmp_path / "good"
    for key, data in GOOD_FILES.items():
        (source / key).parent.mkdir(parents=True, exist_ok=True)
        (source / key).write_bytes(data)
    good_hash = q3.Package().set_dir(".", str(source)).push("good/pkg", registry=f"s3://{bucket}",
                                                             message="good", force=True).top_hash
    corpus = Corpus(s3, bucket, good_hash)
    for name, body in MALFORMED_MANIFESTS.items():
        corpus.raw_revision(f"malformed/{name}", body)
    altered_hash, altered = manifest_bytes({"version": "v0", "message": "signed"}, [corpus.entry()])
    corpus.raw_revision("malformed/top-hash-mismatch", altered.replace(b"signed", b"altered"), altered_hash)
    for name, key in HOSTILE_LOGICAL_KEYS.items():
        corpus.revision(f"hostile/{name}", [corpus.entry(), corpus.entry(key)])
    for name, content in BAD_POINTERS.items():
        corpus.package(f"pointer/{name}", good_hash, pointer=TIMESTAMP)
        corpus.put(f".quilt/named_packages/pointer/{name}/latest", content or good_hash.upper().encode())
    corpus.put(".quilt/named_packages/pointer/newline/latest", good_hash.encode() + b"\n")  # tolerated
    corpus.package("pointer/dangling", "cd" * 32)
    corpus.package("n" * 256 + "/pkg", good_hash)  # names the kernel cannot list
    corpus.package("names/" + "p" * 256, good_hash)
    corpus.package("names/ok", good_hash, pointer="1" + "0" * 255)
    corpus.package("names/ok", good_hash)
    corpus.put(".quilt/named_packages/../escape/latest", good_hash.encode())
    corpus.put(".quilt/named_packages/names/deep/er/latest", good_hash.encode())
    return corpus


# ---------------------------------------------------------------------------------------------------------
# Registry content through a mount


def test_malformed_registry_content_gets_eio_and_a_log_line(corpus: Corpus, mount, tmp_path: Path):
    cache = tmp_path / "cache"
    # "disk-cache": the blocks cache shared by the user's mounts (conftest's own_disk_cache), written by design.
    outside_before = snapshot(tmp_path, skip=("cache", "mnt1", "disk-cache"))
    mnt = mount(f"s3://{corpus.bucket}", "--cache-dir", str(cache))
    packages = mnt / ".packages"
    problems = []

    def expect(path: Path, expected: int | None, action: Callable[[Path], Any] = os.listdir) -> None:
        got = errno_of(lambda: action(path))
        if got != expected:
            problems.append(f"{path.relative_to(mnt)}: {errno.errorcode.get(got, got)}, expected "
                            f"{errno.errorcode.get(expected, expected)}")

    for name in [*MALFORMED_MANIFESTS, "top-hash-mismatch"]:
        expect(packages / "malformed" / name / "latest", errno.EIO)
    for name in HOSTILE_LOGICAL_KEYS:
        expect(packages / "hostile" / name / "latest", errno.EIO)
        expect(packages / "hostile" / name / "latest/README.md", errno.EIO, os.stat)
    for name in BAD_POINTERS:
        assert os.listdir(packages / "pointer" / name) == [TIMESTAMP], name
        expect(packages / "pointer" / name / "latest", errno.ENOENT, os.lstat)
        assert (packages / "pointer" / name / TIMESTAMP / "README.md").read_bytes() == GOOD_FILES["README.md"]
    assert (packages / "pointer/newline/latest/README.md").read_bytes() == GOOD_FILES["README.md"]
    expect(packages / "pointer/dangling/latest", errno.ENOENT)
    assert sorted(os.listdir(packages)) == ["good", "hostile", "malformed", "names", "pointer"]
    assert os.listdir(packages / "names") == ["ok"]
    assert os.listdir(packages / "names/ok") == ["latest"]
    assert not problems, "\n".join(problems)

    # Everything else still works, nothing was written outside the cache, and the cache holds only manifests.
    for key, data in GOOD_FILES.items():
        assert (packages / "good/pkg/latest" / key).read_bytes() == data
    assert snapshot(tmp_path, skip=("cache", "mnt1", "disk-cache")) == outside_before
    cached = {p.relative_to(cache).parts[0] for p in cache.rglob("*") if p.is_file()}
    assert cached <= {"staging"}, cached
    # Revision indexes live in the user's cache, named by top hash; no temporary file is left behind.
    assert all(mf.is_top_hash(p.name.partition("-")[0]) and p.suffix == ".sqlite"
               for p in Path(index_dir()).iterdir())

    log = Path(mount_record(mnt)["log_file"]).read_text(errors="replace")
    assert "Traceback" not in log
    for needle in ("is not valid JSON", "is not valid UTF-8", "hashes to", "unsafe logical key '../x'",
                   "unsafe logical key '/etc/passwd'", "'size' must be an integer", "duplicate logical key",
                   "does not contain a top hash", "too large to contain a top hash", "skipping package 'nnnn",
                   "skipping pointer '1000"):
        assert needle in log, needle
    assert str(2 << 20) in log  # the huge pointer was refused by its size, not downloaded
    lines = [line for line in log.splitlines() if "malformed/binary" in line]
    assert lines and all(len(line) < 2000 for line in lines)


def test_entries_the_mount_cannot_serve_fail_alone(corpus: Corpus, mount, tmp_path: Path):
    secret_file = tmp_path / "local-secret.txt"
    secret_file.write_text(SECRET)
    local = mf.format_physical_key(mf.PhysicalKey("file", None, str(secret_file)))
    long_name, long_dir = "x" * 4096, "d/" + "y" * 256 + "/z"
    top_hash = corpus.revision("partial/pkg", [
        corpus.entry(),
        corpus.entry("a" * 255),  # the longest name a directory entry can have
        corpus.entry(long_name),
        corpus.entry(long_dir),
        corpus.entry("bad-hash", hash_value="AAAA" + corpus.entry().hash_value[4:]),
        corpus.entry("unknown-hash-type", hash_type="MD5"),
        corpus.entry("too-large", size=100),
        # (a hash of its own: README.md's bytes, read whole and checked, could be served for it from the cache)
        corpus.entry("missing-object", physical_key=f"s3://{corpus.bucket}/no/such/key",
                     hash_value="BBBB" + corpus.entry().hash_value[4:]),
        corpus.entry("local-file", physical_key=local, size=len(SECRET)),
    ])
    mnt = mount(f"s3://{corpus.bucket}")
    revision = mnt / ".packages/partial/pkg/latest"
    assert sorted(os.listdir(revision)) == sorted(["README.md", "a" * 255, "bad-hash", "unknown-hash-type",
                                                   "too-large", "missing-object", "local-file"])
    assert (revision / "README.md").read_bytes() == GOOD_FILES["README.md"]
    assert (revision / ("a" * 255)).read_bytes() == GOOD_FILES["README.md"]
    assert errno_of(lambda: os.stat(revision / "d")) == errno.ENOENT
    for name, expected in (("bad-hash", errno.EIO), ("unknown-hash-type", errno.EIO), ("too-large", errno.EIO),
                           ("missing-object", errno.EIO), ("local-file", errno.EACCES)):
        assert errno_of(lambda: (revision / name).read_bytes()) == expected, name
    assert (revision / "local-file").stat().st_size == len(SECRET)  # listed, never read
    assert (revision / "README.md").read_bytes() == GOOD_FILES["README.md"]

    log = Path(mount_record(mnt)["log_file"]).read_text()
    assert "Traceback" not in log
    assert SECRET not in log
    assert f"revision {top_hash}: skipping logical key 'xxxxx" in log
    for needle in ("unsupported hash type 'MD5'", "does not match the manifest hash", "is a local file",
                   "component longer than 255 bytes"):
        assert needle in log, needle


def snapshot(root: Path, skip: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file under `root` except the top-level names in `skip`."""
    found = {}
    for path in root.rglob("*"):
        if path.relative_to(root).parts[0] in skip or not path.is_file():
            continue
        st = path.stat()
        found[str(path)] = (st.st_size, st.st_mtime_ns)
    return found


# ---------------------------------------------------------------------------------------------------------
# Odd S3 keys

LONG_KEY = "odd/" + "/".join(["k" * 200] * 4 + ["k" * 216])  # exactly 1,024 bytes, every component <= 255

#: key -> name it is listed under in MOUNT/odd (None: skipped, with a log line).
ODD_KEYS = {
    "odd/trailing space ": "trailing space ",
    " odd-leading-space": None,  # outside odd/
    "odd/ctrl\x01\x1f": "ctrl\x01\x1f",
    "odd/tab\there": "tab\there",
    "odd/del\x7f": "del\x7f",
    "odd/a b+c#d?e%f": "a b+c#d?e%f",
    "odd/%2e%2e": "%2e%2e",
    "odd/" + "é" * 127: "é" * 127,  # 254 bytes
    LONG_KEY: "k" * 200,
    "odd/both": "both",  # also a prefix: the directory wins
    "odd/both/child": None,
    "odd//double": None,
    "odd/./dot": None,
    "odd/../up": None,
    "odd/nul\x00byte": None,
    "odd/" + "L" * 256: None,
    "odd/" + "é" * 128: None,  # 128 characters, 256 bytes
    "/leading-slash": None,
}


def test_odd_s3_keys(s3, scratch_bucket, mount):
    bucket = scratch_bucket
    for key in ODD_KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode("utf-8", "surrogateescape"))
    mnt = mount(f"s3://{bucket}", "--sync-on-close")
    assert sorted(os.listdir(mnt / "odd")) == sorted(name for name in ODD_KEYS.values() if name)
    for key, name in ODD_KEYS.items():
        if name and key != "odd/both" and key != LONG_KEY:
            assert (mnt / "odd" / name).read_bytes() == key.encode(), key
    assert (mnt / LONG_KEY).read_bytes() == LONG_KEY.encode()
    assert (mnt / "odd/both").is_dir() and (mnt / "odd/both/child").read_bytes() == b"odd/both/child"
    for missing in ("odd/" + "L" * 255 + "L", "odd/nul"):
        assert errno_of(lambda: os.stat(mnt / missing)) in (errno.ENOENT, errno.ENAMETOOLONG), missing
    assert sorted(os.listdir(mnt)) == [" odd-leading-space", "odd"]
    # A control character in a name written through the mount reaches S3 as it is.
    (mnt / "odd/new\x02file").write_bytes(b"written")
    assert s3.get_object(Bucket=bucket, Key="odd/new\x02file")["Body"].read() == b"written"

    log = Path(mount_record(mnt)["log_file"]).read_text()
    for needle in ("'odd//'", "'odd/./'", "'odd/../'", "NUL byte", "longer than 255 bytes", "'odd/both'"):
        assert needle in log, needle
    assert "Traceback" not in log


# ---------------------------------------------------------------------------------------------------------
# Broken quilt3 state files


def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    """`quiltmount ARGV` in this process: (exit status, stdout, stderr).  An uncaught exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO(stdin))
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(result: tuple[int, str, str], needle: str, status: int = 1) -> None:
    code, _, err = result
    assert code == status, result
    lines = err.strip().splitlines()
    assert "Traceback" not in err and SECRET not in err, err
    if status == 1:
        assert len(lines) == 1 and lines[0].startswith("quiltmount: error: "), err
    assert needle in lines[-1], err


def data_file(name: str) -> Path:
    return quiltconfig.data_dir() / name


BROKEN_CONFIGS = {
    "binary": (b"\xff\xfe\x00garbage", "not UTF-8 text"),
    "bad-yaml": (b"navigator_url: [unclosed\n", "invalid YAML"),
    "list": (b"- 1\n- 2\n", "not a YAML mapping"),
    "empty": (b"", "not a YAML mapping"),  # quilt3 itself fails with a TypeError on this one
    "number-key": (b"1: x\n", "not a string"),
    "python-tag": (b"!!python/object/apply:os.system ['touch /tmp/quiltmount-pwned']\n", "invalid YAML"),
    "registry-mapping": (b"default_local_registry: {a: 1}\n", "must be a registry URL"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CONFIGS))
def test_broken_config_yml(clean, case):  # noqa: F811
    content, needle = BROKEN_CONFIGS[case]
    data_file("config.yml").parent.mkdir(parents=True, exist_ok=True)
    data_file("config.yml").write_bytes(content)
    commands = [["packages", "list"]] + ([] if case == "registry-mapping" else [["config"], ["whoami"]])
    for command in commands:
        assert_one_line_error(run(*command), needle)
    assert not os.path.exists("/tmp/quiltmount-pwned")
    with pytest.raises(QuiltmountError, match=needle):
        quiltconfig.default_local_registry()


def test_config_yml_is_a_directory(clean):  # noqa: F811
    data_file("config.yml").mkdir(parents=True)
    try:
        assert_one_line_error(run("config"), "Is a directory")
    finally:
        data_file("config.yml").rmdir()


def _log_in(stack_double) -> str:
    quiltconfig.config(stack_double.url)
    return stack_double.url


BROKEN_AUTH = {
    "not-json": (b"{", "Cannot read"),
    "binary": (b"\xff\xfe", "Cannot read"),
    "array": (b"[1, 2]", "Authentication failed"),  # not a login: the catalog says 401
    "entry-string": (b'{"URL": "token"}', "Authentication failed"),
    "token-with-newline": (json.dumps({"URL": {"access_token": f"abc\n{SECRET}", "refresh_token": SECRET,
                                                "expires_at": 4e9}}).encode(), "malformed"),
    "token-not-string": (b'{"URL": {"access_token": 5, "refresh_token": "r", "expires_at": 4e9}}', "malformed"),
    "token-not-ascii": (json.dumps({"URL": {"access_token": "t\u00e9\u4e2d", "refresh_token": "r",
                                            "expires_at": 4e9}}).encode(), "malformed"),
    "bad-refresh": (json.dumps({"URL": {"refresh_token": SECRET, "expires_at": "soon"}}).encode(),
                    "Failed to update the access token"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_AUTH))
def test_broken_auth_json(stack, case):  # noqa: F811
    url = _log_in(stack)
    content, needle = BROKEN_AUTH[case]
    data_file("auth.json").write_bytes(content.replace(b"URL", url.encode()))
    assert_one_line_error(run("api-keys", "list"), needle)
    with pytest.raises(QuiltException, match=needle) as failure:
        api_keys.list()
    assert SECRET not in str(failure.value)


BROKEN_CREDENTIALS = {
    "not-json": b"{",
    "missing-fields": b'{"access_key": "a"}',
    "not-strings": json.dumps({"access_key": 1, "secret_key": SECRET, "token": None, "expiry_time": 5}).encode(),
    "bad-expiry": json.dumps({"access_key": "a", "secret_key": SECRET, "token": "t",
                              "expiry_time": "the day after tomorrow"}).encode(),
    "naive-expiry": json.dumps({"access_key": "a", "secret_key": SECRET, "token": "t",
                                "expiry_time": "2999-01-01T00:00:00"}).encode(),  # quilt3: a TypeError at first use
}


@pytest.mark.parametrize("case", sorted(BROKEN_CREDENTIALS))
def test_broken_credentials_json(clean, case):  # noqa: F811
    data_file("credentials.json").parent.mkdir(parents=True, exist_ok=True)
    data_file("credentials.json").write_bytes(BROKEN_CREDENTIALS[case])
    with pytest.raises(QuiltException, match="credentials.json") as failure:
        auth.get_boto3_session()
    assert SECRET not in str(failure.value) and "\n" not in str(failure.value)
    assert_one_line_error(run("bucket", "ls", "s3://b"), "credentials.json")


# ---------------------------------------------------------------------------------------------------------
# Catalog answers that are not JSON or have the wrong shape


def answer(body: Any, status: int = 200, mimetype: str = "application/json") -> Callable[[], Response]:
    text = body if isinstance(body, str) else json.dumps(body)
    return lambda: Response(text, status=status, mimetype=mimetype)


HTML = "<html><body>Sign in</body></html>"
KEY = {"id": "k1", "name": "n", "fingerprint": "f", "createdAt": "2025-01-01T00:00:00Z",
       "expiresAt": "2026-01-01T00:00:00Z", "lastUsedAt": None, "status": "ACTIVE", "userEmail": "u@example.com"}

#: (endpoint, answer, what triggers it, expected message).
CATALOG_ANSWERS = {
    "graphql-html": ("graphql", answer(HTML, mimetype="text/html"), "list", "did not answer with JSON"),
    "graphql-array": ("graphql", answer([SECRET]), "list", "Invalid GraphQL response"),
    "graphql-data-string": ("graphql", answer({"data": SECRET}), "list", "'data' is a JSON string"),
    "graphql-me-string": ("graphql", answer({"data": {"me": SECRET}}), "list", "Invalid me"),
    "graphql-keys-object": ("graphql", answer({"data": {"me": {"apiKeys": {"k": SECRET}}}}), "list",
                            "Invalid apiKeys"),
    "graphql-key-incomplete": ("graphql", answer({"data": {"me": {"apiKeys": [{"id": 1}]}}}), "list",
                               "Invalid API key"),
    "graphql-key-bad-date": ("graphql", answer({"data": {"me": {"apiKeys": [dict(KEY, createdAt="noon")]}}}),
                             "list", "Invalid API key"),
    "graphql-errors-object": ("graphql", answer({"errors": {"message": "denied"}}), "list", "denied"),
    "graphql-500-html": ("graphql", answer(HTML, 500, "text/html"), "list", "Unexpected failure: error 500"),
    "graphql-500-no-message": ("graphql", answer({"error": SECRET}, 500), "list", "Unexpected failure: error 500"),
    "create-array": ("graphql", answer({"data": {"apiKeyCreate": ["qk_" + SECRET]}}), "create",
                     "Invalid apiKeyCreate result"),
    "create-no-api-key": ("graphql", answer({"data": {"apiKeyCreate": {"__typename": "APIKeyCreated",
                                                                       "secret": "qk_" + SECRET}}}),
                          "create", "Invalid API key"),
    "create-errors-strings": ("graphql", answer({"data": {"apiKeyCreate": {"__typename": "InvalidInput",
                                                                           "errors": [SECRET]}}}),
                              "create", "not a list of input errors"),
    "create-error-message-number": ("graphql", answer({"data": {"apiKeyCreate": {"__typename": "InvalidInput",
                                                                                 "errors": [{"path": None, "message": 5,
                                                                                             "name": SECRET}]}}}),
                                    "create", "not a list of input errors"),
    "revoke-not-ok": ("graphql", answer({"data": {"apiKeyRevoke": {"__typename": "OperationError",
                                                                   "message": SECRET}}}),
                      "revoke", "Unexpected apiKeyRevoke result: 'OperationError', not 'Ok'"),
    "revoke-no-typename": ("graphql", answer({"data": {"apiKeyRevoke": {}}}), "revoke",
                           "Unexpected apiKeyRevoke result: 'None', not 'Ok'"),
    "search-html": ("search", answer(HTML, mimetype="text/html"), "search", "did not answer with JSON"),
    "search-hits-list": ("search", answer({"hits": []}), "search", "no hits.hits list"),
    "search-hit-string": ("search", answer({"hits": {"hits": [SECRET]}}), "search", "a hit is not an object"),
    "search-source-list": ("search", answer({"hits": {"hits": [{"_source": [SECRET]}]}}), "search",
                           "a hit is not an object"),
    "token-html": ("token", answer(HTML, mimetype="text/html"), "login", "not JSON"),
    "token-array": ("token", answer([SECRET]), "login", "a JSON array, not an object"),
    "token-incomplete": ("token", answer({"access_token": SECRET}), "login", "lacks 'refresh_token'"),
    "token-not-strings": ("token", answer({"refresh_token": 1, "access_token": [SECRET], "expires_at": 4e9}),
                          "login", "not a string"),
    "token-expiry-text": ("token", answer({"refresh_token": "r", "access_token": SECRET, "expires_at": "soon"}),
                          "login", "non-numeric expires_at"),
    "credentials-html": ("get_credentials", answer(HTML, mimetype="text/html"), "login", "did not answer with JSON"),
    "credentials-array": ("get_credentials", answer([SECRET]), "login", "not a set of AWS credentials"),
    "credentials-bad-expiry": ("get_credentials", answer({"AccessKeyId": "a", "SecretAccessKey": SECRET,
                                                          "SessionToken": "t", "Expiration": "never"}),
                               "login", "not a set of AWS credentials"),
    "credentials-naive-expiry": ("get_credentials", answer({"AccessKeyId": "a", "SecretAccessKey": SECRET,
                                                            "SessionToken": "t", "Expiration": "2999-01-01T00:00:00"}),
                                 "login", "not a set of AWS credentials: the expiry time has no time zone"),
    "config-html": ("config_json", answer(HTML, mimetype="text/html"), "config", "not a Quilt catalog configuration"),
    "config-array": ("config_json", answer([1]), "config", "not a Quilt catalog configuration"),
    "config-url-number": ("config_json", answer({"registryUrl": "http://127.0.0.1:9", "docs_url": 5}), "config",
                          "/config.json: Invalid URL -- Requires a string: 5"),
    "config-navigator-url-number": ("config_json", answer({"navigator_url": 5}), "config",
                                    "/config.json: Expected a string for config key 'navigator_url'"),
}


def _trigger(what: str, stack_double) -> tuple[Callable[[], Any], list[str], str]:
    """(Python call, CLI arguments, CLI stdin) for one catalog operation."""
    if what == "list":
        return api_keys.list, ["api-keys", "list"], ""
    if what == "create":
        return lambda: api_keys.create("new"), ["api-keys", "create", "new"], ""
    if what == "revoke":
        return lambda: api_keys.revoke(id="k1"), ["api-keys", "revoke", "--id", "k1"], ""
    if what == "search":
        return lambda: catalog.search_api("x", index="b"), ["search", "x", "--bucket", "b"], ""
    if what == "login":
        code = stack_double.issue_refresh_token()
        return lambda: auth.login_with_token(code), ["login"], stack_double.issue_refresh_token() + "\n"
    return lambda: quiltconfig.config(stack_double.url), ["config", stack_double.url], ""


@pytest.mark.parametrize("case", sorted(CATALOG_ANSWERS))
def test_catalog_answers_with_the_wrong_shape(stack, case, monkeypatch):  # noqa: F811
    endpoint, view, what, needle = CATALOG_ANSWERS[case]
    monkeypatch.setattr("webbrowser.open", lambda url: False)
    quiltconfig.config(stack.url)
    if what in ("list", "create", "revoke", "search"):
        auth.login_with_token(stack.issue_refresh_token())
    monkeypatch.setitem(stack.app.view_functions, endpoint, view)
    call, argv, stdin = _trigger(what, stack)
    with pytest.raises(QuiltException) as failure:
        call()
    message = str(failure.value)
    assert needle in message and SECRET not in message and "\n" not in message, message
    assert_one_line_error(run(*argv, stdin=stdin), needle)


def test_what_the_catalog_sends_is_printed_on_one_line(stack, monkeypatch):  # noqa: F811
    """A catalog's message, key name or search hit holding a line break cannot forge a line of output (README:
    errors are one line); hits are printed whatever their values' types, as quilt3 returns them as they come."""
    quiltconfig.config(stack.url)
    auth.login_with_token(stack.issue_refresh_token())
    monkeypatch.setitem(stack.app.view_functions, "graphql",
                        answer({"message": "denied\nquiltmount: error: forged"}, 403))
    assert_one_line_error(run("api-keys", "list"), "denied\\nquiltmount: error: forged")
    monkeypatch.setitem(stack.app.view_functions, "graphql",
                        answer({"data": {"me": {"apiKeys": [dict(KEY, name="n\nforged")]}}}))
    listed = run("api-keys", "list")
    assert listed[0] == 0 and len(listed[1].splitlines()) == 1 and "n\\nforged" in listed[1], listed
    hits = [{"_index": None, "_id": "x", "_source": {"ptr_name": "a/b", "ptr_tag": "latest"}},
            {"_index": 5, "_id": "y", "_source": {"key": "k\rforged"}},
            {"_index": "b", "_id": "z\nforged", "_source": {}}]
    monkeypatch.setitem(stack.app.view_functions, "search", answer({"hits": {"hits": hits}}))
    assert run("search", "x") == (0, ": a/b:latest\ns3://5/k\\rforged\nb: z\\nforged\n", "")


def test_s3_keys_and_messages_are_printed_on_one_line(clean, s3, scratch_bucket, monkeypatch, s3_server):  # noqa: F811
    """A key holding a line break, given or listed, and botocore's multi-line messages stay on one line."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    bucket = f"s3://{scratch_bucket}"
    assert_one_line_error(run("bucket", "fetch", bucket, "no\nsuch", "/nonexistent"), "not found: no\\nsuch")
    assert_one_line_error(run("bucket", "rm", bucket, "no\nsuch"), "not found: no\\nsuch")
    assert_one_line_error(run("bucket", "ls", "s3://bad_name!"), "Parameter validation failed:\\nInvalid bucket")
    s3.put_object(Bucket=scratch_bucket, Key="a\rb", Body=b"x")  # (the test server refuses keys holding \n)
    assert run("bucket", "ls", bucket) == (0, f"{1:>12}  a\\rb\n", "")


def test_pointer_names_are_printed_on_one_line(registry_dir):
    package = Path(registry_dir, ".quilt/named_packages/a/b")
    package.mkdir(parents=True)
    (package / "tag\nforged").write_text("f" * 64)
    assert run("packages", "versions", "a/b", "--registry", registry_dir) == (0, f"tag\\nforged  {'f' * 64}\n", "")


# ---------------------------------------------------------------------------------------------------------
# Bad command-line arguments


@pytest.fixture
def registry_dir(tmp_path: Path) -> str:
    (tmp_path / "registry/.quilt/named_packages").mkdir(parents=True)
    return str(tmp_path / "registry")


USAGE_ERRORS = {  # exit 2: argparse's usage line, then one error line
    "nothing": ([], "required"),
    "mount-no-mountpoint": (["mount", "s3://b"], "required"),
    "negative-uid": (["mount", "s3://b", "/m", "--uid", "-1"], "must be >= 0"),
    "uid-minus-one-unsigned": (["mount", "s3://b", "/m", "--uid", "4294967295"], "must be <= 4294967294"),
    "gid-wrapping-to-root": (["mount", "s3://b", "/m", "--gid", "4294967296"], "must be <= 4294967294"),
    "zero-attempts": (["mount", "s3://b", "/m", "--upload-attempts", "0"], "must be >= 1"),
    "negative-size": (["mount", "s3://b", "/m", "--disk-cache-size", "-5"], "invalid size"),
    "disk-cap-below-a-block": (["mount", "s3://b", "/m", "--disk-cache-size", "512K"],
                               "invalid size '512K': must be 0 (no disk cache) or at least 1.0 MiB (one block)"),
    "memory-below-read-ahead": (["mount", "s3://b", "/m", "--memory-cache-size", "8M"],
                                "invalid size '8M': must be at least 16.0 MiB (8 MiB of read-ahead in flight"),
    "huge-mode": (["mount", "s3://b", "/m", "--dir-mode", "77777"], "invalid mode"),
    "log-level": (["mount", "s3://b", "/m", "--log-level", "LOUD"], "invalid choice"),
    "packages-no-verb": (["packages"], "required"),
    "expires-in-days": (["api-keys", "create", "k", "--expires-in-days", "soon"], "invalid number"),
    "revoke-nothing": (["api-keys", "revoke"], "one of the arguments"),
    "revoke-both": (["api-keys", "revoke", "--id", "1", "--secret-env", "X"], "not allowed with"),
    "set-without-equals": (["config", "--set", "novalue"], "expected KEY=VALUE"),
    "set-empty-key": (["config", "--set", "=v"], "empty key"),
    "config-url-and-set": (["config", "http://x.example", "--set", "a=b"], "--set: not allowed with argument URL"),
    "config-reset-and-set": (["config", "", "--set", "a=b"], "--set: not allowed with argument URL"),
    "search-limit": (["search", "q", "--limit", "0"], "must be >= 1"),
    "unknown-verb": (["frobnicate"], "invalid choice"),
    "empty-package": (["mount", "s3://b", "/m", "--package", ""], "invalid package ''"),
    "package-empty-pointer": (["mount", "s3://b", "/m", "--package", "ns/p:"], "nothing after ':'"),
    "package-empty-hash": (["mount", "s3://b", "/m", "--package", "ns/p@"], "nothing after '@'"),
    "index-empty-hash": (["packages", "index", "ns/r@"], "nothing after '@'"),
    "endpoint-not-a-url": (["mount", "s3://b", "/m", "--endpoint-url", "not-a-url"],
                           "invalid endpoint URL 'not-a-url': expected http://HOST[:PORT] or https://HOST[:PORT]"),
    "endpoint-unclosed-ipv6": (["mount", "s3://b", "/m", "--endpoint-url", "http://[::1"],
                               "invalid endpoint URL 'http://[::1': not a URL"),
    "endpoint-port": (["mount", "s3://b", "/m", "--endpoint-url", "http://host:port"], "invalid port"),
    "endpoint-no-host": (["mount", "s3://b", "/m", "--endpoint-url", "http://:9000"], "no host"),
    "endpoint-space": (["mount", "s3://b", "/m", "--endpoint-url", "http://a b:9000"], "invalid host 'a b'"),
    "endpoint-scheme": (["mount", "s3://b", "/m", "--endpoint-url", "ftp://host"], "expected http://HOST"),
    # each of these reached the daemon: a traceback with --foreground, "mount failed" (exit 32 from mount(8)) else
    "as-of-past-time-t": (["mount", "s3://b", "/m", "--as-of", "99999999999999999999"],
                          "invalid time '99999999999999999999': out of range (years 1-9999)"),
    "as-of-past-year-9999": (["mount", "s3://b", "/m", "--as-of", "253402300800"], "out of range"),
    "region-with-space": (["mount", "s3://b", "/m", "--region", "bad region"],
                          "invalid region 'bad region': expected a name such as us-east-1"),
    "region-empty": (["mount", "s3://b", "/m", "--region", ""], "invalid region ''"),
    "stop-timeout-past-sigtimedwait": (["mount", "s3://b", "/m", "--stop-timeout", "10000000000"],
                                       "must be <= 31536000"),
    # these were taken as not given: the mount went ahead without the credentials file, or the key
    "env-file-empty": (["mount", "s3://b", "/m", "--env-file", ""], "argument --env-file: must not be empty"),
    "api-key-env-empty": (["mount", "s3://b", "/m", "--api-key-env", ""], "argument --api-key-env: must not be empty"),
}

ONE_LINE_ERRORS = {  # exit 1
    "s3-no-bucket": (["mount", "s3://", "{tmp}"], "expected s3://BUCKET"),
    "quilt-no-package": (["mount", "quilt+s3://b", "{tmp}"], "expected quilt+s3://BUCKET#package="),
    "unsupported-scheme": (["mount", "ftp://host/x", "{tmp}"], "unsupported source"),
    "missing-directory": (["mount", "{tmp}/no/such/dir", "{tmp}"], "source directory does not exist"),
    "empty-source": (["mount", "", "{tmp}"], "invalid source ''"),  # e.g. an unset variable: not the cwd
    "file-url-without-path": (["mount", "file://", "{tmp}"], "invalid source 'file://'"),
    "quilt-empty-pointer": (["mount", "quilt+s3://b#package=ns/p:", "{tmp}"], "nothing after ':'"),
    "quilt-empty-hash": (["mount", "quilt+s3://b#package=ns/p@", "{tmp}"], "nothing after '@'"),
    "quilt-path": (["mount", "quilt+s3://b#package=ns/p&path=data/a.csv&catalog=c.example", "{tmp}"],
                   "mount the package and open data/a.csv in it"),
    "quilt-unknown-field": (["mount", "quilt+s3://b#package=ns/p&x=1", "{tmp}"], "[&catalog=HOST]"),
    "versions-bad-name": (["packages", "versions", "../../etc", "--registry", "{registry}"], "Invalid package name"),
    "versions-three-parts": (["packages", "versions", "a/b/c", "--registry", "{registry}"], "Invalid package name"),
    "list-gs": (["packages", "list", "gs://bucket"], "Invalid registry URL"),
    "list-s3-no-bucket": (["packages", "list", "s3://"], "Missing bucket"),
    "list-version-id": (["packages", "list", "s3://b?versionId=1"], "cannot have a version ID"),
    "delete-short-hash": (["packages", "delete", "a/b", "--registry", "{registry}", "--top-hash", "abc"],
                          "Invalid hash"),
    "delete-traversal-hash": (["packages", "delete", "a/b", "--registry", "{registry}", "--top-hash",
                               "../../../../etc/passwd"], "Found zero matches"),
    "delete-unknown": (["packages", "delete", "a/b", "--registry", "{registry}"], "not found"),
    "log-file-under-a-file": (["mount", "{tmp}", "{tmp}", "--log-file", "/dev/null/quiltmount.log"],
                              "--log-file /dev/null/quiltmount.log: /dev/null is not a directory"),
    "umount-not-mounted": (["umount", "{tmp}"], "not mounted"),
    "search-bad-json": (["search", "{{not json", "--bucket", "b"], "not valid"),
    "revoke-unset-env": (["api-keys", "revoke", "--secret-env", "QUILTMOUNT_TEST_UNSET"], "is not set"),
    "api-key-env-unset": (["api-keys", "list", "--api-key-env", "QUILTMOUNT_TEST_UNSET"], "is not set"),
    "bucket-not-s3": (["bucket", "ls", "notauri"], "S3 URI"),
    "bucket-with-path": (["bucket", "ls", "s3://b/some/path"], "shouldn't contain a path"),
    "config-no-host": (["config", "nohost"], "Invalid URL"),
    "config-bad-port": (["config", "--set", "navigator_url=http://host:port"], "Port must be a number"),
}


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_errors(clean, case):  # noqa: F811
    argv, needle = USAGE_ERRORS[case]
    assert_one_line_error(run(*argv), needle, status=2)


@pytest.mark.parametrize("case", sorted(ONE_LINE_ERRORS))
def test_bad_arguments(clean, case, tmp_path, registry_dir, monkeypatch):  # noqa: F811
    monkeypatch.delenv("QUILTMOUNT_TEST_UNSET", raising=False)
    argv, needle = ONE_LINE_ERRORS[case]
    argv = [arg.format(tmp=tmp_path, registry=registry_dir) for arg in argv]
    assert_one_line_error(run(*argv), needle)


MOUNT_ERRORS = {  # these reach the daemon, which reports one line before mounting anything
    "package-traversal": (["--package", "../../etc"], "invalid package name"),
    "package-bad-hash": (["--package", "good/pkg@zzzzzz"], "not a top hash"),
    "package-unknown-pointer": (["--package", "good/pkg:nosuch"], "has no pointer 'nosuch'"),
}


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_an_endpoint_url_from_the_environment_that_is_not_a_url(clean, variable, tmp_path, monkeypatch):  # noqa: F811
    """What botocore would take from the environment is checked as --endpoint-url is, naming the variable
    (`packages list` printed botocore's traceback, `mount` "mount failed: Invalid endpoint")."""
    monkeypatch.setenv(variable, "not-a-url")
    needle = f"invalid {variable} 'not-a-url': expected http://HOST[:PORT]"
    assert_one_line_error(run("mount", "s3://b", str(tmp_path)), needle)
    assert_one_line_error(run("packages", "list", "s3://b"), needle)


def test_mount_errors(q3, s3, scratch_bucket, tmp_path, s3_server):
    bucket = scratch_bucket
    (tmp_path / "src").mkdir()
    (tmp_path / "src/f").write_text("f")
    q3.Package().set_dir(".", str(tmp_path / "src")).push("good/pkg", registry=f"s3://{bucket}", force=True)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "mnt").mkdir()
    for case, (options, needle) in MOUNT_ERRORS.items():
        options = [option.format(file=tmp_path / "a-file") for option in options]
        if "--endpoint-url" not in options:
            options += ["--endpoint-url", s3_server.endpoint_url]
        result = run("mount", f"s3://{bucket}", str(tmp_path / "mnt"), *options)
        assert_one_line_error(result, needle)
        assert not os.path.ismount(tmp_path / "mnt"), case
