"""`KEEP`: "the parent's value stays", for the fields of a package change that may also be set to None (a
value).  A leaf module, so that what only reads a draft's record loads nothing else."""

from __future__ import annotations

from typing import Any


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()
