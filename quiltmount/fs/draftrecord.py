"""A package draft's record on disk and the extended attributes through which a mount shows and commits it:
what is read without opening the draft (`quiltmount packages diff` reads a draft a daemon holds), so it loads
nothing of the commit engine.  The draft itself is fs/draft.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from quiltmount.errors import UserError
from quiltmount.fs.staging import read_journal
from quiltmount.keep import KEEP

DRAFT_FILE = "draft.json"
FORMAT = 1
#: On a draft's directory: its package (`ns/name`), and its parent's top hash (empty for a new package).
PACKAGE_XATTR = "user.quilt.package"
PARENT_XATTR = "user.quilt.parent"
#: On a draft's file with new bytes: `A` (a key its parent does not have) or `M` (new bytes of one it has).
CHANGE_XATTR = "user.quilt.change"
#: Set on a draft to the commit's options (JSON) to commit it in its daemon; then read the outcome (JSON) from
#: the second, and, while it runs, its progress (`CommitProgress` as JSON) from the third.
COMMIT_XATTR = "user.quilt.commit"
COMMIT_RESULT_XATTR = "user.quilt.commit_result"
COMMIT_PROGRESS_XATTR = "user.quilt.commit_progress"


class DraftError(UserError):
    """A draft directory that cannot be used (missing, unreadable, or of another format)."""


@dataclass
class DraftRecord:
    package: str
    registry: str
    parent: str | None
    deleted: list[str] = field(default_factory=list)  # parent keys removed
    renamed: dict[str, str] = field(default_factory=dict)  # new logical key -> the parent key it shows
    entry_meta: dict[str, Any] = field(default_factory=dict)  # parent keys whose `meta` changed
    file_meta: dict[str, Any] = field(default_factory=dict)  # staged keys whose `meta` was set
    user_meta: Any = KEEP  # the header's user_meta; KEEP: the parent's
    made_dirs: list[str] = field(default_factory=list)  # directories `mkdir` made (shown even when empty)
    deleted_dirs: list[str] = field(default_factory=list)  # parent directories `rmdir` removed

    def started_over(self, parent: str | None) -> DraftRecord:
        """This draft's record with no changes, on revision `parent`."""
        return DraftRecord(self.package, self.registry, parent)

    def to_json(self) -> dict[str, Any]:
        data = {"format": FORMAT, "package": self.package, "registry": self.registry, "parent": self.parent,
                "deleted": sorted(self.deleted), "renamed": self.renamed, "entry_meta": self.entry_meta,
                "file_meta": self.file_meta, "made_dirs": sorted(self.made_dirs),
                "deleted_dirs": sorted(self.deleted_dirs)}
        if self.user_meta is not KEEP:
            data["user_meta"] = self.user_meta
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DraftRecord:
        if data.get("format") != FORMAT:
            raise DraftError(f"draft format {data.get('format')!r}, expected {FORMAT}")
        return cls(data["package"], data["registry"], data["parent"], list(data["deleted"]), dict(data["renamed"]),
                   dict(data["entry_meta"]), dict(data["file_meta"]), data.get("user_meta", KEEP),
                   list(data.get("made_dirs", [])), list(data.get("deleted_dirs", [])))


def read_record(directory: str) -> DraftRecord:
    try:
        with open(os.path.join(directory, DRAFT_FILE), encoding="utf-8") as file:
            return DraftRecord.from_json(json.load(file))
    except FileNotFoundError:
        raise DraftError(f"{directory}: no draft there") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DraftError(f"{directory}: unreadable draft ({exc})") from None


@dataclass
class DraftChanges:
    """What a draft changes, read from its files without opening it (a running daemon holds it)."""

    parent: str | None
    written: list[str]  # keys with staged bytes
    deleted: set[str]
    renamed: dict[str, str]  # new key -> the parent key it shows
    meta_changed: set[str]  # parent keys whose meta changed


def read_changes(directory: str) -> DraftChanges:
    record = read_record(directory)
    written = sorted({staged.key for staged in read_journal(os.path.join(directory, "staging"))})
    return DraftChanges(record.parent, written, set(record.deleted), dict(record.renamed),
                        set(record.entry_meta))
