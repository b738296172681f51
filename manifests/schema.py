"""The manifest CSV schema: one schema for every dataset, validated with pandas.

Columns: ``video_id, path, label, split`` and optionally ``duration`` (seconds), ``segments`` (ground-truth action
segments, ``start-end`` in seconds joined by ``;``) and ``distractors`` (the synthetic set's other-class segments,
``visual|audio:class:start-end`` joined by ``;``). Other columns are kept. Relative paths resolve against a base
directory (the manifest's folder, or the data root for the shipped ``manifests/NAME.csv``).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

REQUIRED_COLUMNS = ("video_id", "path", "label", "split")
SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """A manifest is malformed; the message is one line naming the file and the offending row."""


def parse_segments(text: str) -> list[tuple[float, float]]:
    """``"1.5-3.0;10-12.25"`` -> ``[(1.5, 3.0), (10.0, 12.25)]``; empty text gives ``[]``."""
    out = []
    for part in str(text).split(";"):
        part = part.strip()
        if not part:
            continue
        start, sep, end = part.partition("-")
        if not sep:
            raise ValueError(f"segment {part!r} is not start-end")
        s, e = float(start), float(end)
        if not 0 <= s < e:
            raise ValueError(f"segment {part!r} needs 0 <= start < end")
        out.append((s, e))
    return out


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


def _row_error(name: str, i: int, df: pd.DataFrame, msg: str) -> ManifestError:
    vid = df["video_id"].iloc[i] if "video_id" in df.columns else "?"
    return ManifestError(f"{name} line {i + 2} (video_id {vid!r}): {msg}")


def read_manifest(path: str | Path, base: str | Path | None = None, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a manifest; ``path`` values are returned absolute. Raises :class:`ManifestError`."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ManifestError(f"{name}: not a readable CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{name}: missing column(s) {', '.join(missing)} (need {', '.join(REQUIRED_COLUMNS)})")
    if df.empty:
        raise ManifestError(f"{name}: no rows")
    # relative paths resolve against the manifest's folder (or ``base``), made absolute now: the store records
    # where each file is, whatever directory it is read from later
    base = Path(os.path.abspath(base if base is not None else path.parent))
    for col in REQUIRED_COLUMNS:
        empty = df[col].str.strip() == ""
        if empty.any():
            raise _row_error(name, int(empty.to_numpy().argmax()), df, f"empty {col}")
    dup = df["video_id"].duplicated(keep="first")
    if dup.any():
        i = int(dup.to_numpy().argmax())
        first = int((df["video_id"] == df["video_id"].iloc[i]).to_numpy().argmax())
        raise _row_error(name, i, df, f"duplicate video_id (first on line {first + 2})")
    bad_id = df["video_id"].str.contains("/", regex=False) | df["video_id"].str.startswith((".", "__"))
    if bad_id.any():
        raise _row_error(name, int(bad_id.to_numpy().argmax()), df, "video_id may not contain '/' or start "
                                                                     "with '.' or '__'")
    bad_split = ~df["split"].isin(SPLITS)
    if bad_split.any():
        i = int(bad_split.to_numpy().argmax())
        raise _row_error(name, i, df, f"unknown split {df['split'].iloc[i]!r} (use {', '.join(SPLITS)})")
    if "duration" in df.columns:
        dur = pd.to_numeric(df["duration"].replace("", None), errors="coerce")
        bad = (df["duration"] != "") & (dur.isna() | (dur < 0))
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise _row_error(name, i, df, f"duration {df['duration'].iloc[i]!r} is not a non-negative number")
    for column, parse in (("segments", parse_segments), ("distractors", parse_distractors)):
        for i, text in enumerate(df[column] if column in df.columns else ()):
            try:
                parse(text)
            except ValueError as e:
                raise _row_error(name, i, df, str(e)) from None
    df["path"] = [str(p if os.path.isabs(p) else (base / p)) for p in df["path"]]
    if check_files:
        for i, p in enumerate(df["path"]):
            if not os.path.exists(p):
                raise _row_error(name, i, df, f"file not found: {p}")
    return df


def class_list(df: pd.DataFrame) -> list[str]:
    """The dataset's classes in a stable order (sorted labels)."""
    return sorted(df["label"].unique().tolist())
