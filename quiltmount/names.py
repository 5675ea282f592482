"""Which names a directory entry can have: the kernel's rules, shared by the file system views and the
package index (which leaves out, at build time, the entries a mount could never show); and which names a
package and its pointers can have (quilt3's rules)."""

from __future__ import annotations

import re

#: NAME_MAX: the kernel rejects a whole directory listing when one name in it is longer.
MAX_NAME_BYTES = 255


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
_POINTER_NAME = re.compile(r"[0-9]+|latest")


def is_valid_package_name(name: str) -> bool:
    """`namespace/name`, as quilt3 accepts them."""
    return isinstance(name, str) and _PACKAGE_NAME.fullmatch(name) is not None


def is_pointer_name(pointer: str) -> bool:
    """Pointer files are named by Unix seconds (ASCII digits) or `latest`."""
    return isinstance(pointer, str) and _POINTER_NAME.fullmatch(pointer) is not None


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
        raise ValueError("nothing after ':': give a pointer (latest or a timestamp), or leave ':' out for latest")
    return name, None, pointer or None
