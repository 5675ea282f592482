"""Quilt package manifests: parse and write the JSONL format, compute top hashes and entry hashes.

Compatibility reference: docs `quilt-protocol.md` sections 6.1-6.8 (quilt3 8.0.0).  Everything here is pure
(no I/O, no FUSE): bytes in, dataclasses out, and back.

Reading follows what `quilt3.Package._load` accepts, but stricter where quilt3 would build a package it can
not use or write back (see `parse_manifest`).  Writing reproduces `quilt3.Package.dump` byte for byte.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, Any, Iterable, Iterator, Literal
from urllib.parse import ParseResult, parse_qs, quote, unquote, urlencode, urlparse

from quiltmount.errors import StorageError
from quiltmount.units import MAX_PARTS, PART_SIZE

__all__ = [
    "CHECKSUM_CHUNK_SIZE", "CHECKSUM_MAX_PARTS", "CRC64NVME", "DEFAULT_MAX_RECORD_SIZE", "MAX_ENTRY_SIZE", "SHA256",
    "SHA2_256_CHUNKED", "SUPPORTED_HASH_TYPES", "Crc64NvmeHasher", "DirMeta", "Entry", "EntryHasher", "Manifest",
    "ManifestError", "PhysicalKey", "PhysicalKeyError", "Sha256Hasher", "Sha2256ChunkedHasher", "checksum_chunk_size",
    "compute_top_hash", "crc64nvme", "dir_meta_records", "encode_record", "entry_record", "format_physical_key",
    "hash_bytes", "header_record", "is_top_hash", "iter_manifest",
    "logical_key_problem", "make_hasher", "normalize_physical_key", "package_meta", "parse_manifest",
    "parse_physical_key",
    "short_repr", "entry_hash_part", "header_hash_part", "top_hash_parts", "tree_order", "tree_sort_key",
    "write_manifest",
]


class ManifestError(StorageError):
    """A manifest (or a physical key in it) is malformed, or is not the manifest it claims to be.

    A `StorageError` with errno EIO: what a file system call reading through a broken manifest reports.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, errno.EIO)


class PhysicalKeyError(ManifestError, ValueError):
    """A physical key URL quilt3 would refuse (`quilt3.util.URLParseError`)."""


