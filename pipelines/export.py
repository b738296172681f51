"""``fs export``: one split of the store written as files other tools read, streamed video by video (never the whole
split in memory); every array keeps its stored dtype and values bit for bit.

Layouts (``<out>`` is written under a temporary name beside it and renamed into place when complete)::

    npy         <out>/<array>/<video_id>.npy           one file per video and array (video_features' convention:
                                                       a folder per feature, a file per video), shape (n_steps, ...)
                <out>/metadata.csv                     one line per video: METADATA_COLUMNS
    parquet     <out>/<split>.parquet                  one row per video: METADATA_COLUMNS, then one column per array,
                                                       a list of the video's rows (float16 rows as Arrow halffloat,
                                                       fixed-size lists per row dimension), in row groups of about
                                                       ``row_group_bytes``
    webdataset  <out>/<split>-000000.tar, ...          per video ``<key>.<array>.npy`` and ``<key>.json`` (its
                                                       METADATA_COLUMNS), a new shard every ``shard_videos`` videos
                                                       or ``shard_bytes`` bytes; ``<key>`` is the video id with ``%``
                                                       and ``.`` percent-escaped (webdataset cuts keys at the first dot)
    every       <out>/export.json                      what was exported: format, split, arrays, their dimension names,
                                                       videos, the store and the fs version (``--overwrite`` replaces
                                                       only a folder holding it)
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote

import numpy as np

from featurestore import __version__
from featurestore.constants import KEPT_CLIPS, KEPT_INPUTS, KEPT_MAPS, dimension_names
from featurestore.store import FeatureStore, StoreError, check_video, expected_arrays, threaded_map

FORMATS = ("npy", "parquet", "webdataset")
METADATA_COLUMNS = ("video_id", "label", "split", "n_steps", "duration", "fps", "has_audio", "segments")
MARKER = "export.json"
READ_AHEAD = 4                  # videos read ahead of the writer (a video's kept clips can be hundreds of MB)
SHARD_VIDEOS = 1000             # webdataset: videos per shard at most ...
SHARD_BYTES = 1 << 30           # ... and about this many bytes
ROW_GROUP_BYTES = 64 << 20      # parquet: array bytes per row group (a video larger than this is a row group alone)


class ExportError(ValueError):
    """An export asked for something the store or the output folder cannot give (one line, for the CLI)."""


@dataclass
class ExportResult:
    """What :func:`export_split` wrote."""

    out: Path
    format: str
    split: str
    arrays: tuple[str, ...]
    videos: int
    files: int
    bytes: int


def default_arrays(store: FeatureStore) -> tuple[str, ...]:
    """What is exported when no arrays are named: every array the store's videos hold but the kept inputs and clips
    (large; named explicitly when wanted)."""
    return tuple(a for a in expected_arrays(store.attrs) if a not in KEPT_INPUTS + KEPT_MAPS + KEPT_CLIPS)


def check_request(store: FeatureStore, split: str, fmt: str, arrays: tuple[str, ...] | None, out: Path,
                  overwrite: bool = False) -> tuple[list[str], tuple[str, ...]]:
    """(the split's video ids, the arrays to export), or an :class:`ExportError` saying what is wrong: an unknown
    format, a split without videos, arrays the store's videos do not hold, an output folder that exists and is not
    empty (with ``overwrite``: one that is not an earlier export)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    ids = store.video_ids(split)
    if not ids:
        splits = sorted({e.get("split") for e in store.entries().values()})
        raise ExportError(f"store {store.path} has no complete {split!r} videos (its splits: "
                          f"{', '.join(map(str, splits)) or 'none'})")
    held = expected_arrays(store.attrs)
    names = tuple(dict.fromkeys(arrays)) if arrays else default_arrays(store)
    if not names:
        raise ExportError("no arrays to export: name some with --arrays")
    missing = [a for a in names if a not in held]
    if missing:
        raise ExportError(f"store {store.path} has no {', '.join(missing)} array{'s' if len(missing) > 1 else ''} "
                          f"(its videos hold {', '.join(held)})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(f"--out {out} exists and is not empty: choose another folder, or --overwrite to "
                              f"replace an earlier fs export there")
        if not _is_export(out):
            raise ExportError(f"--out {out} is not an fs export (no {MARKER} from fs export): it is not replaced; "
                              f"choose another folder")
    return ids, names


def _is_export(out: Path) -> bool:
    try:
        return isinstance(json.loads((out / MARKER).read_text()).get("fs_export"), int)
    except (OSError, ValueError, AttributeError):
        return False


def export_split(store: FeatureStore, split: str, fmt: str, out: str | Path, arrays: tuple[str, ...] | None = None,
                 overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
                 shard_videos: int = SHARD_VIDEOS, shard_bytes: int = SHARD_BYTES,
                 row_group_bytes: int = ROW_GROUP_BYTES) -> ExportResult:
    """Write ``arrays`` (default :func:`default_arrays`) and the metadata of every complete video of ``split`` to
    ``out`` in format ``fmt`` (npy, parquet, webdataset; layouts in the module docstring). Videos are read a few at a
    time and checked as the packers check them (every array present, n_steps rows, finite values); the folder
    appears only once complete. ``progress(done, total)`` after each video."""
    out = Path(out)
    ids, names = check_request(store, split, fmt, arrays, out, overwrite)
    tmp = out.parent / f".{out.name}.fs-export-{uuid.uuid4().hex[:8]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    try:
        dims = {n: list(_dims(store, ids[0], n)) for n in names}
        videos = _videos(store, ids, names, progress)
        if fmt == "npy":
            _write_npy(videos, tmp, names)
        elif fmt == "parquet":
            _write_parquet(videos, tmp / f"{split}.parquet", names, dims, row_group_bytes)
        else:
            _write_webdataset(videos, tmp, split, names, shard_videos, shard_bytes)
        marker = {"fs_export": 1, "format": fmt, "split": split, "arrays": list(names),
                  "dimension_names": dims, "videos": len(ids),
                  "metadata_columns": list(METADATA_COLUMNS), "classes": store.attrs.get("classes", []),
                  "store": str(store.path), "fs_version": __version__}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        files, size = _tree_size(tmp)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, fmt, split, names, len(ids), files, size)


