"""POSIX attributes as s3fs-fuse stores them in an object's user metadata (`--posix-metadata`).

The format, read from s3fs-fuse's source (src/metaheader.cpp, src/s3fs.cpp, src/string_util.cpp), so that
a bucket written by either mounts the same in the other:

| header | value |
|---|---|
| `x-amz-meta-mode` | `st_mode` in decimal, file type bits included (`33188` is a 0644 regular file) |
| `x-amz-meta-uid`, `x-amz-meta-gid` | decimal |
| `x-amz-meta-atime`, `-mtime`, `-ctime` | seconds since the epoch, `SEC` or `SEC.NNNNNNNNN` (nanoseconds, 9 digits) |
| `x-amz-meta-xattr` | `{"NAME":"BASE64",...}` (names sorted, values base64), URL-encoded but for `.-_~/` |

Symbolic links are objects whose body is the target, with mode `S_IFLNK | 0777`; FIFOs and devices from
mknod(2) are empty objects whose mode says what they are (s3fs keeps no device number).  Directories keep
their attributes in their `dir/` marker object.  Missing or unreadable headers fall back to the mount's
defaults (`--file-mode`, `--dir-mode`, `--uid`, `--gid`) and the object's LastModified, as s3fs falls back to
its own.  Header names here are as boto3 hands user metadata: lowercase, without `x-amz-meta-`.

This module is a leaf: the value types of the tree interface (`AttrChange`, `NewAttrs`) live here too.
"""

from __future__ import annotations

import base64
import binascii
import stat
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

#: uid_t and gid_t are 32 bits, and (uid_t)-1 = 4294967295 means "no id" to chown(2) and setuid(2).
MAX_ID = 2**32 - 2

NS = 1_000_000_000
#: The file types a mode may say (`S_IFMT` bits); 0 (none) takes the default's.  The kernel refuses any other.
FILE_TYPES = frozenset({0, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR,
                        stat.S_IFBLK})
#: The largest `st_mode` (16 bits: file type and permissions).
MAX_MODE = 0o177777
#: The latest time shown, in nanoseconds: the kernel's and FUSE's times are signed 64-bit nanoseconds (2262).
MAX_TIME_NS = 2**63 - 1
#: Characters s3fs leaves as they are when it URL-encodes `x-amz-meta-xattr` (urlEncodePath).
_XATTR_SAFE = "-_.~/"
#: Characters no extended attribute's name can hold in `x-amz-meta-xattr`: s3fs writes names as they are
#: (raw_build_xattrs) and splits the value at commas and strips double quotes when reading it (parse_xattrs).
XATTR_NAME_UNSTORABLE = ',"'


