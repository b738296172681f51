"""Packed training views: the descriptors of every video of a split as contiguous zarr arrays inside the store.

Layout::

    <store>/packed/<split>/zarr.json   attrs: fingerprint (of the index entries packed), video_ids, arrays
        offsets (V+1,) i8              video i holds rows offsets[i]:offsets[i+1]
        t (R,) f4 · image (R,256) f2 · audio (R,256) f2 · fused (R,512) f2 · r2p1d ... (R = total steps)

A view is built once from the per-video groups (:func:`open_packed` builds or extends it on first use) and rebuilt
when the index says the split changed (a new, failed-then-stored or refreshed video changes the fingerprint).
A rebuild is written beside the old view and renamed over it; an array added to a current view becomes visible only
when its name is recorded in ``arrays``. Readers take rows in whole blocks of chunks (:class:`BlockReader`), so a
reader's memory is its cache of blocks, whatever the split's size.
"""
from __future__ import annotations

import math
import os
import shutil
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from featurestore.index import file_lock, fingerprint
from featurestore.store import FeatureStore, StoreError, check_video, threaded_map

PACK_DIR = "packed"
PACK_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")   # read speed first: trainers stream it each epoch
CHUNK_BYTES = 4 << 20         # rows per chunk: about 4 MB of one array
BLOCK_CHUNKS = 8              # a reader takes 8 chunks (about 32 MB) at a time
PACK_BATCH = 64               # videos read ahead while packing (on a few threads)


def chunk_rows(row_bytes: int) -> int:
    return max(1, CHUNK_BYTES // max(1, row_bytes))


class PackedSplit:
    """An open packed view of one split: its videos, their row offsets, and the packed arrays."""

    def __init__(self, path: Path, entries: list[dict]):
        self.path = path
        self.group = zarr.open_group(str(path), mode="r")
        attrs = dict(self.group.attrs)
        self.video_ids: list[str] = list(attrs["video_ids"])
        self.names: list[str] = list(attrs.get("arrays", []))
        self.offsets = np.asarray(self.group["offsets"][...], np.int64)
        self.entries = entries

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    def array(self, name: str) -> zarr.Array:
        if name not in self.names:
            raise StoreError(f"packed view {self.path} has no array {name}")
        return self.group[name]

    def reader(self, name: str, cache_rows: int = 0) -> "BlockReader":
        """A block-cached reader of ``name`` holding about ``cache_rows`` rows (at least two blocks)."""
        return BlockReader(self.array(name), self.offsets, cache_rows)


class BlockReader:
    """Rows of one packed array, read a block of whole chunks at a time and kept in a small LRU cache."""

    def __init__(self, array: zarr.Array, offsets: np.ndarray, cache_rows: int = 0):
        self.array = array
        self.offsets = offsets
        self.block_rows = int(array.chunks[0]) * BLOCK_CHUNKS
        self.capacity = max(2, math.ceil(cache_rows / self.block_rows) + 2)
        self.row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()
        self.blocks_read = 0

    def _block(self, b: int) -> np.ndarray:
        block = self._blocks.get(b)
        if block is None:
            block = self.array[b * self.block_rows:(b + 1) * self.block_rows]
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


def pack_state(store: FeatureStore, split: str) -> tuple[str, list[str]]:
    """("current" | "stale" | "missing", arrays packed) of a split's view."""
    path = store.path / PACK_DIR / split
    if not (path / "zarr.json").is_file():
        return "missing", []
    attrs = zarr.open_group(str(path), mode="r").attrs
    current = attrs.get("fingerprint") == fingerprint(_split_entries(store, split))
    return ("current" if current else "stale"), list(attrs.get("arrays", []))


def open_packed(store: FeatureStore, split: str, names: tuple[str, ...],
                progress: Callable[[int, int], None] | None = None) -> PackedSplit:
    """The packed view of ``split`` holding ``names``, built, extended or rebuilt first when it is missing them or
    older than the index. Refuses a split without complete videos, or a video whose arrays are unsound."""
    entries = sorted(_split_entries(store, split), key=lambda e: e["video_id"])
    if not entries:
        raise StoreError(f"store {store.path} has no complete {split} videos")
    root = store.path / PACK_DIR
    path = root / split
    want = fingerprint(entries)
    state, have = pack_state(store, split)
    if state != "current" or not set(names) <= set(have):
        if not os.access(store.path, os.W_OK):
            what = state if state != "current" else f"missing {', '.join(sorted(set(names) - set(have)))}"
            raise StoreError(f"the packed view of {split} in {store.path} is {what} and the store is read-only here: "
                             f"run fs pack {store.path} where it can be written")
        with _pack_lock(root):
            state, have = pack_state(store, split)        # another process may have packed it meanwhile
            if state != "current":
                _build(store, entries, path, want, tuple(dict.fromkeys((*have, *names))), progress)
            elif not set(names) <= set(have):
                _extend(store, entries, path, [n for n in names if n not in have], progress)
    return PackedSplit(path, entries)


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
                                       chunks=(rows,) + row, compressors=PACK_CODEC, overwrite=True)
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


def _build(store: FeatureStore, entries: list[dict], path: Path, want: str, names: tuple[str, ...],
           progress: Callable[[int, int], None] | None) -> None:
    """Write a fresh view beside ``path`` and rename it over the old one."""
    tmp = path.parent / f".build-{path.name}-{uuid.uuid4().hex[:8]}"
    offsets = np.concatenate([[0], np.cumsum([int(e["n_steps"]) for e in entries])]).astype(np.int64)
    group = zarr.open_group(str(tmp), mode="w")
    group.create_array("offsets", data=offsets, chunks=(len(offsets),))
    _write_arrays(store, entries, group, list(names), offsets, progress)
    group.attrs.update({"fingerprint": want, "video_ids": [e["video_id"] for e in entries], "arrays": list(names)})
    old = path.parent / f".old-{path.name}-{uuid.uuid4().hex[:8]}"
    if path.exists():
        os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _extend(store: FeatureStore, entries: list[dict], path: Path, names: list[str],
            progress: Callable[[int, int], None] | None) -> None:
    """Add arrays to a current view; they count once their names are recorded."""
    group = zarr.open_group(str(path), mode="a")
    offsets = np.asarray(group["offsets"][...], np.int64)
    _write_arrays(store, entries, group, names, offsets, progress)
    group.attrs["arrays"] = list(group.attrs.get("arrays", [])) + names


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
        open_packed(store, split, names, (lambda i, n, s=split: progress(s, i, n)) if progress else None)
        done[split] = "current" if fresh else "built"
    return done
