"""A package draft's record on disk: what it shows, what it changes, and that all of it survives a reopen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quiltmount.fs.draft import Draft, commit_draft
from quiltmount.fs.draftrecord import DRAFT_FILE, DraftError
from quiltmount.fs.staging import CLOSED
from quiltmount.packages.commit import KEEP
from quiltmount.packages.registry import Registry
from quiltmount.storage.local import LocalStore

PARENT = "a" * 64
IN_PARENT = {"README.md", "empty.txt", "data/hello.txt", "data-raw.csv"}


def _write(draft: Draft, logical_key: str, data: bytes, **kwargs) -> None:
    """What cp into the draft does: stage, write, close."""
    staged = draft.write(logical_key, **kwargs)
    Path(draft.staging.data_path(staged)).write_bytes(data)
    draft.staging.set_state(staged, CLOSED)


def _rename(draft: Draft, old: str, new: str) -> None:
    draft.rename(old, new, old_in_parent=old in IN_PARENT, new_in_parent=new in IN_PARENT)


def test_a_draft_records_changes_and_survives_a_reopen(tmp_path: Path) -> None:
    directory = str(tmp_path / "draft")
    draft = Draft.create(directory, package="demo/pkg", registry="s3://b", parent=PARENT)
    with pytest.raises(DraftError, match="already there"):
        Draft.create(directory, package="demo/pkg", registry="s3://b", parent=PARENT)
    _write(draft, "new.txt", b"new\n")
    _write(draft, "README.md", b"# changed\n")
    draft.remove("empty.txt", in_parent=True)
    _rename(draft, "data/hello.txt", "greeting.txt")
    draft.set_meta("data-raw.csv", {"user_meta": {"rows": 1}})
    draft.set_meta("greeting.txt", {"user_meta": {"moved": True}})
    draft.set_user_meta({"author": "me"})
    draft.close()

    again = Draft.open(directory)  # what a remount (or a restart after kill -9) finds
    assert (again.package, again.registry, again.parent) == ("demo/pkg", "s3://b", PARENT)
    assert Path(again.staging.data_path(again.staged("new.txt"))).read_bytes() == b"new\n"
    assert again.source_of("greeting.txt") == "data/hello.txt"
    for hidden in ("data/hello.txt", "empty.txt", "README.md", "new.txt"):
        assert again.source_of(hidden) is None, hidden  # hidden, or shown from staged bytes
    assert again.source_of("data-raw.csv") == "data-raw.csv"
    assert again.added_keys() == ["README.md", "greeting.txt", "new.txt"]
    assert again.meta("data-raw.csv") == {"user_meta": {"rows": 1}} and again.meta("README.md") is KEEP
    assert again.user_meta == {"author": "me"}

    changes = again.changes()
    assert set(changes.files) == {"new.txt", "README.md"}
    assert changes.deleted == {"empty.txt", "data/hello.txt"}
    assert changes.renamed == {"greeting.txt": "data/hello.txt"}
    assert changes.entry_meta == {"data-raw.csv": {"user_meta": {"rows": 1}},
                                  "greeting.txt": {"user_meta": {"moved": True}}}
    assert changes.user_meta == {"author": "me"}
    assert again.summary() == {"package": "demo/pkg", "parent": PARENT, "files_written": 2, "deleted": 2,
                               "renamed": 1, "bytes_staged": len(b"new\n# changed\n")}

    staged_file = again.staging.data_path(again.staged("new.txt"))
    again.committed("b" * 64)
    assert again.parent == "b" * 64 and again.staged("new.txt") is None and not Path(staged_file).exists()
    changes = again.changes()
    assert not (changes.files or changes.deleted or changes.renamed or changes.entry_meta)
    assert changes.user_meta is KEEP
    again.discard()
    assert not Path(directory).exists()


def test_renames_and_removals_compose(tmp_path: Path) -> None:
    draft = Draft.create(str(tmp_path / "d"), package="demo/pkg", registry="s3://b", parent=PARENT)
    draft.set_meta("README.md", {"user_meta": {"t": 1}})
    _rename(draft, "README.md", "docs/README.md")
    assert draft.meta("docs/README.md") == {"user_meta": {"t": 1}}  # what the mount shows: the meta moved
    draft.set_meta("docs/README.md", {"user_meta": {"t": 2}})
    assert draft.meta("docs/README.md") == {"user_meta": {"t": 2}}
    assert draft.changes().entry_meta == {"docs/README.md": {"user_meta": {"t": 2}}}
    draft.set_meta("docs/README.md", {"user_meta": {"t": 1}})
    _rename(draft, "docs/README.md", "README.md")  # back: unchanged again, meta and all
    changes = draft.changes()
    assert not changes.deleted and not changes.renamed
    assert changes.entry_meta == {"README.md": {"user_meta": {"t": 1}}}

    _write(draft, "notes.txt", b"n")
    _rename(draft, "notes.txt", "data-raw.csv")  # staged bytes replace a parent row
    _rename(draft, "data/hello.txt", "moved.txt")
    _rename(draft, "moved.txt", "again.txt")  # a chain still names the parent row
    draft.remove("again.txt", in_parent=False)
    changes = draft.changes()
    assert set(changes.files) == {"data-raw.csv"} and not changes.renamed
    assert changes.deleted == {"data/hello.txt"}  # data-raw.csv is replaced, not deleted
    assert changes.files["data-raw.csv"].meta == {}  # the bytes of notes.txt, not the old row's meta

    _rename(draft, "empty.txt", "e.txt")
    _write(draft, "e.txt", b"e", meta_shown={"user_meta": {"kept": 1}})  # overwriting a renamed row
    changes = draft.changes()
    assert changes.files["e.txt"].meta == {"user_meta": {"kept": 1}} and "e.txt" not in changes.renamed
    assert "empty.txt" in changes.deleted


def test_unusable_draft_directories(tmp_path: Path) -> None:
    with pytest.raises(DraftError, match="no draft there"):
        Draft.open(str(tmp_path))
    (tmp_path / DRAFT_FILE).write_text(json.dumps({"format": 99}))
    with pytest.raises(DraftError, match="format 99"):
        Draft.open(str(tmp_path))
    (tmp_path / DRAFT_FILE).write_text("{not json")
    with pytest.raises(DraftError, match="unreadable"):
        Draft.open(str(tmp_path))


def test_a_committed_draft_is_a_revision_quilt3_reads(tmp_path: Path) -> None:
    import os

    os.environ.setdefault("QUILT_DISABLE_USAGE_METRICS", "true")
    import quilt3

    root = tmp_path / "registry"
    root.mkdir()
    registry_url = root.as_uri()
    src = tmp_path / "src"
    for key, data in {"README.md": b"# Demo\n", "data/hello.txt": b"hello\n", "empty.txt": b"",
                      "data-raw.csv": b"a,b\n"}.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(data)
    quilt3.Package().set_dir("/", str(src)).set_meta({"v": 1}).build("demo/pkg", registry=registry_url,
                                                                       message="first")
    parent = quilt3.Package.browse("demo/pkg", registry=registry_url)
    draft = Draft.create(str(tmp_path / "draft"), package="demo/pkg", registry=registry_url,
                         parent=parent.top_hash)
    _write(draft, "new.txt", b"new\n")
    _write(draft, "README.md", b"# changed\n")
    draft.remove("empty.txt", in_parent=True)
    _rename(draft, "data/hello.txt", "greeting.txt")
    draft.set_meta("greeting.txt", {"user_meta": {"moved": True}})
    open_file = draft.write("half.txt")  # a writer still has it open
    registry = Registry(LocalStore(str(root)), registry_url)
    with pytest.raises(DraftError, match="open for writing"):
        commit_draft(draft, registry, message="edit")
    draft.staging.set_state(open_file, CLOSED)
    done = commit_draft(draft, registry, message="edit")

    pkg = quilt3.Package.browse("demo/pkg", registry=registry_url)
    assert pkg.top_hash == done.top_hash
    assert sorted(lk for lk, _ in pkg.walk()) == ["README.md", "data-raw.csv", "greeting.txt", "half.txt",
                                                  "new.txt"]
    assert pkg["README.md"].get_bytes() == b"# changed\n" and pkg["new.txt"].get_bytes() == b"new\n"
    assert pkg["greeting.txt"].get_bytes() == b"hello\n" and pkg["greeting.txt"].meta == {"moved": True}
    assert pkg["greeting.txt"].physical_key == parent["data/hello.txt"].physical_key  # referenced, not copied
    assert pkg.meta == {"v": 1} and pkg["half.txt"].get_bytes() == b""
    assert draft.parent == done.top_hash and not draft.changes().files  # empty of changes, on the new parent
