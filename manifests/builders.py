"""Build fs manifests from official annotation files and the videos a user already has on disk.

Datasets as the papers define them (Listen to Look supp. B, SCSampler §4.2):

* ``minisports1m`` — Sports-1M partition files (``URL<space><label indices>``, labels in the order of
  ``sports1m-labels.txt``); single-label videos present on disk lasting 2–5 minutes, then per class 30 train and 10
  test drawn with the seed. Classes that fall short are reported.
* ``activitynet`` — the v1.3 JSON; the validation subset is the test split (the official test labels are hidden);
  annotated segments become the manifest's ``segments``.
* ``kinetics-sounds`` — the 31 classes of the Listen-to-Look supplementary, from Kinetics-400 CSVs.
* ``ucf101`` — ``classInd.txt``, ``trainlist01.txt``, ``testlist01.txt`` (split 1).

Videos are matched by id in file names (``<id>.mp4``, ``v_<id>.mkv``, ``<id>_000010_000020.mp4``, any container);
videos that are missing are listed in a side file, never silently dropped.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
VIDEO_EXTENSIONS = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".ts", ".3gp"}
DATASETS = ("minisports1m", "activitynet", "kinetics-sounds", "ucf101")


class AnnotationError(ValueError):
    """An annotation file cannot be used; the message names the file (and line)."""


@dataclass
class BuildReport:
    """What a builder kept and what it could not use, for the user to read."""

    rows: pd.DataFrame
    missing: list[dict] = field(default_factory=list)      # video_id, label, split, reason
    malformed: list[str] = field(default_factory=list)     # "file:line: why"
    short_classes: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{len(self.rows)} videos ({', '.join(f'{k} {v}' for k, v in self.rows['split'].value_counts().items())})"
                 if len(self.rows) else "0 videos",
                 f"{len(self.missing)} listed but missing or unusable", f"{len(self.malformed)} malformed lines"]
        if self.short_classes:
            parts.append(f"{len(self.short_classes)} classes short of their quota")
        return "; ".join(parts)


class VideoIndex:
    """Every video file under a root, findable by id: ``<id>.*``, ``v_<id>.*`` or ``<id>_<start>_<end>.*``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise AnnotationError(f"--video-root {self.root} is not a folder")
        self.by_key: dict[str, Path] = {}
        for dirpath, _, files in os.walk(self.root):
            for f in files:
                p = Path(dirpath) / f
                if p.suffix.lower() not in VIDEO_EXTENSIONS:
                    continue
                stem = p.stem
                keys = {stem}
                if stem.startswith("v_"):
                    keys.add(stem[2:])
                m = re.match(r"^(.+)_\d{6}_\d{6}$", stem)          # Kinetics: <youtube id>_<start>_<end>
                if m:
                    keys.add(m[1])
                for k in keys:
                    self.by_key.setdefault(k, p)

    def find(self, video_id: str) -> Path | None:
        return self.by_key.get(video_id) or self.by_key.get(f"v_{video_id}")


def youtube_id(url: str) -> str | None:
    m = re.search(r"(?:v=|youtu\.be/|/embed/)([A-Za-z0-9_-]{11})", url)
    return m[1] if m else None


def _probe_duration(path: Path) -> float | None:
    from featurestore.decode import DecodeError, probe
    try:
        return probe(str(path)).duration
    except DecodeError:
        return None


class DurationCache:
    """ffprobe durations, cached in a CSV keyed by path, size and mtime (a rerun probes nothing again)."""

    def __init__(self, path: Path, prober: Callable[[Path], float | None] = _probe_duration):
        self.path, self.prober = path, prober
        self.cache: dict[str, float | None] = {}
        if path.is_file():
            df = pd.read_csv(path, dtype={"key": str})
            self.cache = {k: (None if pd.isna(d) else float(d)) for k, d in zip(df["key"], df["duration"])}
        self.dirty = False

    def get(self, p: Path) -> float | None:
        st = p.stat()
        key = f"{p}|{st.st_size}|{int(st.st_mtime)}"
        if key not in self.cache:
            self.cache[key] = self.prober(p)
            self.dirty = True
        return self.cache[key]

    def save(self) -> None:
        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"key": list(self.cache), "duration": list(self.cache.values())}).to_csv(self.path, index=False)


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}")
    return [(i, line.strip()) for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
            if line.strip() and not line.startswith("#")]


