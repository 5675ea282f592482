"""Manifest format, top hash, entry hashes and physical keys: spec vectors (quilt-protocol.md section 6) and
cross-checks against the real quilt3 (local builds; no S3 needed)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
from pathlib import Path

import pytest

from quiltmount.packages import manifest as mf
from quiltmount.packages.manifest import (
    Entry, Manifest, ManifestError, PhysicalKey, PhysicalKeyError, compute_top_hash, format_physical_key,
    hash_bytes, make_hasher, parse_manifest, parse_physical_key, top_hash_parts, tree_order, write_manifest,
)

MiB = 1024 * 1024

# Spec 6.8, byte for byte (1005 bytes).
WORKED_EXAMPLE = (
    '{"version": "v0", "user_meta": {"author": "Zoë", "n": 1}, "message": "first version"}\n'
    '{"logical_key": "data/", "meta": {"kind": "dir"}}\n'
    '{"logical_key": "README.md", "physical_keys": ["file:///tmp/qx/example/src/README.md"], "size": 7, "hash": '
    '{"type": "sha2-256-chunked", "value": "HB+mGBuej3fDsUyCWVAhqtVHsC3dfwoYrkfVCmkIblE="}, "meta": {}}\n'
    '{"logical_key": "data/hello.txt", "physical_keys": ["file:///tmp/qx/example/src/data/hello.txt"], "size": 12, '
    '"hash": {"type": "sha2-256-chunked", "value": "+D5La7o++sQfH/Vu6XrfdFRoD+53iSTLW6BjEdE2rRw="}, '
    '"meta": {"user_meta": {"lang": "en"}}}\n'
    '{"logical_key": "data-raw.csv", "physical_keys": ["file:///tmp/qx/example/src/data-raw.csv"], "size": 8, '
    '"hash": {"type": "sha2-256-chunked", "value": "JmGw1SNNTY2YmalGaVL4qnlI1/hLTEYzZDzyos7/NRQ="}, "meta": {}}\n'
    '{"logical_key": "empty.txt", "physical_keys": ["file:///tmp/qx/example/src/empty.txt"], "size": 0, "hash": '
    '{"type": "sha2-256-chunked", "value": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="}, "meta": {}}\n'
).encode("utf-8")
WORKED_TOP_HASH = "85eabceec2e8a34a1c6ffa32f1584fa311fd216acc84a236f0fd472eeabc0282"
WORKED_HASH_INPUT = [
    '{"message":"first version","user_meta":{"author":"Zo\\u00eb","n":1},"version":"v0"}',
    '{"hash":{"type":"sha2-256-chunked","value":"HB+mGBuej3fDsUyCWVAhqtVHsC3dfwoYrkfVCmkIblE="},'
    '"logical_key":"README.md","meta":{},"size":7}',
    '{"hash":{"type":"sha2-256-chunked","value":"+D5La7o++sQfH/Vu6XrfdFRoD+53iSTLW6BjEdE2rRw="},'
    '"logical_key":"data/hello.txt","meta":{"user_meta":{"lang":"en"}},"size":12}',
    '{"hash":{"type":"sha2-256-chunked","value":"JmGw1SNNTY2YmalGaVL4qnlI1/hLTEYzZDzyos7/NRQ="},'
    '"logical_key":"data-raw.csv","meta":{},"size":8}',
    '{"hash":{"type":"sha2-256-chunked","value":"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="},'
    '"logical_key":"empty.txt","meta":{},"size":0}',
]


# ---------------------------------------------------------------------------------------------------------
# Top hash and serialization vectors

def test_empty_package_top_hash() -> None:
    header = {"version": "v0", "message": None}
    assert top_hash_parts(header, []) == ['{"message":null,"version":"v0"}']
    assert compute_top_hash(header, []) == "2a5a67156ca9238c14d12042db51c5b52260fdd5511b61ea89b58929d6e1769b"
    assert Manifest(header, [], {}).top_hash == compute_top_hash(header, [])
    assert write_manifest(Manifest(header)) == b'{"version": "v0", "message": null}\n'


def test_worked_example_round_trips_byte_for_byte() -> None:
    assert len(WORKED_EXAMPLE) == 1005
    assert hashlib.sha256(WORKED_EXAMPLE).hexdigest() == \
        "2027b7f7d96b28ba308325a7bc8cf4d2ae2d3ba9de438baa6bedac042ca66840"
    manifest = parse_manifest(WORKED_EXAMPLE)
    assert manifest.header == {"version": "v0", "user_meta": {"author": "Zoë", "n": 1}, "message": "first version"}
    assert manifest.dir_meta == {"data/": {"kind": "dir"}}
    assert [e.logical_key for e in manifest.entries] == ["README.md", "data/hello.txt", "data-raw.csv", "empty.txt"]
    hello = manifest.entries[1]
    assert (hello.physical_key, hello.size, hello.hash_type, hello.hash_value, hello.meta, hello.user_meta) == (
        "file:///tmp/qx/example/src/data/hello.txt", 12, "sha2-256-chunked",
        "+D5La7o++sQfH/Vu6XrfdFRoD+53iSTLW6BjEdE2rRw=", {"user_meta": {"lang": "en"}}, {"lang": "en"})
    assert top_hash_parts(manifest.header, manifest.entries) == WORKED_HASH_INPUT
    assert manifest.top_hash == WORKED_TOP_HASH
    assert write_manifest(manifest) == WORKED_EXAMPLE


def test_worked_example_written_from_any_entry_order() -> None:
    manifest = parse_manifest(WORKED_EXAMPLE)
    shuffled = Manifest(dict(manifest.header), list(reversed(manifest.entries)), dict(manifest.dir_meta))
    assert write_manifest(shuffled) == WORKED_EXAMPLE
    assert shuffled.top_hash == WORKED_TOP_HASH


def test_wrong_orders_and_encodings_give_the_hashes_the_spec_calls_wrong() -> None:
    manifest = parse_manifest(WORKED_EXAMPLE)
    assert [e.logical_key for e in tree_order(manifest.entries)] == \
        ["README.md", "data/hello.txt", "data-raw.csv", "empty.txt"]
    # Full-string order puts data-raw.csv first: 477665e5...
    by_string = sorted(manifest.entries, key=lambda e: e.logical_key)
    parts = [json.dumps(manifest.header, sort_keys=True, separators=(",", ":"))]
    parts += [json.dumps({"hash": e.hash_object(), "logical_key": e.logical_key, "meta": e.meta, "size": e.size},
                         sort_keys=True, separators=(",", ":")) for e in by_string]
    assert hashlib.sha256("".join(parts).encode()).hexdigest().startswith("477665e5")
    # Raw UTF-8 instead of \u escapes: f2de35d9...
    raw = "".join(WORKED_HASH_INPUT).replace("\\u00eb", "ë")
    assert hashlib.sha256(raw.encode()).hexdigest().startswith("f2de35d9")


def test_s3_push_top_hash_vectors() -> None:
    """Spec 6.8: the same four files pushed from S3 (no per-entry meta) with two headers."""
    entries = [Entry(e.logical_key, f"s3://qbucket/demo/pkg/{e.logical_key}?versionId=v1", e.size, e.hash_type,
                     e.hash_value, {}) for e in parse_manifest(WORKED_EXAMPLE).entries]
    first = {"version": "v0", "user_meta": {"author": "Zoë", "n": 1}, "message": "first version"}
    second = {"version": "v0", "user_meta": None, "message": "second"}
    assert compute_top_hash(first, entries) == "1f2a21a16e455d342f5a84acf5a2cfb7188417d6f6771f1e4a4f22d6d011fa24"
    assert compute_top_hash(second, entries) == "dee22cb220a9b48c5290f388e41ceb7e1a88a8d8835397d08342fbc3270a5de3"
    # The header's key order does not matter for the hash, but `user_meta: null` does (vs. no key).
    assert compute_top_hash(dict(reversed(second.items())), entries) == compute_top_hash(second, entries)
    assert compute_top_hash({"version": "v0", "message": "second"}, entries) != compute_top_hash(second, entries)


def test_header_top_hash_key_is_dropped_and_not_hashed() -> None:
    data = WORKED_EXAMPLE.replace(b'{"version": "v0", ', b'{"version": "v0", "top_hash": {"alpha": "x"}, ', 1)
    manifest = parse_manifest(data)
    assert "top_hash" not in manifest.header
    assert manifest.top_hash == WORKED_TOP_HASH
    assert write_manifest(manifest) == WORKED_EXAMPLE


def test_reader_leniencies_match_quilt3() -> None:
    lines = WORKED_EXAMPLE.decode().splitlines()
    # CRLF line ends, no final newline, extra keys in an entry line, `meta: null`, falsy directory metadata.
    entry = json.loads(lines[2])
    entry["extra"] = 1
    entry["meta"] = None
    variant = "\r\n".join([lines[0], '{"logical_key": "empty/", "meta": {}}', lines[1], json.dumps(entry)] + lines[3:])
    manifest = parse_manifest(variant.encode())
    assert manifest.entries[0].meta == {}
    assert manifest.dir_meta["empty/"] == {}
    assert write_manifest(manifest) == WORKED_EXAMPLE  # quilt3 would write the same


def test_physical_keys_are_normalized_as_quilt3_rewrites_them() -> None:
    data = WORKED_EXAMPLE.replace(b"file:///tmp/qx/example/src/README.md", b"s3://bkt/a b+c/%C3%A9?versionId=x y")
    manifest = parse_manifest(data)
    assert manifest.entries[0].physical_key == "s3://bkt/a%20b%2Bc/%C3%A9?versionId=x+y"
    assert manifest.entries[0].parsed_physical_key() == PhysicalKey("s3", "bkt", "a b+c/é", "x y")


def test_hash_object_with_extra_keys_is_preserved() -> None:
    data = WORKED_EXAMPLE.replace(b'"hash": {"type": "sha2-256-chunked", "value": "HB+',
                                  b'"hash": {"value": "HB+', 1).replace(
        b'blE="}, "meta": {}}', b'blE=", "type": "sha2-256-chunked", "x": 1}, "meta": {}}', 1)
    manifest = parse_manifest(data)
    assert write_manifest(manifest) == data
    assert manifest.top_hash != WORKED_TOP_HASH  # the extra key is hashed, as quilt3 does
    manifest.entries[0].hash_value = "changed"
    assert manifest.entries[0].hash_object() == {"type": "sha2-256-chunked", "value": "changed"}


def test_write_rejects_what_quilt3_cannot_write() -> None:
    manifest = parse_manifest(WORKED_EXAMPLE)
    manifest.header["user_meta"] = {"x": float("nan")}
    with pytest.raises(ManifestError):
        write_manifest(manifest)
    manifest.header["user_meta"] = {"x": "y" * 2000}
    with pytest.raises(ManifestError, match="must be at most 1000 bytes"):
        write_manifest(manifest, max_record_size=1000)
    assert write_manifest(manifest, max_record_size=None)


# ---------------------------------------------------------------------------------------------------------
# Entry hashes (spec 6.7)

HASH_VECTORS = [
    (b"", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "AAAAAAAAAAA="),
    (b"hello world\n", "+D5La7o++sQfH/Vu6XrfdFRoD+53iSTLW6BjEdE2rRw=", "D3gOhIHSoh8="),
    (bytes(8 * MiB - 1), "6D2pq48irFt4HfUg5jZ5Mh0xLWnHtZnvhWpbUMHXGos=", None),
    (bytes(8 * MiB), "MIsGKY+ykqN4CPj3gGGu4Gv03N7OWKWpsZqEf+OrGJs=", None),
    (bytes(8 * MiB + 1), "Y68lgvvPstmbueZHNVw/WNEIEX0Qxy01vyRB//bzz/g=", "atFxuE1UqMo="),
    (b"x" * (9 * MiB), "hK7ZnWUEZsWeKRQmRStFrHKxlpKnyt8hPWWsU8/wncI=", None),
]


@pytest.mark.parametrize("content, chunked, crc", HASH_VECTORS,
                         ids=["empty", "hello", "8MiB-1", "8MiB", "8MiB+1", "9MiB-x"])
def test_entry_hash_vectors(content: bytes, chunked: str, crc: str | None) -> None:
    assert hash_bytes("sha2-256-chunked", content) == chunked
    assert hash_bytes("SHA256", content) == hashlib.sha256(content).hexdigest()
    if crc is not None:
        assert hash_bytes("CRC64NVME", content) == crc
    # Streaming in uneven pieces that straddle the chunk boundary gives the same values.
    for hash_type, expected in (("sha2-256-chunked", chunked), ("CRC64NVME", crc)):
        if expected is None:
            continue
        hasher = make_hasher(hash_type, len(content))
        view = memoryview(content)
        step = 3 * MiB + 17
        for start in range(0, len(content), step):
            hasher.update(view[start:start + step])
            hasher.value()  # peeking does not disturb the state
        assert hasher.value() == expected
        assert hasher.bytes_hashed == len(content)


def test_empty_file_is_zero_chunks_not_one() -> None:
    assert hash_bytes("sha2-256-chunked", b"") == base64.b64encode(hashlib.sha256(b"").digest()).decode()
    assert hash_bytes("sha2-256-chunked", b"") != \
        base64.b64encode(hashlib.sha256(hashlib.sha256(b"").digest()).digest()).decode()


def test_chunk_size_doubles_with_total_size() -> None:
    assert mf.checksum_chunk_size(0) == 8 * MiB
    assert mf.checksum_chunk_size(10_000 * 8 * MiB) == 8 * MiB
    assert mf.checksum_chunk_size(10_000 * 8 * MiB + 1) == 16 * MiB
    assert mf.checksum_chunk_size(10_000 * 32 * MiB + 1) == 64 * MiB
    # A hasher told about a huge file cuts 16 MiB chunks (fed only 20 MiB here).
    hasher = make_hasher("sha2-256-chunked", 10_000 * 8 * MiB + 1)
    data = random.Random(1).randbytes(20 * MiB)
    hasher.update(data)
    expected = hashlib.sha256(hashlib.sha256(data[:16 * MiB]).digest() + hashlib.sha256(data[16 * MiB:]).digest())
    assert hasher.value() == base64.b64encode(expected.digest()).decode()


def test_hasher_matches_entry() -> None:
    entry = parse_manifest(WORKED_EXAMPLE).entries[1]  # data/hello.txt
    hasher = mf.EntryHasher.for_entry(entry)
    hasher.update(b"hello ")
    assert not hasher.matches(entry)
    hasher.update(b"world\n")
    assert hasher.matches(entry)
    hasher.update(b"")
    assert hasher.matches(entry)
    wrong = make_hasher("sha2-256-chunked", 12)
    wrong.update(b"hello world!")
    assert not wrong.matches(entry)
    with pytest.raises(ManifestError, match="unsupported hash type"):
        make_hasher("MD5", 0)


def test_pure_python_crc64nvme_matches_awscrt() -> None:
    assert mf._crc64nvme_python(b"123456789") == 0xAE8B14860A799888  # the CRC catalogue's check value
    awscrt_checksums = pytest.importorskip("awscrt.checksums")
    data = random.Random(2).randbytes(100_000)
    assert mf._crc64nvme_python(data) == awscrt_checksums.crc64nvme(data)
    assert mf._crc64nvme_python(data[5000:], mf._crc64nvme_python(data[:5000])) == awscrt_checksums.crc64nvme(data)


def test_crc64nvme_falls_back_to_pure_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mf, "_crc64nvme_crt", None)
    assert hash_bytes("CRC64NVME", b"hello world\n") == "D3gOhIHSoh8="


# ---------------------------------------------------------------------------------------------------------
# Physical keys (spec 6.5)

@pytest.mark.parametrize("url, expected", [
    ("s3://bkt/a%20b/c%23d%3Fe%2Bf%25g/%C3%A9.txt", PhysicalKey("s3", "bkt", "a b/c#d?e+f%g/é.txt")),
    ("s3://bkt/k?versionId=v%2B1%2F2%3D3+x", PhysicalKey("s3", "bkt", "k", "v+1/2=3 x")),
    ("s3://bkt/k?versionId=null", PhysicalKey("s3", "bkt", "k", "null")),  # s3_version_id: None
    ("file:///tmp/a%20b/%C3%A9%23x.txt", PhysicalKey("file", None, "/tmp/a b/é#x.txt")),
])
def test_physical_key_round_trip(url: str, expected: PhysicalKey) -> None:
    assert parse_physical_key(url) == expected
    assert format_physical_key(expected) == url
    assert str(expected) == url
    assert expected.s3_version_id == (None if expected.version_id == "null" else expected.version_id)


@pytest.mark.parametrize("url, expected", [
    ("s3://bkt/a+b c", PhysicalKey("s3", "bkt", "a+b c")),  # a literal + in the path stays +
    ("s3://bkt/k?versionId=", PhysicalKey("s3", "bkt", "k")),  # empty versionId: none
    ("s3://bkt", PhysicalKey("s3", "bkt", "")),
    ("file://localhost/x/y", PhysicalKey("file", None, "/x/y")),
])
def test_physical_key_lenient_parsing(url: str, expected: PhysicalKey) -> None:
    assert parse_physical_key(url) == expected


@pytest.mark.parametrize("url", [
    "s3:///key", "s3://bkt/k?versionId=1&partNumber=2", "s3://bkt/k?foo=bar", "http://host/x", "/plain/path",
    "file://host/x", "file:relative/x", "file://", "file:///x?y=1", 42,
])
def test_physical_key_errors(url: object) -> None:
    with pytest.raises(PhysicalKeyError):
        parse_physical_key(url)  # type: ignore[arg-type]


def test_physical_keys_agree_with_quilt3(quilt3_module, tmp_path: Path) -> None:
    from quilt3.util import PhysicalKey as Q3Key

    real = tmp_path.resolve()
    for url in ["s3://bkt/a%20b/c%23d%3Fe%2Bf%25g/%C3%A9.txt", "s3://bkt/k?versionId=v%2B1%2F2%3D3+x",
                "s3://bkt/a+b", "s3://bkt/x/?versionId=null", "s3://b/%F0%9F%98%80;x=~'()*!",
                "s3://bkt/k?versionId=", (real / "a b" / "é#x.txt").as_uri(), real.as_uri() + "/dir/"]:
        theirs = Q3Key.from_url(url)
        ours = parse_physical_key(url)
        assert (ours.bucket, ours.path, ours.version_id) == (theirs.bucket, theirs.path, theirs.version_id), url
        assert format_physical_key(ours) == str(theirs), url


# ---------------------------------------------------------------------------------------------------------
# Malformed manifests

HEADER = '{"version": "v0", "message": null}\n'


def _entry(logical_key: object = "a.txt", **changes: object) -> str:
    obj: dict[str, object] = {"logical_key": logical_key, "physical_keys": ["s3://b/k"], "size": 1,
                              "hash": {"type": "sha2-256-chunked", "value": "x"}, "meta": {}}
    for key, value in [("logical_key", logical_key), *changes.items()]:
        if value is _DROP:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj, ensure_ascii=False) + "\n"


_DROP = object()

MALFORMED = {
    "empty file": b"",
    "bad json": b"{not json\n",
    "header not object": b'["v0"]\n',
    "header is entry": _entry().encode(),
    "line not object": (HEADER + '"str"\n').encode(),
    "null line": (HEADER + "null\n").encode(),
    "blank line": (HEADER + "\n" + _entry()).encode(),
    "trailing blank line": (HEADER + _entry() + "\n").encode(),
    "invalid utf-8": HEADER.encode() + b'{"logical_key": "\xff"}\n',
    "NaN": (HEADER + _entry(meta={"x": 1}).replace("1}", "NaN}")).encode(),
    "missing logical_key": (HEADER + _entry(logical_key=_DROP)).encode(),
    "missing size": (HEADER + _entry(size=_DROP)).encode(),
    "missing hash": (HEADER + _entry(hash=_DROP)).encode(),
    "missing meta": (HEADER + _entry(meta=_DROP)).encode(),
    "dir meta without meta": (HEADER + '{"logical_key": "d/"}\n').encode(),
    "logical_key not str": (HEADER + _entry(logical_key=5)).encode(),
    "size string": (HEADER + _entry(size="1")).encode(),
    "size float": (HEADER + _entry(size=1.0)).encode(),
    "size bool": (HEADER + _entry(size=True)).encode(),
    "size negative": (HEADER + _entry(size=-1)).encode(),
    "size null": (HEADER + _entry(size=None)).encode(),
    "hash string": (HEADER + _entry(hash="abc")).encode(),
    "hash type not str": (HEADER + _entry(hash={"type": 1, "value": "x"})).encode(),
    "hash without value": (HEADER + _entry(hash={"type": "SHA256"})).encode(),
    "meta list": (HEADER + _entry(meta=["x"])).encode(),
    "physical_keys string": (HEADER + _entry(physical_keys="s3://b/k")).encode(),
    "physical_keys not strings": (HEADER + _entry(physical_keys=[1])).encode(),
    "physical key bad scheme": (HEADER + _entry(physical_keys=["http://x/y"])).encode(),
    "physical key bad query": (HEADER + _entry(physical_keys=["s3://b/k?acl=1"])).encode(),
    "duplicate logical key": (HEADER + _entry("a") + _entry("a")).encode(),
    "file and directory": (HEADER + _entry("a") + _entry("a/b")).encode(),
    "directory then file": (HEADER + _entry("a/b") + _entry("a")).encode(),
    "dir meta on a file": (HEADER + '{"logical_key": "a/", "meta": {"x": 1}}\n' + _entry("a")).encode(),
    "dir meta without slash": (HEADER + '{"logical_key": "data", "meta": {"x": 1}}\n').encode(),
    "dir meta unsafe": (HEADER + '{"logical_key": "../", "meta": {"x": 1}}\n').encode(),
    "dir meta root": (HEADER + '{"logical_key": "/", "meta": {"x": 1}}\n').encode(),
    "dotdot": (HEADER + _entry("../x")).encode(),
    "dotdot inside": (HEADER + _entry("a/../../x")).encode(),
    "absolute": (HEADER + _entry("/abs")).encode(),
    "empty component": (HEADER + _entry("a//b")).encode(),
    "dot component": (HEADER + _entry("./a")).encode(),
    "dot inside": (HEADER + _entry("a/./b")).encode(),
    "trailing slash": (HEADER + _entry("a/", physical_keys=["s3://b/k"])).encode(),
    "empty key": (HEADER + _entry("")).encode(),
    "NUL": (HEADER + _entry("a\x00b")).encode(),
    "lone surrogate": (HEADER + _entry("x").replace('"x"', '"\\ud800"')).encode(),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_manifests_raise(data: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(data)


def test_malformed_messages_are_clear() -> None:
    with pytest.raises(ManifestError, match="duplicate logical key 'a'"):
        parse_manifest(MALFORMED["duplicate logical key"])
    with pytest.raises(ManifestError, match=r"line 2: .*'\.\./x'.*'\.\.' path component"):
        parse_manifest(MALFORMED["dotdot"])
    with pytest.raises(ManifestError, match="no 'size'"):
        parse_manifest(MALFORMED["missing size"])
    with pytest.raises(ManifestError, match="empty"):
        parse_manifest(b"")


def test_oversized_lines() -> None:
    small = (HEADER + _entry(meta={"user_meta": "x" * 200})).encode()
    assert parse_manifest(small, max_record_size=None)
    with pytest.raises(ManifestError, match="longer than 100 bytes"):
        parse_manifest(small, max_record_size=100)
    prefix = '{"version": "v0", "user_meta": "'
    exactly = (prefix + "x" * (1_000_000 - len(prefix) - 2) + '"}\n').encode()  # 1,000,000 bytes + newline
    assert len(exactly) == 1_000_001
    assert parse_manifest(exactly).header["user_meta"]
    # Same number of characters, one more UTF-8 byte: the limit counts bytes.
    too_big = (prefix + "x" * (1_000_000 - len(prefix) - 3) + 'é"}\n').encode()
    assert len(too_big) == 1_000_002
    with pytest.raises(ManifestError, match="line 1 is longer than 1000000 bytes"):
        parse_manifest(too_big)


# ---------------------------------------------------------------------------------------------------------
# Cross-checks with the real quilt3

@pytest.fixture(scope="session")
def quilt3_module():
    """quilt3, imported after the isolated environment is in place (it reads XDG dirs at import)."""
    os.environ.setdefault("QUILT_DISABLE_USAGE_METRICS", "true")
    import quilt3

    return quilt3


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _build(quilt3, tmp_path: Path, name: str, configure) -> tuple[str, bytes]:
    registry = tmp_path / "registry"
    pkg = quilt3.Package()
    configure(pkg)
    top_hash = pkg.build(name, registry=registry.as_uri(), message="Zoë's build ✓")
    return top_hash, (registry / ".quilt" / "packages" / top_hash).read_bytes()


def test_quilt3_built_packages_round_trip(quilt3_module, tmp_path: Path) -> None:
    quilt3 = quilt3_module
    src = tmp_path / "src"
    big = random.Random(3).randbytes(9 * MiB + 5)
    files = {
        "README.md": b"# Demo\n",
        "data/hello.txt": b"hello world\n",
        "data-raw.csv": b"a,b\n1,2\n",
        "empty.txt": b"",
        "données/été/naïve 😀.txt": "unicode ✓\n".encode(),
        "data/deep/er/x.bin": bytes(range(256)),
        "big.bin": big,
        "a b/c#d?e+f%g.txt": b"odd characters",
    }
    for key, data in files.items():
        _write(src / key, data)

    def configure(pkg) -> None:
        pkg.set_dir("/", str(src))
        pkg.set("data/hello.txt", str(src / "data/hello.txt"), meta={"lang": "en", "emoji": "😀", "f": 1.0})
        pkg.set("empty.txt", str(src / "empty.txt"), meta={"tiny": 1e-05, "nested": {"list": [1, "ü", None]}})
        pkg["data"].set_meta({"kind": "dir"})
        pkg["données"].set_meta({"desc": "répertoire"})
        pkg["data"]["deep"].set_meta({"depth": 2})
        pkg.set_meta({"author": "Zoë", "n": 1, "astral": "𝄞"})

    top_hash, data = _build(quilt3, tmp_path, "demo/pkg", configure)
    manifest = parse_manifest(data)
    assert manifest.top_hash == top_hash
    assert write_manifest(manifest) == data
    assert manifest.dir_meta == {"data/": {"kind": "dir"}, "data/deep/": {"depth": 2},
                                 "données/": {"desc": "répertoire"}}
    assert sorted(e.logical_key for e in manifest.entries) == sorted(files)
    # Every entry hash, computed by quilt3 locally, is what our hashers produce from the file.
    for entry in manifest.entries:
        content = files[entry.logical_key]
        assert entry.size == len(content)
        assert entry.hash_value == hash_bytes(entry.hash_type, content), entry.logical_key
        pk = entry.parsed_physical_key()
        assert pk.scheme == "file" and Path(pk.path) == (src / entry.logical_key).resolve()
    # quilt3's own view of the same manifest agrees.
    loaded = quilt3.Package.load(io.BytesIO(data))
    assert loaded.top_hash == top_hash
    assert [key for key, _ in loaded.walk()] == [e.logical_key for e in tree_order(manifest.entries)]


@pytest.mark.parametrize("case", ["no meta", "meta null", "empty package", "only dir meta"])
def test_quilt3_header_variants(quilt3_module, tmp_path: Path, case: str) -> None:
    quilt3 = quilt3_module
    src = _write(tmp_path / "src" / "f.txt", b"x").parent

    def configure(pkg) -> None:
        if case == "no meta":
            pkg.set("f.txt", str(src / "f.txt"))
        elif case == "meta null":
            pkg.set_dir("/", str(src))  # sets user_meta to null
        elif case == "only dir meta":
            pkg.set("d/e/f.txt", str(src / "f.txt"))
            pkg["d"].set_meta({"k": [1, 2]})

    top_hash, data = _build(quilt3, tmp_path, "demo/variant", configure)
    manifest = parse_manifest(data)
    assert (manifest.top_hash, write_manifest(manifest)) == (top_hash, data)
    assert ("user_meta" in manifest.header) == (case == "meta null")


def test_quilt3_reads_what_we_write(quilt3_module) -> None:
    quilt3 = quilt3_module
    entries = [
        Entry("z/é.txt", "s3://bkt/z/%C3%A9.txt?versionId=abc", 3, "sha2-256-chunked", "AAA=",
              {"user_meta": {"k": 1}}),
        Entry("z-a.txt", "s3://bkt/z-a.txt", 0, "SHA256", "e3b0", {}),
        Entry("y/x/w.csv", "file:///tmp/w.csv", 10, "CRC64NVME", "AAAAAAAAAAA=", {"target": "csv"}),
    ]
    ours = Manifest({"version": "v0", "user_meta": {"ß": "😀"}, "message": "hi"}, entries,
                    {"y/": {"d": 1}, "y/x/": {"d": 2}, "z/": None})
    data = write_manifest(ours)
    theirs = quilt3.Package.load(io.BytesIO(data))
    assert theirs.top_hash == ours.top_hash
    out = io.BytesIO()
    theirs.dump(out)
    assert out.getvalue() == data