def short_repr(value: Any, limit: int = 100) -> str:
    """`repr(value)`, cut after `limit` characters: messages quote manifest data, which can be megabytes."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------------------------------------
# Hash types (spec 6.7)

SHA2_256_CHUNKED = "sha2-256-chunked"
SHA256 = "SHA256"
CRC64NVME = "CRC64NVME"
SUPPORTED_HASH_TYPES = (SHA2_256_CHUNKED, SHA256, CRC64NVME)

#: Base chunk size of `sha2-256-chunked`: 8 MiB, doubled while a file would need more than 10,000 chunks.
CHECKSUM_CHUNK_SIZE = PART_SIZE
CHECKSUM_MAX_PARTS = MAX_PARTS

#: The largest size a file can have (`off_t`); a manifest claiming more is malformed.
MAX_ENTRY_SIZE = (1 << 63) - 1

#: quilt3's limit on one manifest line (`QUILT_MANIFEST_MAX_RECORD_SIZE`), in UTF-8 bytes without the newline.
DEFAULT_MAX_RECORD_SIZE = 1_000_000

_EMPTY_SHA256 = hashlib.sha256(b"").digest()


def checksum_chunk_size(size: int) -> int:
    """Chunk size quilt3 uses for a file of `size` bytes (same as boto3's multipart chunk adjustment)."""
    chunk = CHECKSUM_CHUNK_SIZE
    while math.ceil(size / chunk) > CHECKSUM_MAX_PARTS:
        chunk *= 2
    return chunk


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class EntryHasher:
    """An incremental hasher whose `value()` compares to a manifest entry's `hash.value`.

    Feed the content with `update()` in order, in pieces of any size; `value()` may be called at any time and
    does not disturb the state.  Build one with `make_hasher(hash_type, size)` or `EntryHasher.for_entry(entry)`.
    """

    hash_type: str = ""

    def __init__(self) -> None:
        self.bytes_hashed = 0

    @staticmethod
    def for_entry(entry: Entry) -> EntryHasher:
        return make_hasher(entry.hash_type, entry.size)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def value(self) -> str:
        raise NotImplementedError

    def hexdigest(self) -> str:
        """Alias of `value()` (which is base64 for the chunked and CRC types, hex only for `SHA256`)."""
        return self.value()

    def matches(self, entry: Entry) -> bool:
        """True when exactly `entry.size` bytes were hashed and they hash to the entry's value."""
        return (self.hash_type == entry.hash_type and self.bytes_hashed == entry.size
                and self.value() == entry.hash_value)


class Sha2256ChunkedHasher(EntryHasher):
    """`sha2-256-chunked`: base64(sha256(concat(sha256(chunk) for each chunk))).

    The chunk size depends on the *total* size, so it must be known up front; feeding more or fewer bytes than
    announced still hashes them with that chunk size (and `matches()` then fails on the size).
    An empty input has zero chunks: its value is base64(sha256(b"")).
    """

    hash_type = SHA2_256_CHUNKED

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"negative size: {size}")
        self.chunk_size = checksum_chunk_size(size)
        self._outer = hashlib.sha256()  # fed with the digest of every completed chunk
        self._chunk = hashlib.sha256()
        self._chunk_filled = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.bytes_hashed += len(view)
        while len(view):
            take = min(len(view), self.chunk_size - self._chunk_filled)
            self._chunk.update(view[:take])
            self._chunk_filled += take
            view = view[take:]
            if self._chunk_filled == self.chunk_size:
                self._outer.update(self._chunk.digest())
                self._chunk = hashlib.sha256()
                self._chunk_filled = 0

    def value(self) -> str:
        outer = self._outer.copy()
        if self._chunk_filled:
            outer.update(self._chunk.digest())
        return _b64(outer.digest())


class Sha256Hasher(EntryHasher):
    """Legacy `SHA256`: lowercase hex SHA-256 of the whole content."""

    hash_type = SHA256

    def __init__(self) -> None:
        super().__init__()
        self._hash = hashlib.sha256()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.bytes_hashed += memoryview(data).nbytes
        self._hash.update(data)

    def value(self) -> str:
        return self._hash.hexdigest()


# CRC-64/NVME: reflected polynomial 0x9A6C9329AC4BC9B5, init and xorout all ones.  quilt3 uses awscrt, which
# boto3 does not require: use it when installed, else a table-driven implementation (slow, ~10 MB/s).
_CRC64_POLY_REFLECTED = 0x9A6C9329AC4BC9B5
_CRC64_MASK = 0xFFFF_FFFF_FFFF_FFFF


def _crc64_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC64_POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC64_TABLE = _crc64_table()


def _crc64nvme_python(data: bytes | bytearray | memoryview, previous: int = 0) -> int:
    crc = previous ^ _CRC64_MASK
    table = _CRC64_TABLE
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _CRC64_MASK


try:
    from awscrt.checksums import crc64nvme as _crc64nvme_crt  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _crc64nvme_crt = None


def crc64nvme(data: bytes | bytearray | memoryview, previous: int = 0) -> int:
    """CRC-64/NVME of `data`, continuing from `previous` (the CRC of the bytes before it)."""
    if _crc64nvme_crt is not None:
        return _crc64nvme_crt(bytes(data) if isinstance(data, memoryview) else data, previous)
    return _crc64nvme_python(data, previous)


class Crc64NvmeHasher(EntryHasher):
    """`CRC64NVME`: base64 of the 8-byte big-endian CRC-64/NVME of the whole content."""

    hash_type = CRC64NVME

    def __init__(self) -> None:
        super().__init__()
        self._crc = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.bytes_hashed += memoryview(data).nbytes
        self._crc = crc64nvme(data, self._crc)

    def value(self) -> str:
        return _b64(self._crc.to_bytes(8, "big"))


