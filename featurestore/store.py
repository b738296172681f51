"""The feature store: a zarr v3 hierarchy with one group per video, visible to readers only once complete.

Layout::

    <store>/zarr.json                 root attrs: schema_version, fs_version, dataset, classes, descriptors, provenance
    <store>/videos/<video_id>/        attrs: label, split, fps, duration, has_audio, n_steps, provenance, complete
        t (N,) f4 · image (N,256) f2 · audio (N,256) f2 · fused (N,512) f2 · r2p1d (N,512) f2 · r2p1d_logits (N,C) f2
        frames (N,112,112,3) u1 · mel (N,40,101) f2 [--keep-inputs] · clips (N,16,112,112,3) u1 [--keep-clips]
        image_map (N,4,4,512) f2 [--spatial-map]: AVGN's global feature map e^G (the image trunk's layer4)
                                      every array names its dimensions (zarr ``dimension_names``: step, ...;
                                      featurestore.constants.dimension_names), so xarray opens the group
    <store>/partial/<video_id>-<tag>/ groups being written (never read)
    <store>/failures.csv              video_id, path, stage, error
    <store>/index.jsonl               one line per published video (featurestore.index): what listings read
    <store>/packed/<split>.json       the packed training views (featurestore.packed), rebuilt when the index changes:
    <store>/packed/<split>-<id>/      a pointer to the current version; versions still held by readers are kept

A video is written under ``partial/``, its ``complete`` attribute set last, and the finished directory renamed
into ``videos/`` in one atomic step, so a crash never leaves a half-written video where readers look; its index
line is appended after the rename, so the index never lists a video that is not complete. Every file and directory
of the group is fsynced before the rename (and the parent directories after it), so a power cut cannot publish a
video with torn chunks. Every chunk of every array is written (also chunks equal to the fill value, NaN for floats),
and readers check that each chunk the array's shape implies is on disk before reading it: a missing, empty or
undecodable chunk is a one-line StoreError naming the video and the array, never zeros.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import itertools
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec

from featurestore import SCHEMA_VERSION, __version__
from featurestore.constants import DESCRIPTORS, KEPT_MAPS, SPATIAL_INPUTS, dimension_names, stored_arrays
from featurestore.index import StoreIndex, directory_bytes, entry_of

FAILURE_COLUMNS = ["video_id", "path", "stage", "error"]
COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")
ALL_CHUNKS = "fs_all_chunks"
"""Array attribute of every array fs writes since chunks equal to the fill value are written too: each chunk its
shape implies must then be on disk. Arrays without it (older stores) skipped such chunks (see :func:`may_skip`)."""


def chunk_shape(data: np.ndarray, target_bytes: int = 4 << 20) -> tuple[int, ...]:
    """Whole rows per chunk, about ``target_bytes`` each: one chunk for descriptors, a few for kept inputs."""
    row = max(1, data[0].nbytes if len(data) else 1)
    return (max(1, min(len(data), target_bytes // row)),) + data.shape[1:]


LISTED_KEYS = ("label", "split", "n_steps", "duration", "has_audio")   # what listings and fs info read of an entry


DEFAULT_STORE = "fs-store.zarr"


def default_store_path() -> Path:
    """The store a command or :func:`fs.open_store` uses when none is named: ``$FS_STORE``, else ``./fs-store.zarr``."""
    return Path(os.environ.get("FS_STORE") or DEFAULT_STORE)


class StoreError(RuntimeError):
    """The store is missing, of another schema, or was built with other settings than asked."""


def array_options(dtype: np.dtype) -> dict:
    """``create_array`` keywords of every array fs writes: every chunk is written even when it equals the fill value
    (so a chunk missing on disk is a fault, never "all fill value"), marked by :data:`ALL_CHUNKS`, and floats get a
    NaN fill value, so that a chunk lost anyway reads as values the finite check refuses, never as zeros."""
    opts: dict = {"config": {"write_empty_chunks": True}, "attributes": {ALL_CHUNKS: True}}
    if np.dtype(dtype).kind == "f":
        opts["fill_value"] = np.nan
    return opts


def chunk_problems(array: zarr.Array, directory: str | Path, skipped_ok: bool = False) -> list[str]:
    """What is wrong on disk with the chunks of ``array`` stored under ``directory``: each chunk its shape and chunk
    shape imply (keys from its chunk key encoding, ``c/i/j`` by default) that is missing or empty (0 bytes), as
    "is missing chunk c/0/0 on disk". One ``stat`` per chunk (a video's array is one chunk). ``skipped_ok``: missing
    chunks are fine (an array of an older store whose chunks equal to the fill value were never written)."""
    encode = array.metadata.chunk_key_encoding.encode_chunk_key
    base = str(directory)
    missing, empty = [], []
    for coords in itertools.product(*(range(n) for n in array.cdata_shape)):
        key = encode(coords)
        try:
            size = os.stat(os.path.join(base, key)).st_size
        except FileNotFoundError:
            missing.append(key)
            continue
        if size == 0:
            empty.append(key)
    found = [] if skipped_ok else [f"is missing chunk {k} on disk" for k in missing]
    return found + [f"chunk {k} is empty (0 bytes) on disk" for k in empty]


def may_skip(name: str, array: zarr.Array, attrs: dict) -> bool:
    """Whether array ``name`` of a video with group ``attrs`` may lack chunks on disk: only an array written before
    :data:`ALL_CHUNKS` (zarr skipped chunks equal to the fill value, 0) that can be all zeros: the audio and mel of
    a video without audio, the times ``t`` of a one-step video."""
    if array.attrs.get(ALL_CHUNKS):
        return False
    return (name in ("audio", "mel") and not attrs.get("has_audio", True)) or (name == "t" and array.shape[0] <= 1)


def decode_problem(array: zarr.Array, error: Exception, rows: tuple[int, int] | None = None) -> str:
    """"chunk c/0/0 cannot be decoded (...)" for an array whose read failed: the chunks that fail when read one by one
    (only on this error path), else the array as a whole. ``rows`` (start, stop): only the chunks holding the rows
    whose read failed are tried (a packed array may have thousands of chunks)."""
    encode = array.metadata.chunk_key_encoding.encode_chunk_key
    grid = [range(n) for n in array.cdata_shape]
    if rows is not None and grid:
        step = int(array.chunks[0])
        grid[0] = range(max(0, rows[0] // step), min(array.cdata_shape[0], -(-rows[1] // step)))
    bad = []
    for coords in itertools.product(*grid):
        try:
            array.get_block_selection(coords)
        except Exception:                       # noqa: BLE001 - any codec error marks the chunk as damaged
            bad.append(encode(coords))
    reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
    if not bad:
        return f"cannot be read ({reason})"
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return f"chunk{'s' if len(bad) > 1 else ''} {', '.join(bad[:3])}{more} cannot be decoded ({reason})"


def fsync_path(path: str | Path, directory: bool = False) -> None:
    """fsync one file or directory."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under ``root`` (``root`` included), so that what was written there is on disk
    before a rename publishes it. The fsyncs run on a few threads at once (they then share the file system's journal
    commits: several times faster than one after another); all are done when this returns."""
    paths, stack = [], [str(root)]
    while stack:
        d = stack.pop()
        paths.append((d, True))
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    paths.append((e.path, False))
    with ThreadPoolExecutor(min(8, len(paths))) as pool:
        list(pool.map(lambda pd: fsync_path(*pd), paths))


@dataclass
class VideoFeatures:
    """One video's stored arrays and attributes, as every trainer and selector sees it."""

    video_id: str
    attrs: dict
    arrays: dict[str, np.ndarray]

    @property
    def label(self) -> str:
        return self.attrs["label"]

    @property
    def split(self) -> str:
        return self.attrs["split"]

    @property
    def n_steps(self) -> int:
        return int(self.attrs["n_steps"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


class FeatureStore:
    """Read and write a feature store at a local ``path``.

    ``mode="r"`` requires an existing store; ``mode="a"`` creates it when absent.
    """

    def __init__(self, path: str | Path, mode: str = "r"):
        self.path = Path(path)
        if mode == "r":
            if not (self.path / "zarr.json").is_file():
                raise StoreError(f"no feature store at {self.path} (run `fs extract` first)")
            self.root = zarr.open_group(str(self.path), mode="r")
            self._check_schema()
        elif mode == "a":
            self.root = zarr.open_group(str(self.path), mode="a")
            for sub in ("videos", "partial"):
                if sub not in self.root:
                    self.root.create_group(sub)
        else:
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        self.mode = mode
        self.index = StoreIndex(self.path)
        self._entries: tuple[tuple, dict[str, dict]] | None = None

    # --- root metadata -------------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        return dict(self.root.attrs)

    def has_descriptor(self, name: str) -> bool:
        """Whether the store's videos hold descriptor ``name`` (image, audio, fused, r2p1d)."""
        return name in self.attrs.get("descriptors", [])

    def _check_schema(self) -> None:
        found = self.root.attrs.get("schema_version")
        if found is not None and found != SCHEMA_VERSION:
            raise StoreError(f"store {self.path} has schema version {found}, this fs reads version {SCHEMA_VERSION}")

    def initialise(self, dataset: str, classes: list[str], descriptors: Iterable[str], provenance: dict,
                   inputs: Iterable[str] = (), signals: Iterable[str] = ()) -> tuple[str, ...]:
        """Record what the store holds on first use; on later runs refuse settings that differ from the recorded ones.

        Returns the signal arrays the store's videos hold: ``signals`` for a new store, the recorded ones otherwise
        (none for a store built before them, so new videos match the old ones)."""
        self._check_schema()
        want = {"schema_version": SCHEMA_VERSION, "dataset": dataset, "classes": list(classes),
                "descriptors": list(descriptors), "inputs": list(inputs), "signals": list(signals),
                "provenance": provenance}
        have = self.attrs
        if "schema_version" not in have:
            self.root.attrs.update({**want, "fs_version": __version__})
            return tuple(signals)
        for key in ("dataset", "classes", "descriptors", "inputs"):
            if have.get(key, []) != want[key]:
                raise StoreError(f"store {self.path} was built with {key}={_short(have.get(key))}, this run asks "
                                 f"{_short(want[key])}: use another --store")
        for name, rec in provenance.get("models", {}).items():
            old = have.get("provenance", {}).get("models", {}).get(name)
            if old and old.get("sha256") != rec.get("sha256"):
                raise StoreError(f"store {self.path} holds {name} features from weights {old.get('source')} "
                                 f"(sha256 {old.get('sha256')}); this run loads {rec.get('source')} "
                                 f"(sha256 {rec.get('sha256')}): use another --store")
        old_compute, compute = have.get("provenance", {}).get("compute"), provenance.get("compute")
        if old_compute and compute and old_compute != compute:     # bf16 GPU and float32 CPU features do not mix
            raise StoreError(f"store {self.path} holds features computed on {old_compute.get('device')} in "
                             f"{old_compute.get('precision')}; this run computes on {compute.get('device')} in "
                             f"{compute.get('precision')}: extract with the store's setting or use another --store")
        return tuple(have.get("signals", []))

    # --- videos ----------------------------------------------------------------------------------------------
    def _video_dirs(self, sub: str = "videos") -> list[Path]:
        d = self.path / sub
        return sorted(p for p in d.iterdir() if (p / "zarr.json").is_file()) if d.is_dir() else []

    def _group_entry(self, p: Path) -> dict | None:
        """The index entry of the group at ``p`` read from the group itself, or None when it is not complete."""
        if not (p / "zarr.json").is_file():
            return None
        attrs = dict(zarr.open_group(str(p), mode="r").attrs)
        if attrs.get("complete") is not True:
            return None
        tag = attrs.get("tag") or f"mtime-{(p / 'zarr.json').stat().st_mtime_ns}"
        return entry_of({**attrs, "video_id": p.name}, tag, directory_bytes(p)[0])

    def entries(self) -> dict[str, dict]:
        """Index entries of every complete video, by id: the index, checked against the directories under
        ``videos/`` (one listing). A complete group the index lacks (a crash between publishing and indexing, or a
        store older than the index) is read from its group and, in append mode, indexed."""
        try:
            st = self.index.path.stat()
            key = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = None
        if self._entries is not None and self._entries[0] == key:
            return self._entries[1]
        indexed = self.index.entries() if key else {}
        vdir = self.path / "videos"
        names = set(_subdirs(vdir))
        entries = {v: e for v, e in indexed.items() if v in names}
        # a well-formed line that lacks what listings read (a damaged or hand-edited index) is read from the group
        partial = {v for v, e in entries.items() if not all(k in e for k in LISTED_KEYS)}
        missing = sorted((names - set(indexed)) | partial)
        found = [e for e in threaded_map(lambda v: self._group_entry(vdir / v), missing) if e is not None
                 and (e["video_id"] not in partial or all(k in e for k in LISTED_KEYS))]
        entries.update((e["video_id"], e) for e in found)
        if found and self.mode == "a":
            self.index.append(found)
            st = self.index.path.stat()
            key = (st.st_size, st.st_mtime_ns)
        entries = dict(sorted(entries.items()))
        self._entries = (key, entries)
        return entries

    def video_ids(self, split: str | None = None) -> list[str]:
        """Ids of every complete video (of ``split`` when given), sorted; read from the index."""
        return [v for v, e in self.entries().items() if split is None or e.get("split") == split]

    def reindex(self, progress=None) -> int:
        """Rebuild the index from the groups under ``videos/`` (``fs verify --reindex``); returns the videos indexed."""
        vdir = self.path / "videos"
        names = sorted(_subdirs(vdir))
        found = [e for e in threaded_map(lambda v: self._group_entry(vdir / v), names, progress) if e is not None]
        self.index.replace_all(found)
        self._entries = None
        return len(found)

    def partial_ids(self) -> list[str]:
        """Groups left under ``partial/`` by an interrupted writer."""
        return [p.name for p in self._video_dirs("partial")]

    def has_video(self, video_id: str) -> bool:
        p = self.path / "videos" / video_id
        return (p / "zarr.json").is_file() and zarr.open_group(str(p), mode="r").attrs.get("complete") is True

    def write_video(self, video_id: str, arrays: dict[str, np.ndarray], attrs: dict) -> bool:
        """Write one video's arrays and attributes, then publish it atomically.

        Returns False (and writes nothing visible) when a complete copy already exists, e.g. from a concurrent run.
        """
        if self.mode != "a":
            raise StoreError("store opened read-only")
        tag = self._write_partial(video_id, arrays, attrs)
        src, dst = self.path / "partial" / tag, self.path / "videos" / video_id
        if dst.exists() and not self.has_video(video_id):
            shutil.rmtree(dst)           # an incomplete leftover under the final name (older layouts)
        nbytes = directory_bytes(src)[0]
        try:
            os.rename(src, dst)
        except OSError:
            shutil.rmtree(src, ignore_errors=True)
            return False
        self._fsync_renamed()
        self._index_published(video_id, attrs, tag, nbytes)
        return True

    def _fsync_renamed(self) -> None:
        """Make renames between ``partial/`` and ``videos/`` durable (before the index line names the video)."""
        for sub in ("videos", "partial"):
            fsync_path(self.path / sub, directory=True)

    def _index_published(self, video_id: str, attrs: dict, tag: str, nbytes: int) -> None:
        """Append the index line of a copy just renamed into ``videos/`` (never before the rename)."""
        self.index.append([entry_of({**attrs, "video_id": video_id, "complete": True}, tag, nbytes)])

    def _write_partial(self, video_id: str, arrays: dict[str, np.ndarray], attrs: dict) -> str:
        """Write a complete copy of a video under ``partial/`` (completion marker last); returns its tag."""
        tag = f"{video_id}-{uuid.uuid4().hex[:8]}"
        group = self.root["partial"].create_group(tag, attributes={**attrs, "video_id": video_id, "tag": tag,
                                                                   "complete": False})
        n = None
        for name, data in arrays.items():
            n = n if n is not None else len(data)
            if len(data) != n:
                raise ValueError(f"{video_id}: array {name} has {len(data)} rows, expected {n}")
            group.create_array(name, data=np.ascontiguousarray(data), chunks=chunk_shape(data),
                               compressors=COMPRESSOR, dimension_names=dimension_names(name, data.ndim),
                               **array_options(data.dtype))
        group.attrs["complete"] = True   # the completion marker, written after every array
        fsync_tree(self.path / "partial" / tag)   # every chunk on disk before the rename publishes it
        return tag

    def replace_video(self, video_id: str, arrays: dict[str, np.ndarray], attrs: dict) -> None:
        """Swap a complete video for a new version (``fs refresh``): the new copy is written in full under
        ``partial/``, the old one moved aside there and removed only after the new one is in place. A crash between
        the two renames leaves a complete copy under ``partial/`` that :meth:`clear_partials` puts back."""
        if not self.has_video(video_id):
            raise StoreError(f"video {video_id!r} is not a complete video of store {self.path}")
        tag = self._write_partial(video_id, arrays, attrs)
        nbytes = directory_bytes(self.path / "partial" / tag)[0]
        old = self.path / "partial" / f"{tag}-old"
        os.rename(self.path / "videos" / video_id, old)
        os.rename(self.path / "partial" / tag, self.path / "videos" / video_id)
        self._fsync_renamed()
        self._index_published(video_id, attrs, tag, nbytes)
        shutil.rmtree(old, ignore_errors=True)

    def read_video(self, video_id: str, names: Iterable[str] | None = None) -> VideoFeatures:
        """Load a complete video's arrays (all, or ``names``) as numpy. Each array is first checked complete on disk
        (every chunk present and not empty); a missing array, a missing, empty or undecodable chunk is a one-line
        StoreError naming the video and the array, and so is a group whose own zarr.json cannot be read."""
        try:
            complete = self.has_video(video_id)
        except Exception as e:                  # noqa: BLE001 - a damaged zarr.json of the group
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            raise StoreError(f"{video_id}: group unreadable ({reason}) (fs verify {self.path} lists every "
                             f"problem)") from None
        if not complete:
            raise StoreError(f"video {video_id!r} is not a complete video of store {self.path}")
        video, problems = self.load_video(video_id, names, first=True)
        if problems:
            raise StoreError(f"{problems[0]} (fs verify {self.path} lists every problem)")
        return video

    def load_video(self, video_id: str, names: Iterable[str] | None = None,
                   first: bool = False) -> tuple[VideoFeatures, list[str]]:
        """(the arrays that could be read, the problems of the others) of the video under ``videos/``: each problem
        names the video and the array ("v3: array fused is missing chunk c/0/0 on disk"). ``first``: stop at the
        first problem. ``names`` None: every array of the group."""
        gdir = self.path / "videos" / video_id
        g = zarr.open_group(str(gdir), mode="r")
        attrs = dict(g.attrs)
        if names is None:
            names = sorted(d for d in _subdirs(gdir) if (gdir / d / "zarr.json").is_file())
        arrays, problems = {}, []
        for name in names:
            found = None
            if not (gdir / name / "zarr.json").is_file():
                found = f"{video_id}: array {name} missing"
            else:
                try:
                    arr = g[name]
                except Exception as e:          # noqa: BLE001 - a damaged zarr.json of the array
                    arr, found = None, f"{video_id}: array {name} has unreadable metadata ({type(e).__name__}: {e})"
                if arr is not None:
                    bad = chunk_problems(arr, gdir / name, may_skip(name, arr, attrs))
                    if bad:
                        found = "; ".join(f"{video_id}: array {name} {b}" for b in bad)
                    else:
                        try:
                            arrays[name] = arr[...]
                        except Exception as e:  # noqa: BLE001 - codec errors (blosc, zstd, shape) of damaged chunks
                            found = f"{video_id}: array {name} {decode_problem(arr, e)}"
            if found:
                problems.append(" ".join(found.split()))
                if first:
                    break
        return VideoFeatures(video_id, attrs, arrays), problems

    def video_attrs(self, video_id: str) -> dict:
        """A complete video's attributes from the index (all but its provenance: see :meth:`read_video`)."""
        entry = self.entries().get(video_id)
        if entry is None:
            raise StoreError(f"video {video_id!r} is not a complete video of store {self.path}")
        return dict(entry)

    def group_attrs(self, video_id: str) -> dict:
        """A complete video's attributes as its group holds them, provenance included."""
        if not self.has_video(video_id):
            raise StoreError(f"video {video_id!r} is not a complete video of store {self.path}")
        return dict(zarr.open_group(str(self.path / "videos" / video_id), mode="r").attrs)

    def clear_partials(self) -> int:
        """Remove groups left half-written by an interrupted run (returns how many); a complete copy whose video is
        missing from ``videos/`` (a refresh cut between its two renames) is put back instead."""
        part = self.path / "partial"
        dirs = [p for p in part.iterdir() if p.is_dir()] if part.is_dir() else []
        for p in sorted(dirs, key=lambda p: not p.name.endswith("-old")):   # restore old copies first
            attrs = zarr.open_group(str(p), mode="r").attrs if (p / "zarr.json").is_file() else {}
            vid = attrs.get("video_id")
            target = self.path / "videos" / str(vid)
            if vid and attrs.get("complete") is True and not target.exists():
                os.rename(p, target)
                self._fsync_renamed()
                entry = self._group_entry(target)
                if entry is not None:
                    self.index.append([entry])
            else:
                shutil.rmtree(p, ignore_errors=True)
        return len(dirs)

    @contextlib.contextmanager
    def writer_lock(self, what: str):
        """Hold the store's writer lock (one ``fs extract`` / ``fs refresh`` at a time); a second writer gets a
        one-line StoreError naming the holder instead of racing it."""
        lock = self.path / ".fs-writer.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreError(f"store {self.path} is being written by {holder}; wait for it to finish or use "
                             f"another --store") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{what} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})".encode(), 0)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # --- failures --------------------------------------------------------------------------------------------
    @property
    def failures_path(self) -> Path:
        return self.path / "failures.csv"

    def failures(self) -> pd.DataFrame:
        """The failures table (one row per failed video, latest reason). A damaged table never stops a reader: an
        empty file, a torn last line (a crash or a full disk mid-append) and lines that are not rows are skipped,
        so those videos are simply tried again."""
        rows = _failure_rows(self.failures_path)
        df = pd.DataFrame(rows, columns=FAILURE_COLUMNS, dtype=str) if rows else pd.DataFrame(columns=FAILURE_COLUMNS)
        return df.drop_duplicates("video_id", keep="last").reset_index(drop=True)

    def record_failure(self, video_id: str, path: str, stage: str, error: str) -> None:
        """Append one failure row (called by the single client process, never by workers), whole and fsynced.

        A write the store refuses (full disk, quota, read-only, permissions) leaves the table as it was and raises
        a one-line :class:`StoreError`: the run stops, and the video is not recorded as failed."""
        fields = [_one_line(video_id), _one_line(path), _one_line(stage), " ".join(str(error).split())]
        line = _csv_line(fields)
        try:
            fd = os.open(self.failures_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(_store_write_message(self.failures_path, e, video_id)) from None
        try:
            size = os.fstat(fd).st_size
            if size == 0:                 # a new table, or one a full disk left empty: the header first
                line = _csv_line(FAILURE_COLUMNS) + line
            elif os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line       # end a torn line, so that it stays one unreadable line
            try:
                _write_fully(fd, line.encode())
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)        # leave no part of the row behind
                raise
        except OSError as e:
            raise StoreError(_store_write_message(self.failures_path, e, video_id)) from None
        finally:
            os.close(fd)

    def forget_failures(self, video_ids: Iterable[str]) -> None:
        """Drop the failure rows of videos that have since been stored: the table is written anew (a temporary
        file, fsynced and renamed over it), without the lines that were not rows."""
        ids = set(video_ids)
        if not ids:
            return
        rows = _failure_rows(self.failures_path)
        if not any(r[0] in ids for r in rows):
            return
        tmp = self.failures_path.with_name(f".failures.csv.tmp-{os.getpid()}")
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(_csv_line(FAILURE_COLUMNS) + "".join(_csv_line(r) for r in rows if r[0] not in ids))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.failures_path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreError(_store_write_message(self.failures_path, e)) from None

    # --- summary ---------------------------------------------------------------------------------------------
    def info(self) -> dict:
        """Counts, sizes and provenance for ``fs info``."""
        entries = self.entries()
        ids = list(entries)
        per_split: dict[str, int] = {}
        steps = 0
        seconds = 0.0
        no_audio = short = 0
        for a in entries.values():
            per_split[a["split"]] = per_split.get(a["split"], 0) + 1
            steps += int(a["n_steps"])
            seconds += float(a["duration"])
            no_audio += not a["has_audio"]
            short += bool(a.get("short", False))
        packed = directory_bytes(self.path / "packed")[0] if (self.path / "packed").is_dir() else 0
        size = sum(int(a.get("bytes", 0)) for a in entries.values()) + packed
        return {
            "path": str(self.path), "schema_version": self.attrs.get("schema_version"),
            "dataset": self.attrs.get("dataset"), "classes": len(self.attrs.get("classes", [])),
            "descriptors": self.attrs.get("descriptors", []), "inputs": self.attrs.get("inputs", []),
            "signals": self.attrs.get("signals", []), "videos": len(ids), "per_split": per_split,
            "steps": steps, "video_minutes": seconds / 60, "no_audio": no_audio, "short": short,
            "partial": len(self.partial_ids()), "failures": len(self.failures()), "bytes": size,
            "packed_bytes": packed,
            "bytes_per_video_minute": size / (seconds / 60) if seconds else float("nan"),
            "provenance": self.attrs.get("provenance", {}),
        }


