"""Packed training views: the descriptors of every video of a split as contiguous zarr arrays inside the store.

Layout::

    <store>/packed/<split>.json        the pointer: {"version": "<split>-<id>"}, replaced atomically by each build
    <store>/packed/<split>-<id>/       one version of the view; zarr.json attrs: fingerprint (of the index entries
                                       packed), video_ids, arrays
        .readers.lock                  every open reader holds a shared flock on it
        offsets (V+1,) i8              video i holds rows offsets[i]:offsets[i+1]
        t (R,) f4 · image (R,256) f2 · audio (R,256) f2 · fused (R,512) f2 · r2p1d ... (R = total steps)
                                       dimensions: offsets (offset), the others (row, ...) as in the groups

A view is built once from the per-video groups (:func:`open_packed` builds or extends it on first use) and rebuilt
when the index says the split changed (a new, failed-then-stored or refreshed video changes the fingerprint).
A rebuild writes a new version directory, fsyncs it, and swaps the pointer; an old version is removed only when no
reader holds its lock (at the next build or ``fs pack``), so a reader keeps reading the version it opened while the
view is rebuilt. An array added to a current view becomes visible only when its name is recorded in ``arrays``.
Readers take rows in whole blocks of chunks (:class:`BlockReader`), so a reader's memory is its cache of blocks,
whatever the split's size; every array is checked complete on disk when first used, and a damaged chunk is a one-line
StoreError. Views of older stores (``packed/<split>/`` without pointer) are rebuilt on first use (read where the
store is read-only).
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import uuid
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from featurestore.constants import OFFSET_DIM, ROW_DIM, dimension_names
from featurestore.index import file_lock, fingerprint
from featurestore.store import (FeatureStore, StoreError, array_options, check_video, chunk_problems, decode_problem,
                                fsync_path, fsync_tree, threaded_map)

PACK_DIR = "packed"
PACK_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")   # read speed first: trainers stream it each epoch
CHUNK_BYTES = 4 << 20         # rows per chunk: about 4 MB of one array
BLOCK_CHUNKS = 8              # a reader takes 8 chunks (about 32 MB) at a time
PACK_BATCH = 64               # videos read ahead while packing (on a few threads)
READERS_LOCK = ".readers.lock"


def chunk_rows(row_bytes: int) -> int:
    return max(1, CHUNK_BYTES // max(1, row_bytes))


class PackedSplit:
    """An open packed view of one split: its videos, their row offsets, and the packed arrays. It holds a shared lock
    on its version (``lock_fd``, released when the object is closed or collected), so a rebuild of the view never
    removes or changes what it reads."""

    def __init__(self, path: Path, entries: list[dict], lock_fd: int | None = None, split: str | None = None):
        self.path = Path(path)
        self.split = split or self.path.name
        if lock_fd is not None:
            self._finalizer = weakref.finalize(self, os.close, lock_fd)
        self._checked: set[str] = set()
        self.group = zarr.open_group(str(path), mode="r")
        attrs = dict(self.group.attrs)
        self.video_ids: list[str] = list(attrs["video_ids"])
        self.names: list[str] = list(attrs.get("arrays", []))
        self.offsets = np.asarray(self.read("offsets", 0, None), np.int64)
        self.entries = entries
        if [e["video_id"] for e in entries] != self.video_ids:
            raise StoreError(f"packed view of {self.split} in {self.path.parent.parent} does not list the split's "
                             f"videos; run fs pack {self.path.parent.parent}")

    def close(self) -> None:
        """Release the view (its version may then be removed by the next build)."""
        if hasattr(self, "_finalizer"):
            self._finalizer()

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    def _where(self, name: str) -> str:
        return f"packed view of {self.split} in {self.path.parent.parent}: array {name}"

    def _damaged(self, name: str, what: str) -> StoreError:
        store = self.path.parent.parent
        return StoreError(f"{self._where(name)} {what} (remove {store / PACK_DIR} and run fs pack {store})")

    def array(self, name: str) -> zarr.Array:
        """Packed array ``name``, checked complete on disk (every chunk present and not empty) on first use."""
        if name not in self.names and name != "offsets":
            raise StoreError(f"packed view {self.path} has no array {name}")
        try:
            arr = self.group[name]
        except Exception as e:                  # noqa: BLE001 - a damaged zarr.json of the array
            raise self._damaged(name, f"has unreadable metadata ({type(e).__name__})") from None
        if name not in self._checked:
            bad = chunk_problems(arr, self.path / name)
            if bad:
                raise self._damaged(name, bad[0])
            self._checked.add(name)
        return arr

    def read(self, name: str, start: int, stop: int | None) -> np.ndarray:
        """Rows ``start:stop`` of packed array ``name``; a chunk that cannot be decoded is a one-line StoreError."""
        arr = self.array(name)
        try:
            return arr[start:stop]
        except Exception as e:                  # noqa: BLE001 - codec errors of damaged chunks
            rows = (start, arr.shape[0] if stop is None else min(stop, arr.shape[0]))
            raise self._damaged(name, decode_problem(arr, e, rows)) from None

    def reader(self, name: str, cache_rows: int = 0) -> "BlockReader":
        """A block-cached reader of ``name`` holding about ``cache_rows`` rows (at least two blocks)."""
        return BlockReader(self.array(name), self.offsets, cache_rows,
                           read=lambda start, stop: self.read(name, start, stop))


class BlockReader:
    """Rows of one packed array, read a block of whole chunks at a time and kept in a small LRU cache."""

    def __init__(self, array: zarr.Array, offsets: np.ndarray, cache_rows: int = 0,
                 read: Callable[[int, int], np.ndarray] | None = None):
        self.array = array
        self.offsets = offsets
        self._read = read or (lambda start, stop: array[start:stop])
        self.block_rows = int(array.chunks[0]) * BLOCK_CHUNKS
        self.capacity = max(2, math.ceil(cache_rows / self.block_rows) + 2)
        self.row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()
        self.blocks_read = 0

    def _block(self, b: int) -> np.ndarray:
        block = self._blocks.get(b)
        if block is None:
            block = self._read(b * self.block_rows, (b + 1) * self.block_rows)
            self.blocks_read += 1
            self._blocks[b] = block
            while len(self._blocks) > self.capacity:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(b)
        return block

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (a copy only when they straddle blocks)."""
        b0, b1 = start // self.block_rows, max(start, stop - 1) // self.block_rows
        if b0 == b1:
            base = b0 * self.block_rows
            return self._block(b0)[start - base:stop - base]
        return np.concatenate([self._block(b)[max(start, b * self.block_rows) - b * self.block_rows:
                                              min(stop, (b + 1) * self.block_rows) - b * self.block_rows]
                               for b in range(b0, b1 + 1)])

    def video(self, i: int) -> np.ndarray:
        return self.rows(int(self.offsets[i]), int(self.offsets[i + 1]))

    @property
    def cache_bytes(self) -> int:
        return self.capacity * self.block_rows * self.row_bytes