def make_hasher(hash_type: str, size: int) -> EntryHasher:
    """An incremental hasher for `hash_type`; `size` is the content's total size (needed for chunking)."""
    if hash_type == SHA2_256_CHUNKED:
        return Sha2256ChunkedHasher(size)
    if hash_type == SHA256:
        return Sha256Hasher()
    if hash_type == CRC64NVME:
        return Crc64NvmeHasher()
    raise ManifestError(f"unsupported hash type {short_repr(hash_type)} (supported: {', '.join(SUPPORTED_HASH_TYPES)})")


def hash_bytes(hash_type: str, data: bytes) -> str:
    """The manifest hash value of `data` for `hash_type`."""
    hasher = make_hasher(hash_type, len(data))
    hasher.update(data)
    return hasher.value()


# --------------------------------------------------------------------------------------------------------
# Physical keys (spec 6.5)

@dataclass(frozen=True)
class PhysicalKey:
    """Where an entry's bytes live: an S3 object (optionally a version) or a local file.

    For S3, `path` is the object key (decoded); for files, the absolute path (decoded).  A `version_id` of
    `"null"` is what S3 reports for objects of unversioned buckets and what quilt3 records when it lists them
    with ListObjectVersions: it parses as the string "null", but callers must not send it to S3 as a VersionId
    (moto rejects it; read the object without a version instead).
    """

    scheme: Literal["s3", "file"]
    bucket: str | None
    path: str
    version_id: str | None = None

    @property
    def key(self) -> str:
        """The S3 object key (same as `path`)."""
        return self.path

    @property
    def s3_version_id(self) -> str | None:
        """The VersionId to send to S3: None both without a version and for the literal `"null"`."""
        return None if self.version_id in (None, "null") else self.version_id

    def __str__(self) -> str:
        return format_physical_key(self)


def s3_physical_key(parsed: ParseResult) -> PhysicalKey:
    """The object a parsed `s3://` URL names, read as quilt3's `PhysicalKey.from_url` reads it (the one
    reader of `s3://` URLs for manifests, registries and `Bucket`); ValueError with quilt3's message."""
    if not parsed.netloc:
        raise ValueError("Missing bucket")
    query = parse_qs(parsed.query)
    version_id = query.pop("versionId", [None])[0]  # an empty `versionId=` is dropped by parse_qs: no version
    if query:
        raise ValueError(f"Unexpected S3 query string: {parsed.query!r}")
    # The path is percent-decoded (a literal '+' stays '+'); only the query is form-decoded.
    return PhysicalKey("s3", parsed.netloc, unquote(parsed.path)[1:], version_id)


def parse_physical_key(url: str) -> PhysicalKey:
    """Parse an `s3://` or `file://` URL exactly as `quilt3.util.PhysicalKey.from_url` does.

    Differences: a `file://` path is not passed through `os.path.realpath` (quilt3 resolves symlinks against
    the machine it runs on; a manifest is data), and non-string input is rejected.
    """
    if not isinstance(url, str):
        raise PhysicalKeyError(f"physical key must be a string, not {type(url).__name__}")
    try:
        parsed = urlparse(url)
    except ValueError as exc:
        raise PhysicalKeyError(f"invalid physical key {short_repr(url)}: {exc}") from None
    if parsed.scheme == "s3":
        try:
            return s3_physical_key(parsed)
        except ValueError as exc:
            raise PhysicalKeyError(f"invalid physical key {short_repr(url)}: {exc}") from None
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise PhysicalKeyError(f"invalid physical key {short_repr(url)}: unexpected hostname")
        if not parsed.path:
            raise PhysicalKeyError(f"invalid physical key {short_repr(url)}: missing path")
        if not parsed.path.startswith("/"):
            raise PhysicalKeyError(f"invalid physical key {short_repr(url)}: relative paths are not allowed")
        if parsed.query:
            raise PhysicalKeyError(f"invalid physical key {short_repr(url)}: unexpected query")
        return PhysicalKey("file", None, unquote(parsed.path), None)
    raise PhysicalKeyError(f"invalid physical key {short_repr(url)}: unexpected scheme {short_repr(parsed.scheme)}")