def expected_arrays(root_attrs: dict) -> list[str]:
    """The arrays every complete video of a store with these root attributes must hold."""
    return stored_arrays(root_attrs.get("descriptors", []), root_attrs.get("inputs", []), root_attrs.get("signals", []))


SPATIAL_HOW = ("extract the videos again into a new store with fs extract --keep-inputs --spatial-map (image_map is "
               "written only at extraction: fs refresh recomputes it, never adds it)")


def require_arrays(store: FeatureStore, names: tuple[str, ...], how: str | None = None) -> None:
    """Refuse a store whose videos lack any of ``names`` (descriptors or kept inputs), saying ``how`` to get them
    (by default: the spatial glance's extraction when ``image_map`` is missing, else re-extract with the
    descriptors)."""
    have = store.attrs.get("descriptors", []) + store.attrs.get("inputs", []) + store.attrs.get("signals", [])
    missing = [n for n in names if n not in have and n not in ("t", "r2p1d_logits")]
    if missing:
        if how is None:
            how = SPATIAL_HOW if set(missing) & set(KEPT_MAPS) else \
                "re-extract with --descriptors including them"
        kind = "descriptors" if set(missing) <= set(DESCRIPTORS) else "arrays"
        raise StoreError(f"store {store.path} has no {', '.join(missing)} {kind} (it holds {', '.join(have)}): {how}")


