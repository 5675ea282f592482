"""Which names a directory entry can have: the kernel's rules, shared by the file system views and the
package index (which leaves out, at build time, the entries a mount could never show); which names a
package and its pointers can have (quilt3's rules); and how a text naming them is printed on one line."""

from __future__ import annotations

import re

#: NAME_MAX: the kernel rejects a whole directory listing when one name in it is longer.
MAX_NAME_BYTES = 255
_ESCAPED_LINE_BREAKS = str.maketrans({"\n": "\\n", "\r": "\\r"})


def one_line(text: str) -> str:
    """`text` with its line breaks escaped: a key may hold a newline, which must not forge a line of a log
    or of a command's report."""
    return text.translate(_ESCAPED_LINE_BREAKS)


def invalid_name_reason(name: str) -> str | None:
    """Why `name` cannot be a directory entry, or None if it can."""
    if name in ("", ".", ".."):
        return "empty, '.' or '..' path component"
    if "\0" in name:
        return "NUL byte in name"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"component longer than {MAX_NAME_BYTES} bytes"
    return None


def invalid_path_reason(path: str) -> str | None:
    """Why a `/`-separated path cannot be shown (`invalid_name_reason` of its first bad component), or None.
    (The kernel rejects a whole directory listing when one name in it is over 255 bytes, so one such name
    would hide all its siblings.)"""
    return next(filter(None, map(invalid_name_reason, path.split("/"))), None)


_PACKAGE_NAME = re.compile(r"[\w-]+/[\w-]+")  # Unicode \w, like quilt3's PACKAGE_NAME_FORMAT
_TIMESTAMP = re.compile(r"[0-9]+")
LATEST = "latest"
#: In a package's directory of a mount, `@<hash>` names a revision and `draft` the package's draft.
REVISION_PREFIX = "@"
PACKAGE_DRAFT = "draft"


def is_valid_package_name(name: str) -> bool:
    """`namespace/name`, as quilt3 accepts them."""
    return isinstance(name, str) and _PACKAGE_NAME.fullmatch(name) is not None


def is_pointer_name(pointer: str) -> bool:
    """A file in a package's pointer directory: quilt3 lists every one as a pointer, whatever its name
    (`latest`, the Unix seconds its push writes, or a tag another tool wrote).  Not empty, `.`, `..`, nor with
    a `/` (a key below a subdirectory) or a NUL byte."""
    return (isinstance(pointer, str) and pointer not in ("", ".", "..") and "/" not in pointer
            and "\0" not in pointer)


def is_timestamp_pointer(pointer: str) -> bool:
    """A pointer named by Unix seconds (ASCII digits), as quilt3's push names them."""
    return _TIMESTAMP.fullmatch(pointer) is not None


def is_settable_pointer_name(pointer: str) -> bool:
    """The pointers quilt3 writes (push: Unix seconds and `latest`; rollback: `latest`), the only ones
    quiltmount writes."""
    return isinstance(pointer, str) and (pointer == LATEST or is_timestamp_pointer(pointer))


def is_shown_pointer_name(pointer: str) -> bool:
    """A pointer a mount can show in its package's directory: a valid entry name that names neither a
    revision (`@...`) nor the draft."""
    return (is_pointer_name(pointer) and invalid_name_reason(pointer) is None and pointer != PACKAGE_DRAFT
            and not pointer.startswith(REVISION_PREFIX))


def split_package_spec(spec: str) -> tuple[str, str | None, str | None]:
    """`ns/name`, `ns/name@HASH` or `ns/name:POINTER` -> (name, hash or None, pointer or None); the name is
    not checked.  ValueError if `spec` is empty or its `@` or `:` is followed by nothing: read as `latest`,
    a hash or pointer left out by mistake (an unset shell variable) would mount another revision."""
    if not spec:
        raise ValueError("expected NS/NAME[@HASH|:TAG]")
    name, at, top_hash = spec.partition("@")
    if at:
        if not top_hash:
            raise ValueError("nothing after '@': give a top hash or a prefix of 6+ characters, or leave '@' out "
                             "for latest")
        return name, top_hash, None
    name, colon, pointer = spec.partition(":")
    if colon and not pointer:
        raise ValueError("nothing after ':': give a pointer (latest, a timestamp or a tag), or leave ':' out "
                         "for latest")
    return name, None, pointer or None