# Physical keys that `format_physical_key(parse_physical_key(url))` returns unchanged: only characters that
# neither unquoting nor quoting changes (quote's safe set), a non-empty version id, and for files no path
# component that `PurePosixPath` would drop (empty or ".").  Almost every key quilt3 writes is one of them.
_CANONICAL_PHYSICAL_KEY = re.compile(
    r"s3://[A-Za-z0-9._-]+/[A-Za-z0-9_.~/-]*(?:\?versionId=[A-Za-z0-9_.~-]+)?"
    r"|file://(?:/(?!\.(?:/|$))[A-Za-z0-9_.~-]+)+")


def normalize_physical_key(url: str) -> str:
    """The physical key as quilt3 rewrites it, `format_physical_key(parse_physical_key(url))`, with a fast
    path for keys already in that form (parsing a URL costs ~30 us; a manifest can have millions)."""
    if isinstance(url, str) and _CANONICAL_PHYSICAL_KEY.fullmatch(url):
        return url
    return format_physical_key(parse_physical_key(url))


def format_physical_key(pk: PhysicalKey) -> str:
    """The URL quilt3 writes for `pk` (`str(quilt3.util.PhysicalKey)`).

    S3 keys are percent-encoded keeping `/`; the version id is form-encoded.  File paths go through
    `PurePosixPath.as_uri()` like quilt3, which also normalizes them (drops a trailing `/`, collapses `//`).
    """
    try:
        if pk.scheme == "s3":
            if not pk.bucket:
                raise ValueError("missing bucket")
            query = urlencode({"versionId": pk.version_id}) if pk.version_id is not None else ""
            return f"s3://{pk.bucket}{quote('/' + pk.path)}" + (f"?{query}" if query else "")
        if pk.scheme == "file":
            return PurePosixPath(pk.path).as_uri()
    except (ValueError, UnicodeError) as exc:
        raise PhysicalKeyError(f"cannot format physical key {pk!r}: {exc}") from None
    raise PhysicalKeyError(f"cannot format physical key {pk!r}: unexpected scheme")


# --------------------------------------------------------------------------------------------------------
# Model

@dataclass
class Entry:
    """One file of a package, as one manifest line describes it.

    `meta` is the entry's whole `meta` object (user metadata lives under `meta["user_meta"]`).  `raw_hash` keeps
    the manifest's hash object when it has extra keys or another key order, so writing it back (and the top
    hash) stay exact; it is ignored once `hash_type`/`hash_value` no longer agree with it.
    """

    logical_key: str
    physical_key: str
    size: int
    hash_type: str
    hash_value: str
    meta: dict[str, Any] = field(default_factory=dict)
    raw_hash: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def user_meta(self) -> Any:
        return self.meta.get("user_meta", {})

    def hash_object(self) -> dict[str, Any]:
        raw = self.raw_hash
        if raw is not None and raw.get("type") == self.hash_type and raw.get("value") == self.hash_value:
            return raw
        return {"type": self.hash_type, "value": self.hash_value}

    def parsed_physical_key(self) -> PhysicalKey:
        return parse_physical_key(self.physical_key)


@dataclass
class Manifest:
    """A package revision: the header line, the file entries (in file order) and directory metadata.

    `dir_meta` maps a directory's logical key *with* its trailing `/` (e.g. `"data/"`) to its user metadata.
    """

    header: dict[str, Any] = field(default_factory=lambda: {"version": "v0"})
    entries: list[Entry] = field(default_factory=list)
    dir_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def top_hash(self) -> str:
        """The package's top hash (recomputed on every access: the manifest is mutable)."""
        return compute_top_hash(self.header, self.entries)

    @property
    def message(self) -> Any:
        return self.header.get("message")

    @property
    def user_meta(self) -> Any:
        return self.header.get("user_meta")