def build_minisports1m(annotations: Path, videos: VideoIndex, seed: int = 0, durations: DurationCache | None = None,
                       per_class: tuple[int, int] = (30, 10), seconds: tuple[float, float] = (120, 300),
                       labels_file: Path = HERE / "sports1m-labels.txt") -> BuildReport:
    """``annotations``: a partition file, or a folder of them (``*.txt`` other than the label list)."""
    classes = labels_file.read_text().splitlines()
    files = sorted(p for p in annotations.glob("*partition*.txt")) if annotations.is_dir() else [annotations]
    if not files:
        raise AnnotationError(f"no Sports-1M partition files (*partition*.txt) in {annotations}")
    report = BuildReport(pd.DataFrame())
    candidates: dict[str, list[tuple[str, Path]]] = {}
    seen: set[str] = set()
    for f in files:
        for n, line in _lines(f):
            url, _, labs = line.partition(" ")
            vid = youtube_id(url)
            try:
                idx = [int(x) for x in labs.split(",") if x.strip()]
            except ValueError:
                idx = []
            if vid is None or not idx:
                report.malformed.append(f"{f.name}:{n}: expected 'URL label,label', got {line[:80]!r}")
                continue
            if any(not 0 <= i < len(classes) for i in idx):
                report.malformed.append(f"{f.name}:{n}: label index out of 0..{len(classes) - 1}: {labs}")
                continue
            if len(set(idx)) != 1 or vid in seen:
                continue                    # multi-label videos are not part of Mini-Sports1M; duplicates once
            seen.add(vid)
            label = classes[idx[0]]
            path = videos.find(vid)
            if path is None:
                report.missing.append({"video_id": vid, "label": label, "split": "", "reason": "not on disk"})
                continue
            dur = durations.get(path) if durations else _probe_duration(path)
            if dur is None:
                report.missing.append({"video_id": vid, "label": label, "split": "", "reason": "unreadable"})
                continue
            if not seconds[0] <= dur <= seconds[1]:
                continue                    # outside 2-5 min: not part of the dataset by definition
            candidates.setdefault(label, []).append((vid, path, dur))
    rng = np.random.default_rng(seed)
    rows = []
    n_train, n_test = per_class
    for label in classes:
        have = sorted(candidates.get(label, []))
        if len(have) < n_train + n_test:
            report.short_classes[label] = f"{len(have)} of {n_train + n_test} usable videos"
        order = rng.permutation(len(have))
        for rank, j in enumerate(order[: n_train + n_test]):
            vid, path, dur = have[j]
            rows.append({"video_id": vid, "path": str(path), "label": label,
                         "split": "train" if rank < n_train else "test", "duration": dur})
    if durations:
        durations.save()
    report.rows = pd.DataFrame(rows, columns=["video_id", "path", "label", "split", "duration"])
    return report


