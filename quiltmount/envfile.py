"""`mount --env-file FILE`: environment variables from a file, for mounts at boot (fstab, systemd), whose
environment is nearly empty.

The format is the common subset of systemd's EnvironmentFile= and shell assignments: one `KEY=VALUE` a line,
blank lines and lines starting with `#` ignored, an optional leading `export `, and a value wholly inside
single or double quotes taken without them (no escapes, expansions or continuation lines).  Errors name the
file and line but never echo a line: it may hold a secret.
"""

from __future__ import annotations

import re

from quiltmount.errors import UserError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def load_env_file(path: str) -> dict[str, str]:
    """The variables `path` sets; `UserError` if it cannot be read or a line is not `KEY=VALUE`."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UserError(f"cannot read environment file {path}: {reason}") from None
    variables: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("export "):
            text = text[len("export "):].lstrip()
        name, equals, value = text.partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not _NAME.match(name) or "\0" in value:
            raise UserError(f"environment file {path}, line {number}: expected KEY=VALUE")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        variables[name] = value
    return variables