def package_meta(header: dict[str, Any]) -> Any:
    """What quilt3's `Package.meta` gives for a revision with this header: its `user_meta`, `{}` when the header
    has none (a package made without `set_dir` or `set_meta`); a null `user_meta` stays null."""
    return header.get("user_meta", {})


# --------------------------------------------------------------------------------------------------------
# Order, top hash (spec 6.6)

def _tree_key(logical_key: str) -> list[str]:
    return logical_key.rstrip("/").split("/")


def tree_order(entries: Iterable[Entry]) -> list[Entry]:
    """Entries in quilt3's tree-walk order: by the list of path components, not by the whole string.

    `data/hello.txt` comes before `data-raw.csv` because the component `data` sorts before `data-raw.csv`.
    """
    return sorted(entries, key=lambda entry: _tree_key(entry.logical_key))


_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode  # ASCII-only, NaN allowed


def tree_sort_key(logical_key: str) -> bytes:
    """A bytes key that sorts logical keys in tree-walk order (as `tree_order` does).

    Components joined by NUL, which no logical key contains and which sorts before every other byte; UTF-8
    preserves code point order, so comparing these bytes compares the component lists.
    """
    return logical_key.rstrip("/").encode("utf-8", "surrogatepass").replace(b"/", b"\x00")


def header_hash_part(header: dict[str, Any]) -> str:
    """The header's canonical JSON, the first string hashed into the top hash."""
    return _CANONICAL_JSON({key: value for key, value in header.items() if key != "top_hash"})


_ENCODE_STRING = json.encoder.encode_basestring_ascii  # what _CANONICAL_JSON does to a str, in C


def entry_hash_part(entry: Entry) -> str:
    """An entry's canonical JSON, hashed into the top hash in tree-walk order.

    Spelled out key by key (the top-level keys are fixed, and in sorted order): a third of the time of
    encoding the dict, which counts when a manifest has millions of entries.  Same bytes (tested).
    """
    hash_obj = entry.hash_object()
    if len(hash_obj) == 2:  # {"type", "value"}: both strings, checked when parsed
        hash_json = f'{{"type":{_ENCODE_STRING(entry.hash_type)},"value":{_ENCODE_STRING(entry.hash_value)}}}'
    else:
        hash_json = _CANONICAL_JSON(hash_obj)
    meta_json = _CANONICAL_JSON(entry.meta) if entry.meta else "{}"
    return (f'{{"hash":{hash_json},"logical_key":{_ENCODE_STRING(entry.logical_key)},"meta":{meta_json},'
            f'"size":{int(entry.size)}}}')


def top_hash_parts(header: dict[str, Any], entries: Iterable[Entry]) -> list[str]:
    """The canonical JSON strings whose concatenation is hashed into the top hash (handy for debugging)."""
    return [header_hash_part(header), *(entry_hash_part(entry) for entry in tree_order(entries))]


def compute_top_hash(header: dict[str, Any], entries: Iterable[Entry]) -> str:
    """SHA-256 (hex) of the canonical header and file entries in tree-walk order.

    Physical keys and directory metadata do not count.  An obsolete `top_hash` key in the header is ignored.
    """
    digest = hashlib.sha256()
    for part in top_hash_parts(header, entries):
        digest.update(part.encode("ascii"))
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------
# Parsing