def _dims(store: FeatureStore, video_id: str, name: str) -> tuple[str, ...]:
    """The dimension names of array ``name`` as exported (its rank read from the store's first video)."""
    import zarr

    arr = zarr.open_group(str(store.path / "videos" / video_id), mode="r")[name]
    return arr.metadata.dimension_names or dimension_names(name, arr.ndim)


def _publish(tmp: Path, out: Path) -> None:
    """Put the finished export ``tmp`` at ``out``: an earlier export (or an empty folder) there is replaced."""
    if out.exists():
        trash = out.parent / f".{out.name}.fs-export-old-{uuid.uuid4().hex[:8]}"
        os.rename(out, trash)
        os.rename(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, out)


def _tree_size(root: Path) -> tuple[int, int]:
    files = size = 0
    for p in root.rglob("*"):
        if p.is_file():
            files += 1
            size += p.stat().st_size
    return files, size


def _videos(store: FeatureStore, ids: list[str], names: tuple[str, ...],
            progress: Callable[[int, int], None] | None) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
    """(metadata, arrays) of each video in ``ids``, in order, read a few ahead on threads and checked."""
    root_attrs = store.attrs

    def read(vid: str) -> tuple[dict, dict[str, np.ndarray]]:
        video = store.read_video(vid, names)
        problems = check_video(video, root_attrs, names)
        if problems:
            raise StoreError(f"{problems[0]} (fs verify {store.path} lists every problem)")
        return video_metadata(vid, video.attrs), video.arrays

    return threaded_map(read, ids, progress, ahead=READ_AHEAD)


def video_metadata(video_id: str, attrs: dict) -> dict:
    """The exported metadata of one video: :data:`METADATA_COLUMNS` from its attributes (``segments``: the store's
    ``start-end;start-end`` text in seconds, "" when it has none)."""
    return {"video_id": video_id, "label": str(attrs.get("label", "")), "split": str(attrs.get("split", "")),
            "n_steps": int(attrs.get("n_steps", 0)), "duration": float(attrs.get("duration", 0.0)),
            "fps": float(attrs.get("fps", 0.0)), "has_audio": bool(attrs.get("has_audio", False)),
            "segments": str(attrs.get("segments", "") or "")}