@dataclass(frozen=True)
class PosixAttrs:
    """What stat(2) and listxattr(2) report for one path: `mode` includes the file type bits."""

    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class AttrChange:
    """chmod(2), chown(2), utimensat(2), setxattr(2) or removexattr(2): None leaves a value as it is."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    set_xattr: tuple[str, bytes] | None = None
    remove_xattr: str | None = None

    def written(self) -> set[str]:
        """The headers this change sets (`ctime`, which every change sets, included)."""
        names = {"ctime"}
        for name in ("mode", "uid", "gid", "atime", "mtime"):
            if getattr(self, name if name in ("mode", "uid", "gid") else f"{name}_ns") is not None:
                names.add(name)
        return names


@dataclass(frozen=True)
class NewAttrs:
    """A file, directory, symlink or node being created: its mode (type bits included) and its owner (the
    calling process's user and group)."""

    mode: int
    uid: int
    gid: int


def changed(attrs: PosixAttrs, change: AttrChange, now_ns: int) -> PosixAttrs:
    """`attrs` after `change`, made at `now_ns`: as POSIX says, every change sets ctime; chmod keeps the file
    type; utimensat sets only the times it is given."""
    xattrs = dict(attrs.xattrs)
    if change.set_xattr is not None:
        xattrs[change.set_xattr[0]] = change.set_xattr[1]
    if change.remove_xattr is not None:
        del xattrs[change.remove_xattr]
    return PosixAttrs(
        mode=attrs.mode if change.mode is None else stat.S_IFMT(attrs.mode) | stat.S_IMODE(change.mode),
        uid=attrs.uid if change.uid is None else change.uid,
        gid=attrs.gid if change.gid is None else change.gid,
        atime_ns=attrs.atime_ns if change.atime_ns is None else change.atime_ns,
        mtime_ns=attrs.mtime_ns if change.mtime_ns is None else change.mtime_ns,
        ctime_ns=now_ns, xattrs=xattrs)


def created(new: NewAttrs, now_ns: int) -> PosixAttrs:
    """The attributes of something created at `now_ns`."""
    return PosixAttrs(new.mode, new.uid, new.gid, now_ns, now_ns, now_ns)


def staged_headers(headers: Mapping[str, str], *, mtime_ns: int, ctime_ns: int) -> dict[str, str]:
    """The headers of a staged file as its upload sends them: the mtime of its staged bytes (written, or set by
    utimensat), and the later of its own ctime and theirs (every write changes both)."""
    ctime = max(parse_time(headers.get("ctime")) or 0, ctime_ns)
    return {**headers, "mtime": format_time(mtime_ns), "ctime": format_time(ctime)}


# -- headers -------------------------------------------------------------------------------------------------
def to_headers(attrs: PosixAttrs) -> dict[str, str]:
    """The user metadata s3fs writes for `attrs` (`xattr` only when there are extended attributes)."""
    headers = {"mode": str(attrs.mode), "uid": str(attrs.uid), "gid": str(attrs.gid),
               "atime": format_time(attrs.atime_ns), "mtime": format_time(attrs.mtime_ns),
               "ctime": format_time(attrs.ctime_ns)}
    if attrs.xattrs:
        headers["xattr"] = encode_xattrs(attrs.xattrs)
    return headers


def merged_headers(headers: Mapping[str, str], before: PosixAttrs, after: PosixAttrs,
                   written: Collection[str] = ()) -> dict[str, str]:
    """An object's user metadata `headers` (other clients' included, kept) after a change of its attributes
    from `before` (what `headers` say) to `after`: only what changed is written, as s3fs's copy of an object
    onto itself does (a chmod adds `mode` and `ctime`, never an `mtime` the object did not have).  The headers
    named in `written` are written even when unchanged (those a chmod, chown or utimensat sets)."""
    merged = dict(headers)
    old = to_headers(before)
    for name, value in to_headers(after).items():
        if name != "xattr" and (old[name] != value or name in written):
            merged[name] = value
    if dict(after.xattrs) != dict(before.xattrs):
        if after.xattrs:
            merged["xattr"] = encode_xattrs(after.xattrs)
        else:
            merged.pop("xattr", None)
    return merged


def from_headers(headers: Mapping[str, str], default: PosixAttrs) -> PosixAttrs:
    """The attributes `headers` describe; what they lack or garble comes from `default`.

    A mode without file type bits takes `default`'s (an object is a regular file, a marker a directory), and
    a mode without any permission bit gets read permission for its owner, as s3fs does.  Times s3fs would not
    use (0 or before, as it uses only times after the epoch) or that no file can have take `default`'s."""
    mode = _mode_number(headers.get("mode"))
    if mode is None:
        mode = default.mode
    elif not stat.S_IFMT(mode):
        mode |= stat.S_IFMT(default.mode)
        if not stat.S_IMODE(mode) & 0o777:
            mode |= stat.S_IRUSR | (stat.S_IXUSR if stat.S_ISDIR(mode) else 0)
    uid, gid = _id_number(headers.get("uid")), _id_number(headers.get("gid"))
    times = [_file_time(headers.get(name)) for name in ("atime", "mtime", "ctime")]
    atime, mtime, ctime = (default_ns if value is None else value
                           for value, default_ns in zip(times, (default.atime_ns, default.mtime_ns, default.ctime_ns)))
    raw_xattrs = headers.get("xattr")
    return PosixAttrs(mode, default.uid if uid is None else uid, default.gid if gid is None else gid,
                      atime, mtime, ctime, default.xattrs if raw_xattrs is None else decode_xattrs(raw_xattrs))


def _id_number(text: str | None) -> int | None:
    """A uid or gid header; None (the default's) if it is no id at all: negative or beyond uid_t, which the
    kernel would wrap around (4294967296 would show as 0, root)."""
    number = _number(text, base=0)
    return number if number is not None and 0 <= number <= MAX_ID else None


def _mode_number(text: str | None) -> int | None:
    """A mode header; None (the default's) if it is no mode: negative, over 16 bits, or of a file type that
    does not exist (the kernel would refuse the whole entry, EIO)."""
    number = _number(text, base=0)
    if number is None or not 0 <= number <= MAX_MODE or stat.S_IFMT(number) not in FILE_TYPES:
        return None
    return number


def _file_time(text: str | None) -> int | None:
    """A time header; None (the default's) if s3fs would not use it (not after the epoch) or it is past what
    the kernel can show."""
    ns = parse_time(text)
    return ns if ns is not None and NS <= ns <= MAX_TIME_NS else None


def _number(text: str | None, *, base: int) -> int | None:
    """An integer as strtoll(text, base) reads it whole; None if absent or not a number."""
    if text is None:
        return None
    digits = text.strip().lstrip("+-")
    if base == 0:  # C's rule: 0x... hexadecimal, 0... octal (Python's int() refuses a leading 0)
        base = 16 if digits[:2].lower() == "0x" else 8 if digits[:1] == "0" and len(digits) > 1 else 10
    try:
        return int(text.strip(), base)
    except ValueError:
        return None


def format_time(ns: int) -> str:
    """`SEC` for a whole second, else `SEC.NNNNNNNNN` (s3fs's `str(struct timespec)`)."""
    seconds, nanoseconds = divmod(ns, NS)
    return str(seconds) if nanoseconds == 0 else f"{seconds}.{nanoseconds:09d}"


def parse_time(text: str | None) -> int | None:
    """Nanoseconds since the epoch from `SEC[.FRACTION]`; None if absent or not a time.

    The fraction is read as a decimal fraction of a second: the same as s3fs for the 9 digits s3fs writes,
    and right for the shorter fractions other tools (rclone) write, which s3fs reads as nanoseconds."""
    if text is None:
        return None
    whole, _, fraction = text.strip().partition(".")
    try:
        seconds = int(whole, 10)
        nanoseconds = int((fraction + "000000000")[:9], 10) if fraction else 0
    except ValueError:
        return None
    if fraction and not fraction.isdigit():
        return None
    return seconds * NS + nanoseconds


def encode_xattrs(xattrs: Mapping[str, bytes]) -> str:
    """`x-amz-meta-xattr`: `{"NAME":"BASE64",...}` with names in order, URL-encoded as s3fs does."""
    body = ",".join(f'"{name}":"{base64.b64encode(value).decode()}"' for name, value in sorted(xattrs.items()))
    return quote("{" + body + "}", safe=_XATTR_SAFE)


def decode_xattrs(text: str) -> dict[str, bytes]:
    """The extended attributes of an `x-amz-meta-xattr` value, parsed as s3fs parses it (parse_xattrs): the
    text between the first `{` and the last `}`, split at commas, each pair at its last colon; pairs that do
    not parse are skipped."""
    decoded = unquote_to_bytes(text).decode("utf-8", "surrogateescape")
    start, end = decoded.find("{"), decoded.rfind("}")
    if start < 0 or end <= start:
        return {}
    xattrs: dict[str, bytes] = {}
    for pair in decoded[start + 1:end].split(","):
        name, colon, value = pair.rpartition(":")
        name, value = _unquoted(name), _unquoted(value)
        if not colon or name is None or value is None:
            continue
        try:
            xattrs[name] = base64.b64decode(value)
        except (binascii.Error, ValueError):
            continue
    return xattrs


def _unquoted(text: str) -> str | None:
    """`text` without its enclosing double quotes (s3fs's takeout_str_dquart); None if malformed."""
    first = text.find('"')
    if first < 0:
        return text
    last = text.rfind('"')
    inner = text[first + 1:last] if last > first else None
    return None if inner is None or '"' in inner else inner