def logical_key_problem(logical_key: str) -> str | None:
    """Why `logical_key` is not a safe file logical key, or None if it is.

    Safe = non-empty `/`-separated components, none empty, `.` or `..`, no NUL, valid Unicode (no lone
    surrogates from `\\udXXX` escapes).  These are also the rules quilt3 applies when *adding* keys
    (`quilt3.util.validate_key`); it does not check them when loading a manifest.
    """
    if logical_key.isascii():  # the common case, with string searches only (no lone surrogate in ASCII)
        padded = f"/{logical_key}/"
        if not ("//" in padded or "/./" in padded or "/../" in padded or "\x00" in logical_key):
            return None
    if not logical_key:
        return "it is empty"
    if "\x00" in logical_key:
        return "it contains a NUL character"
    if logical_key.startswith("/"):
        return "it is absolute (starts with '/')"
    if logical_key.endswith("/"):
        return "a file's logical key must not end in '/'"
    for part in logical_key.split("/"):
        if part == "":
            return "it has an empty path component ('//')"
        if part in (".", ".."):
            return f"it has a {part!r} path component"
    try:
        logical_key.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid Unicode (lone surrogate)"
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _decode_line(record: str, lineno: int) -> dict[str, Any]:
    """One manifest line as a JSON object.  `raw_decode` first: a line without surrounding whitespace (every
    line quilt3 writes) skips `decode`'s two whitespace scans, a third of the time per line."""
    try:
        obj, end = _DECODER.raw_decode(record)
        if end != len(record):
            raise ValueError("not one JSON value")
    except (ValueError, RecursionError):
        if not record.strip():
            raise ManifestError(f"manifest line {lineno} is empty") from None
        try:
            obj = _DECODER.decode(record)
        except (ValueError, RecursionError) as exc:
            raise ManifestError(f"manifest line {lineno} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"manifest line {lineno} is a JSON {type(obj).__name__}, not an object")
    return obj


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_manifest(data: bytes, *, max_record_size: int | None = DEFAULT_MAX_RECORD_SIZE) -> Manifest:
    """Parse manifest bytes the way `quilt3.Package._load` reads them; raise `ManifestError` on any problem.

    Like quilt3: UTF-8, universal newlines, line 1 is the header (its obsolete `top_hash` key is dropped), a
    line without non-empty `physical_keys` is directory metadata, extra keys of entry lines are ignored, a
    `null` entry `meta` means `{}`, and physical keys are normalized as quilt3 rewrites them.

    Stricter than quilt3, which would load these and fail (or misbehave) later: lines over `max_record_size`
    UTF-8 bytes (quilt3's write limit; None = no limit), blank lines, non-object lines, a first line that is a
    file entry, missing or mistyped fields, NaN/Infinity, unsafe logical keys (see `logical_key_problem`),
    directory-metadata keys not ending in `/`, a key that is both a file and a directory, duplicate logical
    keys, and physical keys quilt3 cannot parse.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("parse_manifest() takes bytes")
    records = iter_manifest(io.BytesIO(bytes(data)), max_record_size=max_record_size)
    header = next(records)
    entries: list[Entry] = []
    dir_meta: dict[str, Any] = {}
    for record in records:
        if isinstance(record, Entry):
            entries.append(record)
        else:
            dir_meta[record.key] = record.meta
    _check_tree(entries, dir_meta)
    return Manifest(header, entries, dir_meta)


@dataclass(frozen=True)
class DirMeta:
    """A directory-metadata line: `key` ends in `/` (e.g. `"data/"`)."""

    key: str
    meta: Any


def iter_manifest(stream: IO[bytes], *,
                  max_record_size: int | None = DEFAULT_MAX_RECORD_SIZE) -> Iterator[dict[str, Any] | Entry | DirMeta]:
    """The records of a manifest read from a binary stream, one line at a time: the header (a dict) first,
    then `Entry` and `DirMeta` records in file order.

    Every line is checked as `parse_manifest` checks it; what needs the whole manifest (duplicate keys, a key
    that is both a file and a directory) is the caller's to check.  Raises `ManifestError`.
    """
    # newline=None splits lines like quilt3's text-mode open(): \n, \r\n and \r.
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="strict", newline=None)
    lineno = 0
    lines = iter(text)
    # A line of N characters is at most 4N UTF-8 bytes: only lines that could be too long are encoded.
    short = max_record_size // 4 if max_record_size is not None else None
    while True:
        try:
            line = next(lines, None)
        except UnicodeDecodeError as exc:
            raise ManifestError(f"manifest is not valid UTF-8: {exc}") from None
        if line is None:
            break
        lineno += 1
        record = line[:-1] if line.endswith("\n") else line
        if short is not None and len(record) > short and len(record.encode("utf-8")) > max_record_size:
            raise ManifestError(f"manifest line {lineno} is longer than {max_record_size} bytes")
        obj = _decode_line(record, lineno)
        if lineno == 1:
            if "logical_key" in obj or "physical_keys" in obj:
                raise ManifestError("manifest has no header line (line 1 is a package entry)")
            obj.pop("top_hash", None)  # obsolete since quilt3's PR #130
            yield obj
        elif not obj.get("physical_keys"):
            yield DirMeta(*_parse_dir_meta(obj, f"manifest line {lineno}"))
        else:
            yield _parse_entry(obj, lineno)
    if lineno == 0:
        raise ManifestError("manifest is empty (no header line)")


def _parse_dir_meta(obj: dict[str, Any], where: str) -> tuple[str, Any]:
    key = obj.get("logical_key")
    if not isinstance(key, str):
        raise ManifestError(f"{where}: directory metadata needs a string 'logical_key'")
    if not key.endswith("/"):
        raise ManifestError(f"{where}: {short_repr(key)} has no physical key, and is not a directory (no trailing '/')")
    problem = logical_key_problem(key[:-1])
    if problem:
        raise ManifestError(f"{where}: unsafe directory key {short_repr(key)}: {problem}")
    if "meta" not in obj:
        raise ManifestError(f"{where}: directory metadata line for {short_repr(key)} has no 'meta'")
    return key, obj["meta"]


_ENTRY_FIELDS = ("logical_key", "physical_keys", "size", "hash", "meta")


def _parse_entry(obj: dict[str, Any], lineno: int) -> Entry:
    try:
        logical_key, physical_keys, size, hash_obj, meta = (
            obj["logical_key"], obj["physical_keys"], obj["size"], obj["hash"], obj["meta"])
    except KeyError:
        missing = next(name for name in _ENTRY_FIELDS if name not in obj)
        raise ManifestError(f"manifest line {lineno}: entry has no {missing!r}") from None
    if not isinstance(logical_key, str):
        raise ManifestError(f"manifest line {lineno}: 'logical_key' must be a string")
    problem = logical_key_problem(logical_key)
    if problem:
        raise ManifestError(f"manifest line {lineno}: unsafe logical key {short_repr(logical_key)}: {problem}")
    if not isinstance(physical_keys, list) or not all(type(pk) is str for pk in physical_keys):
        raise ManifestError(f"{_entry_where(lineno, logical_key)}: 'physical_keys' must be a list of strings")
    try:
        # Only the first physical key is ever used; quilt3 rewrites it normalized.
        physical_key = normalize_physical_key(physical_keys[0])
    except PhysicalKeyError as exc:
        raise ManifestError(f"{_entry_where(lineno, logical_key)}: {exc}") from None
    if not _is_int(size) or not 0 <= size <= MAX_ENTRY_SIZE:
        raise ManifestError(f"{_entry_where(lineno, logical_key)}: 'size' must be an integer from 0 to "
                            f"{MAX_ENTRY_SIZE}, not {short_repr(size)}")
    if not isinstance(hash_obj, dict) or not isinstance(hash_obj.get("type"), str) \
            or not isinstance(hash_obj.get("value"), str):
        raise ManifestError(f"{_entry_where(lineno, logical_key)}: 'hash' must be an object with string 'type' "
                            "and 'value'")
    if meta is None:
        meta = {}  # quilt3: PackageEntry(..., meta or {})
    if not isinstance(meta, dict):
        raise ManifestError(f"{_entry_where(lineno, logical_key)}: 'meta' must be an object, not "
                            f"{type(meta).__name__}")
    return Entry(logical_key, physical_key, size, hash_obj["type"], hash_obj["value"], meta, raw_hash=hash_obj)


def _entry_where(lineno: int, logical_key: str) -> str:
    return f"manifest line {lineno} ({short_repr(logical_key)})"


def _check_tree(entries: list[Entry], dir_meta: dict[str, Any]) -> None:
    files: set[str] = set()
    directories: set[str] = set()
    for entry in entries:
        if entry.logical_key in files:
            raise ManifestError(f"duplicate logical key {short_repr(entry.logical_key)} in manifest")
        files.add(entry.logical_key)
        parts = entry.logical_key.split("/")
        directories.update("/".join(parts[:i]) for i in range(1, len(parts)))
    for key in dir_meta:
        parts = key[:-1].split("/")
        directories.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    clash = files & directories
    if clash:
        raise ManifestError(f"logical key {short_repr(min(clash))} is both a file and a directory in manifest")


# --------------------------------------------------------------------------------------------------------
# Writing

_ENCODE_LINE = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode  # ", " / ": ", raw UTF-8


def header_record(header: dict[str, Any]) -> dict[str, Any]:
    """The header line's object: the header without an obsolete `top_hash`, in insertion order."""
    return {key: value for key, value in header.items() if key != "top_hash"}


def dir_meta_records(dir_meta: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The directory-metadata lines' objects quilt3 writes: truthy metadata only, in tree-walk order."""
    for key in sorted(dir_meta, key=_tree_key):
        meta = dir_meta[key]
        if meta:
            yield {"logical_key": key, "meta": meta}


def entry_record(entry: Entry) -> dict[str, Any]:
    """A file entry line's object, keys in quilt3's order."""
    return {"logical_key": entry.logical_key, "physical_keys": [entry.physical_key], "size": entry.size,
            "hash": entry.hash_object(), "meta": entry.meta}


def _manifest_records(manifest: Manifest) -> Iterable[dict[str, Any]]:
    yield header_record(manifest.header)
    yield from dir_meta_records(manifest.dir_meta)
    for entry in tree_order(manifest.entries):
        yield entry_record(entry)


def encode_record(record: dict[str, Any], *, max_record_size: int | None = DEFAULT_MAX_RECORD_SIZE) -> bytes:
    """One manifest line as quilt3 writes it (`Package.dump`), newline included: the serializer of every
    record `write_manifest` writes, for writers that stream a manifest line by line.

    Raises `ManifestError` for NaN/Infinity, lone surrogates, or a line over `max_record_size` bytes.
    """
    try:
        line = _ENCODE_LINE(record).encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise ManifestError(f"cannot write manifest record {record.get('logical_key', 'header')!r}: {exc}") \
            from None
    if max_record_size is not None and len(line) > max_record_size:
        what = "package metadata" if "logical_key" not in record else f"entry {record['logical_key']!r}"
        raise ManifestError(f"manifest record for {what} is {len(line)} bytes, "
                            f"but must be at most {max_record_size} bytes")
    return line + b"\n"


def write_manifest(manifest: Manifest, *, max_record_size: int | None = DEFAULT_MAX_RECORD_SIZE) -> bytes:
    """The manifest bytes quilt3 writes for this package (`Package.dump`): byte-identical.

    Header first (insertion order), then truthy directory metadata and the file entries, both in tree-walk
    order.  Raises `ManifestError` for NaN/Infinity, lone surrogates, or a line over `max_record_size` bytes.
    """
    return b"".join(encode_record(record, max_record_size=max_record_size)
                    for record in _manifest_records(manifest))


_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_top_hash(value: str) -> bool:
    """True for a full top hash: exactly 64 lowercase hex digits."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None
