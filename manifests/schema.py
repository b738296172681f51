"""The manifest CSV schema: one schema for every dataset, validated with pandas.

Columns: ``video_id, path, label, split`` and optionally ``duration`` (seconds), ``segments`` (ground-truth action
segments, ``start-end`` in seconds joined by ``;``) and ``distractors`` (the synthetic set's other-class segments,
``visual|audio:class:start-end`` joined by ``;``). Other columns are kept. Relative paths resolve against a base
directory (the manifest's folder, or the data root for the shipped ``manifests/NAME.csv``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from featurestore.decode import file_problem
from featurestore.segments import parse_segments
from featurestore.text import has_control, printable

REQUIRED_COLUMNS = ("video_id", "path", "label", "split")
SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """A manifest is malformed; the message is one line naming the file and the offending row."""


def parse_distractors(text: str) -> list[tuple[str, str, float, float]]:
    """The synthetic manifest's ``distractors``: ``"visual:cls:1.5-3.0;audio:cls:9-11"`` ->
    ``[("visual", "cls", 1.5, 3.0), ("audio", "cls", 9.0, 11.0)]`` (another class's picture or sound alone)."""
    out = []
    for part in str(text).split(";"):
        part = part.strip()
        if not part:
            continue
        modality, cls, span = (part.split(":", 2) + ["", ""])[:3]
        if modality not in ("visual", "audio") or not cls:
            raise ValueError(f"distractor {part!r} is not visual|audio:class:start-end")
        (s, e), = parse_segments(span)
        out.append((modality, cls, s, e))
    return out


def parse_confounders(text: str) -> list[tuple[str, float, float]]:
    """The synthetic manifest's ``confounders``: ``"audio:1.5-3.0;av:9-11"`` -> ``[("audio", 1.5, 3.0), ("av", 9.0,
    11.0)]`` (class-neutral loud sounds, moving noise patches, or both)."""
    out = []
    for part in str(text).split(";"):
        part = part.strip()
        if not part:
            continue
        kind, _, span = part.partition(":")
        if kind not in ("audio", "visual", "av") or not span:
            raise ValueError(f"confounder {part!r} is not audio|visual|av:start-end")
        (s, e), = parse_segments(span)
        out.append((kind, s, e))
    return out


# the longest video_id: its group is videos/<id>/ and, while written, partial/<id>-<8 hex>(-old), which must stay
# within a file name's 255 bytes (NAME_MAX) with room to spare
MAX_ID_BYTES = 200
# names a video's group may not take inside the videos/ group: zarr v3's metadata file, zarr v2's, and names
# starting with "__" (reserved by zarr) or "." (hidden; ".", "..")
RESERVED_IDS = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")
KNOWN_CLASSES_SHOWN = 5


def _row_error(name: str, i: int, df: pd.DataFrame, msg: str, count: int = 1) -> ManifestError:
    vid = df["video_id"].iloc[i] if "video_id" in df.columns else "?"
    more = f" (and {count - 1} more row(s))" if count > 1 else ""
    return ManifestError(f"{name} line {i + 2} (video_id '{printable(vid, 80)}'): {msg}{more}")


def _refuse(name: str, df: pd.DataFrame, bad, msg: Callable[[int], str]) -> None:
    """Raise the one-line error of the first row ``bad`` (a boolean mask) marks, counting the others."""
    bad = pd.Series(bad, index=df.index).to_numpy(dtype=bool)
    if bad.any():
        i = int(bad.argmax())
        raise _row_error(name, i, df, msg(i), int(bad.sum()))


def id_problem(video_id: str) -> str:
    """Why ``video_id`` cannot name a video's group in a store ("" when it can): the rule it breaks."""
    if not video_id.strip():
        return "empty video_id"
    if has_control(video_id):
        return "video_id holds control characters"
    if "/" in video_id or video_id.startswith((".", "__")):
        return "video_id may not contain '/' or start with '.' or '__'"
    if "\\" in video_id:          # zarr turns a backslash into '/': the group would land in another directory
        return "video_id may not contain '\\' (zarr reads it as '/')"
    if video_id.lower() in RESERVED_IDS:
        return f"video_id {video_id!r} is a name zarr uses for its metadata"
    n = len(video_id.encode("utf-8", "surrogatepass"))
    if n > MAX_ID_BYTES:
        return f"video_id is {n} bytes long in UTF-8, at most {MAX_ID_BYTES} fit a store's file names"
    return ""


def read_manifest(path: str | Path, base: str | Path | None = None, check_files: bool = True,
                  classes: list[str] | None = None) -> pd.DataFrame:
    """Read and validate a manifest; ``path`` values are returned absolute. Raises :class:`ManifestError`, one line
    naming the file, the first offending row and the rule it breaks.

    ``video_id`` must name a store group (:func:`id_problem`), labels may not hold control characters and, given
    ``classes`` (the dataset's class list), must be among them; segments are finite ``0 <= start < end``; with
    ``check_files`` every path must be a regular file (or a link to one).
    """
    path = Path(path)
    name = printable(path.name)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {printable(path)}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ManifestError(f"{name}: not a readable CSV ({printable(str(e).splitlines()[0])})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{name}: missing column(s) {', '.join(missing)} (need {', '.join(REQUIRED_COLUMNS)})")
    if df.empty:
        raise ManifestError(f"{name}: no rows")
    # relative paths resolve against the manifest's folder (or ``base``), made absolute now: the store records
    # where each file is, whatever directory it is read from later
    base = Path(os.path.abspath(base if base is not None else path.parent))
    for col in REQUIRED_COLUMNS:
        _refuse(name, df, df[col].str.strip() == "", lambda i: f"empty {col}")
    dup = df["video_id"].duplicated(keep="first")
    _refuse(name, df, dup, lambda i: "duplicate video_id (first on line "
            f"{int((df['video_id'] == df['video_id'].iloc[i]).to_numpy().argmax()) + 2})")
    id_problems = [id_problem(v) for v in df["video_id"]]
    _refuse(name, df, [bool(p) for p in id_problems], lambda i: id_problems[i])
    _refuse(name, df, [has_control(v) for v in df["label"]],
            lambda i: f"label '{printable(df['label'].iloc[i], 80)}' holds control characters")
    if classes is not None:
        known = set(classes)
        shown = ", ".join(printable(c, 40) for c in list(classes)[:KNOWN_CLASSES_SHOWN])
        _refuse(name, df, ~df["label"].isin(known),
                lambda i: f"label '{printable(df['label'].iloc[i], 80)}' is not among the dataset's {len(known)} "
                          f"classes ({shown}{', ...' if len(known) > KNOWN_CLASSES_SHOWN else ''})")
    _refuse(name, df, ~df["split"].isin(SPLITS),
            lambda i: f"unknown split '{printable(df['split'].iloc[i], 40)}' (use {', '.join(SPLITS)})")
    if "duration" in df.columns:
        dur = pd.to_numeric(df["duration"].replace("", None), errors="coerce")
        bad = (df["duration"] != "") & (dur.isna() | (dur < 0) | ~np.isfinite(dur.fillna(0)))
        _refuse(name, df, bad, lambda i: f"duration '{printable(df['duration'].iloc[i], 40)}' is not a finite "
                                         f"non-negative number")
    for column, parse in (("segments", parse_segments), ("distractors", parse_distractors),
                          ("confounders", parse_confounders)):
        for i, text in enumerate(df[column] if column in df.columns else ()):
            try:
                parse(text)
            except ValueError as e:
                raise _row_error(name, i, df, str(e)) from None
    df["path"] = [str(Path(base, p).absolute()) for p in df["path"]]
    if check_files:
        for i, p in enumerate(df["path"]):
            problem = file_problem(p)
            if problem:
                raise _row_error(name, i, df, printable(problem))
    return df


def class_list(df: pd.DataFrame) -> list[str]:
    """The dataset's classes in a stable order (sorted labels)."""
    return sorted(df["label"].unique().tolist())