def _split_entries(store: FeatureStore, split: str) -> list[dict]:
    return [e for e in store.entries().values() if e.get("split") == split]


def _pack_lock(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    return file_lock(root / ".lock")


def _pointer(root: Path, split: str) -> Path:
    return root / f"{split}.json"


def _version(root: Path, split: str) -> str | None:
    """The version directory the split's pointer names (None when there is none, or it is unreadable)."""
    try:
        version = json.loads(_pointer(root, split).read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, str) and _is_version(split, version) else None


def _is_version(split: str, name: str) -> bool:
    return re.fullmatch(re.escape(split) + r"-[0-9a-f]{12}", name) is not None


def _view_path(store: FeatureStore, split: str) -> tuple[Path | None, bool]:
    """(the directory of the split's view, whether it is of the older layout without pointer)."""
    root = store.path / PACK_DIR
    version = _version(root, split)
    if version is not None:
        return root / version, False
    legacy = root / split
    return (legacy, True) if (legacy / "zarr.json").is_file() else (None, False)


def _view_attrs(path: Path) -> dict | None:
    """The attributes of the view at ``path``, None when its metadata cannot be read (a damaged zarr.json)."""
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:                           # noqa: BLE001 - JSON or zarr metadata errors of a damaged file
        return None


def pack_state(store: FeatureStore, split: str) -> tuple[str, list[str]]:
    """("current" | "stale" | "missing", arrays packed) of a split's view (a view of the older layout, or one whose
    metadata cannot be read, is "stale": it is rebuilt where the store can be written)."""
    path, legacy = _view_path(store, split)
    if path is None or not (path / "zarr.json").is_file():
        return "missing", []
    attrs = _view_attrs(path)
    if attrs is None:
        return "stale", []
    current = attrs.get("fingerprint") == fingerprint(_split_entries(store, split)) and not legacy
    return ("current" if current else "stale"), list(attrs.get("arrays", []))


def _acquire(root: Path, split: str) -> tuple[Path, int] | None:
    """(the current version's directory, an fd holding a shared lock on it), or None when there is no version. A
    version being removed (its lock file gone or replaced once the lock is held) is skipped for the new pointer."""
    for _ in range(100):
        version = _version(root, split)
        if version is None:
            return None
        lock = root / version / READERS_LOCK
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            continue
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            same = os.path.samestat(os.stat(lock), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if same:
            return root / version, fd
        os.close(fd)
    return None


def _remove_old(root: Path, split: str) -> None:
    """Remove the split's versions other than the current one that no reader holds, the view of the older layout,
    and leftovers of interrupted builds (called with the pack lock held)."""
    current = _version(root, split)
    for name in sorted(os.listdir(root)) if root.is_dir() else []:
        p = root / name
        if name.startswith(f".build-{split}-") and p.is_file():
            p.unlink(missing_ok=True)           # a pointer file of an interrupted build
            continue
        if name == current or not p.is_dir():
            continue
        if _is_version(split, name):
            try:
                fd = os.open(p / READERS_LOCK, os.O_RDONLY)
            except FileNotFoundError:
                fd = None                       # a build cut before its lock file: nobody reads it
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)                # a reader holds it: removed by a later build or fs pack
                    continue
            trash = root / f".trash-{name}-{uuid.uuid4().hex[:8]}"
            os.rename(p, trash)                 # while locked: a reader arriving now finds its lock file gone
            if fd is not None:
                os.close(fd)
            shutil.rmtree(trash, ignore_errors=True)
        elif name == split and current is not None:
            trash = root / f".trash-{name}-{uuid.uuid4().hex[:8]}"
            os.rename(p, trash)
            shutil.rmtree(trash, ignore_errors=True)
        elif name.startswith((f".build-{split}-", f".old-{split}-", f".trash-{split}-")):
            shutil.rmtree(p, ignore_errors=True)


def open_packed(store: FeatureStore, split: str, names: tuple[str, ...],
                progress: Callable[[int, int], None] | None = None) -> PackedSplit:
    """The packed view of ``split`` holding ``names``, built, extended or rebuilt first when it is missing them or
    older than the index, and held (a shared lock on its version) until the returned view is closed or collected.
    Refuses a split without complete videos, or a video whose arrays are unsound."""
    root = store.path / PACK_DIR
    for _ in range(5):
        entries = sorted(_split_entries(store, split), key=lambda e: e["video_id"])
        if not entries:
            raise StoreError(f"store {store.path} has no complete {split} videos")
        want = fingerprint(entries)
        state, have = pack_state(store, split)
        if state != "current" or not set(names) <= set(have):
            if not os.access(store.path, os.W_OK):
                path, legacy = _view_path(store, split)
                if legacy and state == "stale" and set(names) <= set(have) and \
                        zarr.open_group(str(path), mode="r").attrs.get("fingerprint") == want:
                    return PackedSplit(path, entries, split=split)      # an older store's current view, read-only
                what = state if state != "current" else f"missing {', '.join(sorted(set(names) - set(have)))}"
                raise StoreError(f"the packed view of {split} in {store.path} is {what} and the store is read-only "
                                 f"here: run fs pack {store.path} where it can be written")
            with _pack_lock(root):
                state, have = pack_state(store, split)        # another process may have packed it meanwhile
                if state != "current":
                    _build(store, entries, root, split, want, tuple(dict.fromkeys((*have, *names))), progress)
                elif not set(names) <= set(have):
                    _extend(store, entries, root / str(_version(root, split)),
                            [n for n in names if n not in have], progress)
        held = _acquire(root, split)
        if held is None:
            continue
        path, fd = held
        attrs = zarr.open_group(str(path), mode="r").attrs
        if attrs.get("fingerprint") == want and set(names) <= set(attrs.get("arrays", [])):
            return PackedSplit(path, entries, fd, split)
        os.close(fd)        # rebuilt meanwhile for another state of the index (a concurrent fs extract): again
    raise StoreError(f"the packed view of {split} in {store.path} kept changing while opening it (is fs extract or "
                     f"fs pack running?); try again")


def _read_videos(store: FeatureStore, entries: list[dict], names: list[str],
                 progress: Callable[[int, int], None] | None) -> Iterator[dict[str, np.ndarray]]:
    """Each video's arrays ``names``, in order, read a batch ahead on a few threads and checked."""
    root_attrs = store.attrs

    def read(entry: dict) -> dict[str, np.ndarray]:
        video = store.read_video(entry["video_id"], names)
        problems = check_video(video, root_attrs, names)
        if problems:
            raise StoreError(f"{problems[0]} (fs verify {store.path} lists every problem)")
        return video.arrays

    return threaded_map(read, entries, progress, ahead=PACK_BATCH)


def _write_arrays(store: FeatureStore, entries: list[dict], group: zarr.Group, names: list[str], offsets: np.ndarray,
                  progress: Callable[[int, int], None] | None) -> None:
    """Stream every video's ``names`` into new arrays of ``group``, whole chunks at a time."""
    first = store.read_video(entries[0]["video_id"], names).arrays
    arrays, buffers, written = {}, {}, {}
    for n in names:
        row = first[n].shape[1:]
        rows = chunk_rows(int(np.prod(row, dtype=np.int64)) * first[n].dtype.itemsize)
        arrays[n] = group.create_array(n, shape=(int(offsets[-1]),) + row, dtype=first[n].dtype,
                                       chunks=(rows,) + row, compressors=PACK_CODEC, overwrite=True,
                                       dimension_names=dimension_names(n, 1 + len(row), ROW_DIM),
                                       **array_options(first[n].dtype))
        buffers[n], written[n] = [], 0
    for i, video in enumerate(_read_videos(store, entries, names, progress)):
        for n in names:
            buffers[n].append(video[n])
            pending = int(offsets[i + 1]) - written[n]
            step = arrays[n].chunks[0] * BLOCK_CHUNKS
            if pending >= step or i == len(entries) - 1:
                data = np.concatenate(buffers[n])
                cut = len(data) if i == len(entries) - 1 else (len(data) // arrays[n].chunks[0]) * arrays[n].chunks[0]
                arrays[n][written[n]:written[n] + cut] = data[:cut]
                written[n] += cut
                buffers[n] = [data[cut:]] if cut < len(data) else []


def _build(store: FeatureStore, entries: list[dict], root: Path, split: str, want: str, names: tuple[str, ...],
           progress: Callable[[int, int], None] | None) -> None:
    """Write a new version of the view, fsync it, point the split at it, and remove the versions no reader holds."""
    path = root / f"{split}-{uuid.uuid4().hex[:12]}"
    offsets = np.concatenate([[0], np.cumsum([int(e["n_steps"]) for e in entries])]).astype(np.int64)
    group = zarr.open_group(str(path), mode="w")
    (path / READERS_LOCK).touch()
    group.create_array("offsets", data=offsets, chunks=(len(offsets),), dimension_names=(OFFSET_DIM,),
                       **array_options(offsets.dtype))
    _write_arrays(store, entries, group, list(names), offsets, progress)
    group.attrs.update({"fingerprint": want, "video_ids": [e["video_id"] for e in entries], "arrays": list(names)})
    fsync_tree(path)                    # every chunk on disk before the pointer names the version
    tmp = root / f".build-{split}-{uuid.uuid4().hex[:8]}.json"
    with open(tmp, "w") as f:
        json.dump({"version": path.name, "fingerprint": want}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, _pointer(root, split))
    fsync_path(root, directory=True)
    _remove_old(root, split)


def _extend(store: FeatureStore, entries: list[dict], path: Path, names: list[str],
            progress: Callable[[int, int], None] | None) -> None:
    """Add arrays to a current view; they count once their names are recorded (after their chunks are on disk)."""
    group = zarr.open_group(str(path), mode="a")
    offsets = np.asarray(group["offsets"][...], np.int64)
    _write_arrays(store, entries, group, names, offsets, progress)
    for n in names:
        fsync_tree(path / n)
    group.attrs["arrays"] = list(group.attrs.get("arrays", [])) + names
    fsync_path(path / "zarr.json")


def packed_problems(store: FeatureStore) -> list[str]:
    """Chunks missing or empty on disk in the current version of every split's packed view (``fs verify``)."""
    root = store.path / PACK_DIR
    problems = []
    for pointer in sorted(root.glob("[!.]*.json")) if root.is_dir() else []:
        split = pointer.stem
        version = _version(root, split)
        if version is None or not (root / version / "zarr.json").is_file():
            problems.append(f"packed view of {split}: its pointer {pointer.name} names no view (fs pack rebuilds it)")
            continue
        try:
            group = zarr.open_group(str(root / version), mode="r")
        except Exception as e:                  # noqa: BLE001 - a damaged zarr.json of the view
            problems.append(f"packed view of {split}: its metadata cannot be read ({type(e).__name__}) "
                            f"(fs pack {store.path} rebuilds it)")
            continue
        for name in ["offsets", *group.attrs.get("arrays", [])]:
            try:
                bad = chunk_problems(group[name], root / version / name)
            except Exception as e:              # noqa: BLE001 - a damaged zarr.json of the array
                bad = [f"has unreadable metadata ({type(e).__name__})"]
            problems += [f"packed view of {split}: array {name} {b} (remove {root} and run fs pack {store.path})"
                         for b in bad]
    return problems


def pack_store(store: FeatureStore, names: tuple[str, ...], splits: tuple[str, ...] = ("train", "test"),
               progress: Callable[[str, int, int], None] | None = None) -> dict[str, str]:
    """Bring the views of ``splits`` up to date for ``names`` (``fs pack``, and after ``fs extract`` / ``fs refresh``);
    returns what was done per split: "current", "built" or "no videos"."""
    done = {}
    for split in splits:
        if not _split_entries(store, split):
            done[split] = "no videos"
            continue
        state, have = pack_state(store, split)
        fresh = state == "current" and set(names) <= set(have)
        open_packed(store, split, names, (lambda i, n, s=split: progress(s, i, n)) if progress else None).close()
        if os.access(store.path, os.W_OK):
            with _pack_lock(store.path / PACK_DIR):
                _remove_old(store.path / PACK_DIR, split)     # versions readers held at the last build, if released
        done[split] = "current" if fresh else "built"
    return done
