"""Create the quickstart's example: a directory that is also a local Quilt registry.

It holds a few plain files (like a tiny bucket) and the package `example/iris` with two revisions, written
with quiltmount's own manifest writer in quilt3's format (quilt3 can read it: `quilt3.Package.browse(
"example/iris", registry="file://<dir>")`).
"""

from __future__ import annotations

import csv
import io
import random
import sys
from pathlib import Path

from quiltmount.packages import manifest as mf

FIRST_TIMESTAMP = 1795424102


def iris_csv(rows: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["sepal_length", "sepal_width", "petal_length", "petal_width", "species"])
    for _ in range(rows):
        writer.writerow([round(rng.uniform(4, 8), 1), round(rng.uniform(2, 4.5), 1), round(rng.uniform(1, 7), 1),
                         round(rng.uniform(0.1, 2.5), 1), rng.choice(["setosa", "versicolor", "virginica"])])
    return out.getvalue().encode()


def write_revision(root: Path, files: dict[str, bytes], message: str, timestamp: int, revision_dir: str) -> str:
    entries = []
    for logical_key, data in files.items():
        path = root / "package-data" / revision_dir / logical_key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append(mf.Entry(logical_key, mf.format_physical_key(mf.PhysicalKey("file", None, str(path))),
                                len(data), "sha2-256-chunked", mf.hash_bytes("sha2-256-chunked", data)))
    manifest = mf.Manifest({"version": "v0", "user_meta": {"source": "quiltmount quickstart"}, "message": message},
                           entries)
    top_hash = manifest.top_hash
    (root / ".quilt/packages").mkdir(parents=True, exist_ok=True)
    (root / ".quilt/packages" / top_hash).write_bytes(mf.write_manifest(manifest))
    pointers = root / ".quilt/named_packages/example/iris"
    pointers.mkdir(parents=True, exist_ok=True)
    (pointers / str(timestamp)).write_text(top_hash)
    (pointers / "latest").write_text(top_hash)
    return top_hash


def make_example(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(
        "# Example dataset\n\nMounted by quiltmount: read it with ls, cat, pandas or any other tool.\n"
        "The package example/iris is under .packages/ in the mount.\n")
    (root / "data/raw").mkdir(parents=True, exist_ok=True)
    (root / "data/iris.csv").write_bytes(iris_csv(150, 42))
    (root / "data/raw/measurements.bin").write_bytes(random.Random(1).randbytes(2 << 20))
    first = {"README.md": b"# iris\nFirst revision.\n", "data/iris.csv": iris_csv(100, 1)}
    second = {"README.md": b"# iris\nSecond revision: more rows.\n", "data/iris.csv": iris_csv(150, 2),
              "data/notes.txt": b"added in the second revision\n"}
    write_revision(root, first, "first revision", FIRST_TIMESTAMP, "v1")
    write_revision(root, second, "more rows", FIRST_TIMESTAMP + 60, "v2")


if __name__ == "__main__":
    make_example(Path(sys.argv[1]).expanduser().resolve())
