"""Create the quickstart's example directory (a few small files, like a tiny bucket)."""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path


def make_example(root: Path) -> None:
    (root / "data" / "raw").mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text(
        "# Example dataset\n\nMounted by quiltmount: read it with ls, cat, pandas or any other tool.\n")
    rng = random.Random(42)
    with open(root / "data" / "iris.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["sepal_length", "sepal_width", "petal_length", "petal_width", "species"])
        for _ in range(150):
            writer.writerow([round(rng.uniform(4, 8), 1), round(rng.uniform(2, 4.5), 1),
                             round(rng.uniform(1, 7), 1), round(rng.uniform(0.1, 2.5), 1),
                             rng.choice(["setosa", "versicolor", "virginica"])])
    (root / "data" / "raw" / "measurements.bin").write_bytes(rng.randbytes(2 << 20))


if __name__ == "__main__":
    make_example(Path(sys.argv[1]))