# --- npy -------------------------------------------------------------------------------------------------------------
def _write_npy(videos: Iterator, out: Path, names: tuple[str, ...]) -> None:
    for n in names:
        (out / n).mkdir()
    with open(out / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        rows = csv.DictWriter(f, fieldnames=list(METADATA_COLUMNS), lineterminator="\n")
        rows.writeheader()
        for meta, arrays in videos:
            for n in names:
                np.save(out / n / f"{meta['video_id']}.npy", arrays[n], allow_pickle=False)
            rows.writerow(meta)


# --- parquet ---------------------------------------------------------------------------------------------------------
def arrow_rows(data: np.ndarray):
    """One video's array as an Arrow list of its rows: the values in the array's own dtype (float16 as halffloat), a
    fixed-size list for each dimension after the first; the whole video is one list element."""
    import pyarrow as pa

    values = pa.array(np.ascontiguousarray(data).reshape(-1))
    for size in reversed(data.shape[1:]):
        values = pa.FixedSizeListArray.from_arrays(values, size)
    return values


def _write_parquet(videos: Iterator, path: Path, names: tuple[str, ...], dims: dict[str, list[str]],
                   row_group_bytes: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta_types = {"video_id": pa.string(), "label": pa.string(), "split": pa.string(), "n_steps": pa.int64(),
                  "duration": pa.float64(), "fps": pa.float64(), "has_audio": pa.bool_(), "segments": pa.string()}
    writer = schema = None
    metas: list[dict] = []
    columns: dict[str, list] = {n: [] for n in names}
    pending = 0

    def flush() -> None:
        nonlocal metas, columns, pending
        if not metas:
            return
        cols = {c: pa.array([m[c] for m in metas], meta_types[c]) for c in METADATA_COLUMNS}
        for n in names:
            rows = pa.concat_arrays(columns[n])
            offsets = pa.array(np.concatenate([[0], np.cumsum([m["n_steps"] for m in metas])]).astype(np.int32))
            cols[n] = pa.ListArray.from_arrays(offsets, rows)
        writer.write_table(pa.table(cols, schema=schema), row_group_size=len(metas))
        metas, columns, pending = [], {n: [] for n in names}, 0

    try:
        for meta, arrays in videos:
            if writer is None:
                fields = [pa.field(c, meta_types[c]) for c in METADATA_COLUMNS]
                fields += [pa.field(n, pa.list_(arrow_rows(arrays[n][:0]).type)) for n in names]
                schema = pa.schema(fields, metadata={b"fs": json.dumps({"arrays": list(names),
                                                                        "dimension_names": dims}).encode()})
                writer = pq.ParquetWriter(path, schema)
            metas.append(meta)
            for n in names:
                columns[n].append(arrow_rows(arrays[n]))
                pending += arrays[n].nbytes
            if pending >= row_group_bytes:
                flush()
        flush()
    finally:
        if writer is not None:
            writer.close()


# --- webdataset ------------------------------------------------------------------------------------------------------
def sample_key(video_id: str) -> str:
    """A video's webdataset key: its id with every character but letters, digits and ``_-~`` percent-escaped
    (``.`` too: webdataset takes what follows a key's first dot for the file's extension); ``unquote`` reverses it."""
    return quote(video_id, safe="").replace(".", "%2E")


def _npy_bytes(data: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, data, allow_pickle=False)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(payload), 0o644, 0          # fixed: the same store gives the same tars
    tar.addfile(info, io.BytesIO(payload))


def _write_webdataset(videos: Iterator, out: Path, split: str, names: tuple[str, ...], shard_videos: int,
                      shard_bytes: int) -> None:
    tar, shard, count = None, 0, 0
    try:
        for meta, arrays in videos:
            if tar is not None and (count >= shard_videos or tar.fileobj.tell() >= shard_bytes):
                tar.close()
                tar, shard = None, shard + 1
            if tar is None:
                tar, count = tarfile.open(out / f"{split}-{shard:06d}.tar", "w", format=tarfile.PAX_FORMAT), 0
            key = sample_key(meta["video_id"])
            _add(tar, f"{key}.json", json.dumps(meta).encode())
            for n in names:
                _add(tar, f"{key}.{n}.npy", _npy_bytes(arrays[n]))
            count += 1
    finally:
        if tar is not None:
            tar.close()