def require_spatial(store: FeatureStore) -> None:
    """Refuse a store without the spatial glance's inputs (``frames`` and ``image_map``), saying the command to run."""
    require_arrays(store, SPATIAL_INPUTS, SPATIAL_HOW)


def check_video(video: VideoFeatures, root_attrs: dict, names: Iterable[str] | None = None) -> list[str]:
    """Problems of one loaded video: missing arrays, row counts other than n_steps, non-finite values, provenance
    or schema other than the store's. Empty when the video is sound."""
    problems = []
    n = video.attrs.get("n_steps")
    want = set(names) if names is not None else set(expected_arrays(root_attrs))
    for name in sorted(want - set(video.arrays)):
        problems.append(f"{video.video_id}: array {name} missing")
    for name, arr in video.arrays.items():
        if len(arr) != n:
            problems.append(f"{video.video_id}: array {name} has {len(arr)} rows, n_steps is {n}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            problems.append(f"{video.video_id}: array {name} holds non-finite values")
    prov = video.attrs.get("provenance", {})
    if prov.get("schema_version", SCHEMA_VERSION) != root_attrs.get("schema_version"):
        problems.append(f"{video.video_id}: schema version {prov.get('schema_version')} differs from the store's")
    root_models = root_attrs.get("provenance", {}).get("models", {})
    for model, rec in prov.get("models", {}).items():
        if model in root_models and rec.get("sha256") != root_models[model].get("sha256"):
            problems.append(f"{video.video_id}: {model} features from weights sha256 {rec.get('sha256')}, the store's "
                            f"are {root_models[model].get('sha256')} (an unfinished fs refresh? run it again)")
    return problems


INDEXED_KEYS = ("label", "split", "n_steps", "tag")    # what verify compares between the index and each group


def verify(store: "FeatureStore", progress=None, reindex: bool = False) -> tuple[list[str], list[str]]:
    """(problems, notes) for the whole store; ``fs verify`` exits non-zero when there are problems. With
    ``reindex`` the index is first rebuilt from the groups. Videos are read on a few threads (decompression
    releases the GIL)."""
    problems, notes = [], []
    if reindex:
        notes.append(f"index rebuilt from {store.reindex()} complete groups")
    attrs = store.attrs
    if attrs.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"store schema version {attrs.get('schema_version')}, expected {SCHEMA_VERSION}")
    if not store.index.exists():
        notes.append("the store has no index yet: listings open every group (fs verify --reindex writes it)")
    entries = store.entries()
    vdir = store.path / "videos"
    for name in sorted(set(_subdirs(vdir)) - set(entries)):
        problems.append(f"{name}: group under videos/ without its completion marker")

    classes = set(attrs.get("classes", []))

    def check(vid: str) -> list[str]:
        try:
            video, found = store.load_video(vid)
        except Exception as e:                  # noqa: BLE001 - a damaged group: listed, and verify goes on
            return [" ".join(f"{vid}: group unreadable ({type(e).__name__}: {e})".split())]
        gdir = store.path / "videos" / vid
        failed = {n for n in expected_arrays(attrs) if n not in video.arrays and (gdir / n / "zarr.json").is_file()}
        found += check_video(video, attrs, set(expected_arrays(attrs)) - failed)   # each array's problem once
        if video.attrs.get("label") not in classes:       # every trainer would refuse the store for it
            found.append(f"{vid}: label {video.attrs.get('label')!r} is not among the store's {len(classes)} classes")
        entry = entries[vid]
        for key in INDEXED_KEYS:
            if key in video.attrs and entry.get(key) != video.attrs.get(key):
                found.append(f"{vid}: index says {key}={entry.get(key)!r}, the group {video.attrs.get(key)!r} "
                             f"(fs verify --reindex rebuilds the index)")
        return found

    for found in threaded_map(check, list(entries), progress):
        problems += found
    if store.partial_ids():
        notes.append(f"{len(store.partial_ids())} unfinished groups under partial/ (invisible; cleared by the next run)")
    if len(store.failures()):
        notes.append(f"{len(store.failures())} videos in the failures table (fs info STORE --failures)")
    notes.append(f"{len(entries)} complete videos checked")
    return problems, notes


