"""A package draft on local disk: the revision it started from and what it changes, kept across crashes and
remounts until it is committed or discarded.

```
<directory>/draft.json     package, registry, parent top hash, deleted and renamed logical keys, meta changes
<directory>/staging/       the bytes of new and changed files: a `StagingArea` whose keys are logical keys
```

`draft.json` is replaced atomically and durably after every change, and a staged file's journal entry is
written before its bytes, so a crash leaves a draft that is the last complete change (a file being written
keeps what reached the disk, as in the bucket).  Unchanged files are not here at all: they are the parent's
rows, read lazily from their physical keys; a draft costs nothing until something changes.

The draft records logical changes only: which keys the parent has is the caller's knowledge (its tree answers
from the parent's index), passed in as `in_parent`.

A draft in a mount (`stream_parts`) also sends the parts of a new file written in order from its start while it
is written, to a multipart upload at the key the commit uploads it to (PartStreams, fs/partstream.py), never
completed before the commit: nothing in the bucket changes until then (where versions are not kept, that key
may hold the parent's file).  The commit completes it and takes the entry's hash from its checksum.  Anything
else that becomes of the file (rewritten out of order, truncated, renamed, removed, the draft discarded or the
mount gone) drops the stream, aborting the upload; the commit then sends the staged file whole.  Streams live
in memory: after a crash, the staged file is kept as ever, and the upload left behind (named in its journal
entry) is aborted when the next daemon opens the draft (`stream_parts`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import threading
from collections.abc import Callable
from typing import Any

from quiltmount.files import atomic_file
from quiltmount.fs.draftrecord import DRAFT_FILE, DraftError, DraftRecord, read_record
from quiltmount.fs.partstream import PartStreams
from quiltmount.fs.staging import OPEN, StagedFile, StagingArea, abort_abandoned_uploads
from quiltmount.keep import KEEP
from quiltmount.packages.commit import Changes, Committed, NewFile, ProgressCallback, commit_revision
from quiltmount.packages.registry import Registry
from quiltmount.storage.base import PartUpload

class Draft:
    """One draft of one package.  Thread-safe: a lock orders changes and their writes to `draft.json`."""

    def __init__(self, directory: str, record: DraftRecord) -> None:
        self.directory = directory
        self._record = record
        self.staging = StagingArea(os.path.join(directory, "staging"))
        self._files: dict[str, StagedFile] = {staged.key: staged for staged in self.staging.recover()}
        self._lock = threading.Lock()
        self.streams: PartStreams | None = None  # see `stream_parts`
        self._destination: Callable[[str], str] = str

    @classmethod
    def create(cls, directory: str, *, package: str, registry: str, parent: str | None) -> Draft:
        """A new draft of `package` from revision `parent` (None: a new package)."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if os.path.exists(os.path.join(directory, DRAFT_FILE)):
            raise DraftError(f"{directory}: a draft is already there")
        draft = cls(directory, DraftRecord(package, registry, parent))
        draft._save()
        return draft

    @classmethod
    def open(cls, directory: str) -> Draft:
        return cls(directory, read_record(directory))

    @property
    def package(self) -> str:
        return self._record.package

    @property
    def registry(self) -> str:
        return self._record.registry

    @property
    def parent(self) -> str | None:
        return self._record.parent

    def stream_parts(self, streams: PartStreams, destination: Callable[[str], str]) -> None:
        """Send the parts of new files written in order to `streams`' store while they are written, each to
        `destination(logical key)`, the key the commit uploads it to (see the module's docstring)."""
        self.streams, self._destination = streams, destination
        with self._lock:
            recovered = list(self._files.values())
        abort_abandoned_uploads(streams.store, self.staging, recovered)

    def start_stream(self, staged: StagedFile) -> None:
        """`staged`, new and empty, may send its parts while it is written in order (if the store can)."""
        if self.streams is not None:
            self.streams.start(staged, self.staging.data_path(staged), self._destination(staged.key))

    def drop_stream(self, staged: StagedFile) -> None:
        """`staged` will be sent whole, or not at all: its parts sent so far go (in the background)."""
        if self.streams is not None:
            self.streams.drop(staged)

    def _forget(self, staged: StagedFile) -> None:
        """`staged` is no longer the draft's: its stream and bytes go."""
        self.drop_stream(staged)
        self.staging.remove(staged)

    def _save(self) -> None:
        """draft.json as it is now (the caller holds the lock, or owns the draft alone)."""
        data = json.dumps(self._record.to_json(), ensure_ascii=False).encode("utf-8")
        with atomic_file(os.path.join(self.directory, DRAFT_FILE), durable=True) as file:
            file.write(data)

    # -- what the draft shows ------------------------------------------------------------------------------
    def staged(self, logical_key: str) -> StagedFile | None:
        """The new bytes of `logical_key`, if it has any."""
        with self._lock:
            return self._files.get(logical_key)

    def source_of(self, logical_key: str) -> str | None:
        """The parent key whose row `logical_key` shows (itself, or what was renamed to it), or None when the
        draft hides or replaces it: the caller looks that key up in the parent."""
        with self._lock:
            if logical_key in self._files:
                return None
            if logical_key in self._record.renamed:
                return self._record.renamed[logical_key]
            hidden = logical_key in self._record.deleted or logical_key in self._record.renamed.values()
            return None if hidden else logical_key

    def added_keys(self) -> list[str]:
        """Keys the parent may not have: staged files and rename targets (for listings)."""
        with self._lock:
            return sorted({*self._files, *self._record.renamed})

    def meta(self, logical_key: str) -> Any:
        """The entry `meta` the draft sets for `logical_key`, or KEEP (kept where `set_meta` keeps it: with the
        staged file or the renamed row, else with the parent's row)."""
        with self._lock:
            if logical_key in self._files or logical_key in self._record.renamed:
                return self._record.file_meta.get(logical_key, KEEP)
            return self._record.entry_meta.get(logical_key, KEEP)

    @property
    def user_meta(self) -> Any:
        return self._record.user_meta

    def directories(self) -> tuple[set[str], set[str]]:
        """(directories `mkdir` made, parent directories `rmdir` removed): what listings show besides keys."""
        with self._lock:
            return set(self._record.made_dirs), set(self._record.deleted_dirs)

    # -- changing it ---------------------------------------------------------------------------------------
    def write(self, logical_key: str, *, meta_shown: Any = KEEP) -> StagedFile:
        """A new, empty staged file for `logical_key`, replacing whatever it showed.  Its meta stays: pass
        `meta_shown`, the meta of the row it showed, when that row is a renamed one (the caller knows the
        parent's rows; a key's own parent row needs nothing)."""
        staged = self.staging.create(logical_key)
        with self._lock:
            replaced = self._files.get(logical_key)
            self._files[logical_key] = staged
            source = self._record.renamed.pop(logical_key, None)
            if source is not None and logical_key not in self._record.file_meta and meta_shown is not KEEP:
                self._record.file_meta[logical_key] = meta_shown
            elif logical_key in self._record.deleted and logical_key not in self._record.file_meta:
                # `rm` first: a new file, without the meta of the parent's row (quilt3: delete, then set)
                self._record.file_meta[logical_key] = {}
            self._save()
        if replaced is not None:
            self._forget(replaced)
        return staged

    def remove(self, logical_key: str, *, in_parent: bool) -> None:
        """`rm`: the key shows nothing any more."""
        with self._lock:
            staged = self._files.pop(logical_key, None)
            self._record.file_meta.pop(logical_key, None)
            self._record.renamed.pop(logical_key, None)
            if in_parent and logical_key not in self._record.deleted:
                self._record.deleted.append(logical_key)
                self._record.entry_meta.pop(logical_key, None)
            self._save()
        if staged is not None:
            self._forget(staged)

    def rename(self, old: str, new: str, *, old_in_parent: bool, new_in_parent: bool,
               meta_shown: Any = KEEP) -> None:
        """`mv old new`: `new` shows what `old` showed, with its meta (staged bytes move; a parent row is
        referenced, never copied), `old` shows nothing, whatever `new` showed is gone.  `meta_shown`: the meta
        `old` showed, which staged bytes take along (the caller knows parent rows; without it, none)."""
        with self._lock:
            record = self._record
            staged = self._files.pop(old, None)
            source = record.renamed.pop(old, None)
            if staged is None and source is None and old_in_parent and old not in record.deleted:
                source = old
            if staged is not None or old in record.file_meta:
                meta = record.file_meta.pop(old, KEEP)
            else:
                meta = record.entry_meta.pop(old, KEEP) if source == old else KEEP
            for key, in_parent in ((old, old_in_parent), (new, new_in_parent)):
                if in_parent and key not in record.deleted:
                    record.deleted.append(key)
                    record.entry_meta.pop(key, None)
            replaced = self._files.pop(new, None)
            record.renamed.pop(new, None)
            record.file_meta.pop(new, None)
            if staged is not None:
                staged.key = new
                self._files[new] = staged
                if meta is KEEP:  # else the row `new` had in the parent would lend it its meta
                    meta = {} if meta_shown is KEEP else meta_shown
            elif source == new:  # moved back where it came from: its own row again
                record.deleted.remove(new)
                if meta is not KEEP:
                    record.entry_meta[new] = meta
                meta = KEEP
            elif source is not None:
                record.renamed[new] = source
            if meta is not KEEP:
                record.file_meta[new] = meta
            self._save()
        if staged is not None:
            self.drop_stream(staged)  # its parts went to the old key's destination
            self.staging.save(staged)
        if replaced is not None:
            self._forget(replaced)

    def make_dir(self, path: str) -> None:
        """`mkdir`: an empty directory, shown until it is removed or the draft is committed (a package has no
        empty directories)."""
        with self._lock:
            if path not in self._record.made_dirs:
                self._record.made_dirs.append(path)
                self._save()

    def remove_dir(self, path: str, *, in_parent: bool) -> None:
        """`rmdir` of an empty directory; one of the parent's loses its directory metadata at the commit (as
        quilt3's `pkg.delete(dir)`), even if files are written under its name again."""
        with self._lock:
            if path in self._record.made_dirs:
                self._record.made_dirs.remove(path)
            if in_parent and path not in self._record.deleted_dirs:
                self._record.deleted_dirs.append(path)
            self._save()

    def rebase(self, parent: str) -> None:
        """Start the draft over from revision `parent` (only while it changes nothing)."""
        with self._lock:
            if self._files or self._record != self._record.started_over(self._record.parent):
                raise DraftError("the draft has changes: it can only start from another revision while empty")
            self._record = self._record.started_over(parent)
            self._save()

    def set_meta(self, logical_key: str, meta: Any) -> None:
        """`setfattr -n user.quilt.meta`: the entry's whole `meta` object."""
        with self._lock:
            if logical_key in self._files or logical_key in self._record.renamed:
                self._record.file_meta[logical_key] = meta
            else:
                self._record.entry_meta[logical_key] = meta
            self._save()

    def set_user_meta(self, user_meta: Any) -> None:
        with self._lock:
            self._record.user_meta = user_meta
            self._save()

    # -- committing ----------------------------------------------------------------------------------------
    def changes(self) -> Changes:
        """What a commit publishes: staged bytes, deletions, renames, meta."""
        with self._lock:
            record = self._record
            files = {key: NewFile(self.staging.data_path(staged), record.file_meta.get(key, KEEP),
                                  self._streamed(staged), functools.partial(self.staging.note_upload, staged))
                     for key, staged in self._files.items()}
            renamed = {new: source for new, source in record.renamed.items()}
            entry_meta = dict(record.entry_meta)
            for new, source in renamed.items():
                if new in record.file_meta:
                    entry_meta[new] = record.file_meta[new]
            # A parent key written again (staged bytes, or another row moved onto it) is replaced, not deleted.
            deleted = set(record.deleted) - files.keys() - renamed.keys()
            changes = Changes(files=files, deleted=deleted, renamed=renamed, entry_meta=entry_meta,
                              user_meta=record.user_meta, deleted_dirs=set(record.deleted_dirs))
        vanished = sorted(key for key, new in files.items() if not os.path.exists(new.path))
        if vanished:
            raise DraftError(f"{vanished[0]}: its staged bytes are gone from {self.staging.directory} "
                             f"({len(vanished)} file(s)): remove it from the draft or write it again")
        return changes

    def _streamed(self, staged: StagedFile) -> Callable[[str, int], PartUpload | None] | None:
        """`NewFile.streamed` for `staged`: its stream's upload, taken by the commit that uploads it."""
        streams = self.streams
        if streams is None:
            return None
        data_path = self.staging.data_path(staged)
        return lambda key, part_size: streams.take(staged, data_path, key, part_size=part_size)

    def files_open(self) -> list[str]:
        """Logical keys of files a writer has open (or had open when a crash came): not complete yet."""
        with self._lock:
            return sorted(key for key, staged in self._files.items() if staged.state == OPEN)

    def committed(self, top_hash: str) -> None:
        """The draft became revision `top_hash`: it changes nothing any more, and that revision is its parent."""
        with self._lock:
            files = list(self._files.values())
            self._files.clear()
            self._record = self._record.started_over(top_hash)
            self._save()
        for staged in files:  # streams the commit did not take (files found in place already): dropped
            self._forget(staged)

    def summary(self) -> dict[str, Any]:
        """For `status`: the package, the parent and the size of the change."""
        with self._lock:
            staged_bytes = sum(_size(self.staging.data_path(staged)) for staged in self._files.values())
            return {"package": self.package, "parent": self.parent, "files_written": len(self._files),
                    "deleted": len(self._record.deleted), "renamed": len(self._record.renamed),
                    "bytes_staged": staged_bytes}

    def close(self) -> None:
        """Unmounting (or discarding): staged bytes stay, streams go (a commit after a remount sends files
        whole)."""
        if self.streams is not None:
            self.streams.close()
        self.staging.close()

    def discard(self) -> None:
        """`rm -r` of the draft: its staged bytes and record are gone."""
        self.close()
        shutil.rmtree(self.directory)


def _size(path: str) -> int:
    """The size of a staged file; 0 if its bytes were removed behind the daemon's back."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def commit_draft(draft: Draft, registry: Registry, *, message: str | None, user_meta: Any = KEEP,
                 workflow: Any = ..., force: bool = False, dedupe: bool = False,
                 progress: ProgressCallback | None = None) -> Committed:
    """Publish `draft` as a new revision of its package (`user_meta`: replaces the header's, as `--meta`).
    Then it is empty of changes and the new revision is its parent; after any failure it is as it was, and
    committing again finishes the work (files that already landed are not sent again)."""
    still_open = draft.files_open()
    if still_open:
        raise DraftError(f"{len(still_open)} file(s) of the draft are open for writing (e.g. {still_open[0]}): "
                         "close them first")
    changes = draft.changes()
    if user_meta is not KEEP:
        changes.user_meta = user_meta
    done = commit_revision(registry, draft.package, draft.parent, changes, message=message, workflow=workflow,
                           force=force, dedupe=dedupe, progress=progress)
    draft.committed(done.top_hash)
    return done
