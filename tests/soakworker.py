"""One worker process of the soak test: `python soakworker.py ROLE MOUNT SECONDS SEED SPEC OUT`.

ROLE is `reader` (reads the objects in SPEC, a JSON map key -> sha256, and checks every byte), `lister`
(walks the whole mount), or `writer` (creates, overwrites, appends to and deletes files under its own
directory, SPEC being that directory's name).  Every worker writes to OUT a JSON report: operations,
bytes, errors (unexpected ones only), and for a writer the final expected state (key -> sha256 or null).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path


def _read(mount: Path, spec: dict[str, str], rng: random.Random, report: dict) -> None:
    key = rng.choice(sorted(spec))
    data = (mount / key).read_bytes()
    report["bytes"] += len(data)
    if hashlib.sha256(data).hexdigest() != spec[key]:
        report["errors"].append(f"wrong bytes read from {key}")


def _list(mount: Path, spec: object, rng: random.Random, report: dict) -> None:
    for _, dirs, files in os.walk(mount, onerror=lambda exc: report["errors"].append(f"lister: {exc}")):
        report["entries"] = report.get("entries", 0) + len(dirs) + len(files)


def _write(mount: Path, directory: str, rng: random.Random, report: dict) -> None:
    state: dict[str, str | None] = report.setdefault("state", {})
    present = [key for key, digest in state.items() if digest is not None]
    action = rng.choice(["create", "create", "overwrite", "append", "delete"] if present else ["create"])
    if action == "create":
        key = f"{directory}/f{len(state)}.bin"
    else:
        key = rng.choice(present)
    path = mount / key
    if action == "delete":
        path.unlink()
        state[key] = None
        return
    data = rng.randbytes(rng.choice((0, 100, 50_000, 1 << 20, 9 << 20)))
    if action == "append":
        with open(path, "ab") as file:
            file.write(data)
        data = path.read_bytes()  # read-your-writes: the whole staged file
    else:
        path.write_bytes(data)
    state[key] = hashlib.sha256(data).hexdigest()
    report["bytes"] += len(data)


ROLES = {"reader": _read, "lister": _list, "writer": _write}


def main(role: str, mount: str, seconds: str, seed: str, spec: str, out: str) -> int:
    rng = random.Random(int(seed))
    argument = json.loads(spec) if role == "reader" else spec
    report: dict = {"role": role, "operations": 0, "bytes": 0, "errors": []}
    if role == "writer":
        (Path(mount) / spec).mkdir(exist_ok=True)
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        try:
            ROLES[role](Path(mount), argument, rng, report)
        except OSError as exc:
            report["errors"].append(f"{role}: {exc}")
        report["operations"] += 1
    Path(out).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