def _subdirs(path: Path) -> list[str]:
    """Names of the directories directly under ``path`` (one scandir; none when it is absent)."""
    if not path.is_dir():
        return []
    with os.scandir(path) as it:
        return [e.name for e in it if e.is_dir(follow_symlinks=False)]


def threaded_map(fn: Callable, items: list, progress: Callable[[int, int], None] | None = None, threads: int = 4,
                 ahead: int = 64) -> Iterator:
    """``fn(x)`` for each of ``items``, in order, computed on a few threads (zarr's decompression releases the GIL)
    at most ``ahead`` items ahead, so that large results never pile up; ``progress(done, total)`` after each."""
    if len(items) < 8:
        threads = 0
    with ThreadPoolExecutor(threads) if threads else contextlib.nullcontext() as pool:
        done = 0
        for i in range(0, len(items), ahead):
            chunk = items[i:i + ahead]
            for r in (pool.map(fn, chunk) if pool else map(fn, chunk)):
                done += 1
                yield r
                if progress:
                    progress(done, len(items))


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# errnos of a store that cannot be written: the store's fault (or its disk's), never the video's
STORE_FAULT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def store_fault(error: BaseException) -> OSError | None:
    """The OSError behind ``error`` (itself, or its cause or context) when it says the store cannot be written:
    disk full, quota exceeded, read-only file system, permission denied. None for any other error."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORE_FAULT_ERRNOS:
            return error
        error = error.__cause__ or error.__context__
    return None


def _store_write_message(path: Path, error: OSError, video_id: str = "") -> str:
    what = f"; {video_id} is not recorded as failed" if video_id else ""
    return (f"cannot write {path} ({error.strerror or error}){what}: run stopped; free space or fix the store's "
            f"permissions and run again")


def _one_line(text: object) -> str:
    return str(text).replace("\r", " ").replace("\n", " ")


def _csv_line(fields: Iterable[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(list(fields))
    return buf.getvalue()


def _write_fully(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a short write is retried; a write that stops raises OSError)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def _failure_rows(path: Path) -> list[list[str]]:
    """The rows of a failures table, oldest first; lines that are not rows of four fields (the header, garbage, a
    torn last line without its newline) are skipped. A missing or unreadable table has none."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")[:-1]          # the last piece is "" or a torn line: never a whole row
    rows = []
    for line in lines:
        try:
            rec = next(csv.reader([line.rstrip("\r")]), [])
        except csv.Error:
            continue
        if len(rec) == len(FAILURE_COLUMNS) and rec != FAILURE_COLUMNS and rec[0].strip():
            rows.append(rec)
    return rows

