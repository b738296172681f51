"""The store index: one small table beside the video groups, so that listing a store never opens its groups.

``<store>/index.jsonl`` holds one JSON line per published video: its attributes (less the per-video provenance,
which only ``fs verify`` and the packers need), the tag of the copy that was published (a new one per write or
refresh) and its size on disk. Lines are appended under a lock *after* the video's directory was renamed into
``videos/``, so an entry never names a video that is not complete; a later line for the same video supersedes an
earlier one; a torn last line (a crash mid-append) and a line that is not an entry are ignored. The table is
compacted (rewritten to a temporary file and renamed over the old one) when superseded lines pile up, and
:func:`rebuild` makes it anew from the groups (``fs verify --reindex``).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

INDEX_FILE = "index.jsonl"
LOCK_FILE = ".fs-index.lock"
OMITTED_ATTRS = ("provenance",)     # per video and bulky; read from the group when needed


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created when absent), waiting for other holders."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def entry_of(attrs: dict, tag: str, nbytes: int) -> dict:
    """The index entry of a published video: its attributes without the omitted ones, plus tag and bytes."""
    entry = {k: v for k, v in attrs.items() if k not in OMITTED_ATTRS}
    entry.update(tag=tag, bytes=int(nbytes))
    return entry


def directory_bytes(path: Path) -> tuple[int, int]:
    """(bytes, files) under ``path``, walked with scandir."""
    total = files = 0
    stack = [path]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
                    files += 1
    return total, files


def _is_entry(rec: object) -> bool:
    """Whether a parsed index line is an entry as :func:`entry_of` writes them: a mapping with a video id (a
    non-empty string) and a tag. Anything else is skipped by readers, so a damaged line never stops one."""
    return (isinstance(rec, dict) and isinstance(rec.get("video_id"), str) and rec["video_id"] != ""
            and "tag" in rec)


class StoreIndex:
    """Read and append the index of the store at ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / INDEX_FILE

    def exists(self) -> bool:
        return self.path.is_file()

    def _locked(self):
        return file_lock(self.root / LOCK_FILE)

    def _lines(self) -> tuple[dict[str, dict], int]:
        """(entries by video id, number of lines read)."""
        entries: dict[str, dict] = {}
        lines = 0
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return entries, 0
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                continue            # a torn line from a crash mid-append: that video is re-indexed on reconcile
            if not _is_entry(rec):
                continue            # not a line fs wrote ({}, [], a record without its video id or tag): skipped
            lines += 1
            entries[rec["video_id"]] = rec
        return entries, lines

    def entries(self) -> dict[str, dict]:
        """Every indexed video's entry, by id (last line wins)."""
        return self._lines()[0]

    def append(self, entries: Iterable[dict]) -> None:
        """Append entries (each with ``video_id``) durably; compacts the table when superseded lines pile up."""
        text = "".join(json.dumps(e, sort_keys=True, default=str) + "\n" for e in entries)
        if not text:
            return
        with self._locked():
            with open(self.path, "ab") as f:
                before = f.tell()
                if before > 0:
                    with open(self.path, "rb") as r:
                        r.seek(-1, os.SEEK_END)
                        if r.read(1) != b"\n":
                            f.write(b"\n")      # end a torn line so that it stays one unreadable line
                f.write(text.encode())
                f.flush()
                os.fsync(f.fileno())
                after = f.tell()
            # count superseded lines only when the table crosses a power-of-two size: appends stay O(1) amortised
            if after >= 1 << 20 and before.bit_length() != after.bit_length():
                entries_now, lines = self._lines()
                if lines > 2 * len(entries_now) + 1000:
                    self._write(entries_now.values())

    def replace_all(self, entries: Iterable[dict]) -> None:
        """Write the whole table anew (crash-safe: a temporary file renamed over the old one)."""
        with self._locked():
            self._write(entries)

    def _write(self, entries: Iterable[dict]) -> None:
        tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            for e in sorted(entries, key=lambda e: e["video_id"]):
                f.write(json.dumps(e, sort_keys=True, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def fingerprint(entries: Iterable[dict]) -> str:
    """A digest of which copies of which videos an index lists: it changes with every publish or refresh."""
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e["video_id"]):
        h.update(f"{e['video_id']}\0{e.get('tag', '')}\n".encode())
    return h.hexdigest()[:16]