def build_activitynet(annotations: Path, videos: VideoIndex) -> BuildReport:
    """ActivityNet v1.3 JSON; training -> train, validation -> test; the hidden-label testing subset is skipped."""
    try:
        db = json.loads(Path(annotations).read_text())["database"]
    except FileNotFoundError:
        raise AnnotationError(f"annotation file not found: {annotations}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise AnnotationError(f"{annotations}: not an ActivityNet JSON with a 'database' ({e})") from None
    report = BuildReport(pd.DataFrame())
    rows = []
    split_of = {"training": "train", "validation": "test"}
    for vid, entry in db.items():
        try:
            subset = entry["subset"]
            anns = entry.get("annotations", [])
            labels = [a["label"] for a in anns]
            segs = [(float(a["segment"][0]), float(a["segment"][1])) for a in anns]
        except (KeyError, TypeError, ValueError, IndexError) as e:
            report.malformed.append(f"{Path(annotations).name}: video {vid}: {type(e).__name__} {e}")
            continue
        if subset not in split_of:
            continue
        if not labels:
            report.malformed.append(f"{Path(annotations).name}: video {vid}: no annotations in subset {subset}")
            continue
        label = max(set(labels), key=labels.count)
        path = videos.find(vid)
        if path is None:
            report.missing.append({"video_id": vid, "label": label, "split": split_of[subset], "reason": "not on disk"})
            continue
        valid = [(s, e) for s, e in segs if 0 <= s < e < float("inf")]      # read_manifest refuses the rest
        rows.append({"video_id": vid, "path": str(path), "label": label, "split": split_of[subset],
                     "duration": entry.get("duration", ""),
                     "segments": ";".join(f"{s:.2f}-{e:.2f}" for s, e in sorted(valid))})
    report.rows = pd.DataFrame(rows, columns=["video_id", "path", "label", "split", "duration", "segments"])
    return report


def build_kinetics_sounds(annotations: Path, videos: VideoIndex,
                          classes_file: Path = HERE / "kinetics-sounds-classes.txt") -> BuildReport:
    """Kinetics-400 CSVs (``label, youtube_id, time_start, time_end, split``): a file or a folder of ``*.csv``."""
    keep = set(classes_file.read_text().splitlines())
    files = sorted(annotations.glob("*.csv")) if annotations.is_dir() else [annotations]
    report = BuildReport(pd.DataFrame())
    rows = []
    split_of = {"train": "train", "val": "val", "validate": "val", "test": "test"}
    for f in files:
        if not f.is_file():
            raise AnnotationError(f"annotation file not found: {f}")
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
        need = {"label", "youtube_id", "time_start", "time_end", "split"}
        if not need <= set(df.columns):
            raise AnnotationError(f"{f.name}: missing column(s) {', '.join(sorted(need - set(df.columns)))}")
        for i, r in enumerate(df.to_dict("records"), 2):
            if r["split"] not in split_of or not re.fullmatch(r"[A-Za-z0-9_-]{11}", r["youtube_id"]):
                report.malformed.append(f"{f.name}:{i}: bad split {r['split']!r} or youtube_id {r['youtube_id']!r}")
                continue
            if r["label"] not in keep:
                continue
            path = videos.find(r["youtube_id"])
            if path is None:
                report.missing.append({"video_id": r["youtube_id"], "label": r["label"],
                                       "split": split_of[r["split"]], "reason": "not on disk"})
                continue
            rows.append({"video_id": r["youtube_id"], "path": str(path), "label": r["label"],
                         "split": split_of[r["split"]]})
    out = pd.DataFrame(rows, columns=["video_id", "path", "label", "split"])
    report.rows = out.drop_duplicates("video_id")
    return report


def build_ucf101(annotations: Path, videos: VideoIndex) -> BuildReport:
    """``annotations``: the folder holding classInd.txt, trainlist01.txt and testlist01.txt."""
    classes: dict[int, str] = {}
    report = BuildReport(pd.DataFrame())
    for n, line in _lines(annotations / "classInd.txt"):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            report.malformed.append(f"classInd.txt:{n}: expected 'index Name', got {line[:60]!r}")
            continue
        classes[int(parts[0])] = parts[1]
    names = set(classes.values())
    rows = []
    for split, fname in (("train", "trainlist01.txt"), ("test", "testlist01.txt")):
        for n, line in _lines(annotations / fname):
            rel = line.split()[0]
            folder, _, file = rel.partition("/")
            if not file or folder not in names:
                report.malformed.append(f"{fname}:{n}: unknown class or path {line[:80]!r}")
                continue
            vid = Path(file).stem
            path = videos.find(vid)
            if path is None:
                report.missing.append({"video_id": vid, "label": folder, "split": split, "reason": "not on disk"})
                continue
            rows.append({"video_id": vid, "path": str(path), "label": folder, "split": split})
    report.rows = pd.DataFrame(rows, columns=["video_id", "path", "label", "split"])
    return report


def build(dataset: str, annotations: str | Path, video_root: str | Path, seed: int = 0,
          cache_dir: Path | None = None) -> BuildReport:
    """Dispatch to the dataset's builder."""
    if dataset not in DATASETS:
        raise AnnotationError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    annotations, index = Path(annotations), VideoIndex(video_root)
    if dataset == "minisports1m":
        cache = DurationCache((cache_dir or Path(video_root)) / ".fs-durations.csv")
        return build_minisports1m(annotations, index, seed, cache)
    if dataset == "activitynet":
        return build_activitynet(annotations, index)
    if dataset == "kinetics-sounds":
        return build_kinetics_sounds(annotations, index)
    return build_ucf101(annotations, index)


def write_manifest(report: BuildReport, out: Path, data_root: Path) -> Path:
    """Write the manifest (paths relative to ``data_root`` when under it) and ``<out>.missing.csv`` beside it."""
    rows = report.rows.copy()
    root = data_root.resolve()

    def rel(p: str) -> str:
        rp = Path(p).resolve()
        return str(rp.relative_to(root)) if rp.is_relative_to(root) else str(rp)
    rows["path"] = [rel(p) for p in rows["path"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out, index=False)
    missing = out.with_name(out.stem + ".missing.csv")
    pd.DataFrame(report.missing, columns=["video_id", "label", "split", "reason"]).to_csv(missing, index=False)
    return out
