"""fs as a library: the same jobs as the ``fs`` command, from Python.

    import fs
    store = fs.open_store("fs-store.zarr")
    fs.videos(store, "test")                     # one row per video: label, split, n_steps, segments, ...
    fs.read_video(store, "v0001")["audio"]       # one video's (N, 512) float16 audio descriptors
    loader = torch.utils.data.DataLoader(fs.VideoDataset(store, "train", ("image", "audio")),
                                         batch_size=32, collate_fn=fs.collate_videos)
    fs.evaluate(store, ["UNIFORM", "SKIM"], selectors=[MySelector()])   # the bench's table, a DataFrame

docs/api.md walks through every function with examples that run as tests. Everything here is a thin layer over
``featurestore`` (the store), ``manifests`` (datasets) and ``pipelines`` (trainers, the bench): the CLI and these
functions call the same code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from featurestore import __version__
from featurestore.segments import parse_segments
from featurestore.store import FeatureStore, StoreError, VideoFeatures, default_store_path
from models.selection import BUDGET, Selection, Selector, UnitCosts, VideoBlock
from pipelines.bench import evaluate_methods
from pipelines.dataset import VideoDataset, WindowSampler, collate_videos
from pipelines.export import ExportError, ExportResult, export_split
from pipelines.methods import METHODS, BenchContext, installed_methods, parse_methods

__all__ = ["__version__", "open_store", "splits", "videos", "read_video", "VideoDataset", "WindowSampler",
           "collate_videos", "evaluate", "methods", "export", "synth", "extract", "ExportError", "ExportResult", "FeatureStore", "VideoFeatures",
           "StoreError", "Selector", "Selection", "UnitCosts", "VideoBlock", "BenchContext", "BUDGET"]


def open_store(path: str | Path | None = None) -> FeatureStore:
    """Open an existing store read-only (default: ``$FS_STORE``, else ``./fs-store.zarr``); a missing store or one
    of another schema is a :class:`StoreError`."""
    return FeatureStore(path if path is not None else default_store_path(), mode="r")


def _store(store: FeatureStore | str | Path) -> FeatureStore:
    return store if isinstance(store, FeatureStore) else open_store(store)


def splits(store: FeatureStore | str | Path) -> dict[str, int]:
    """Complete videos per split, e.g. ``{"train": 150, "test": 50}``."""
    return dict(sorted(pd.Series([e["split"] for e in _store(store).entries().values()], dtype=object)
                       .value_counts().items()))


def videos(store: FeatureStore | str | Path, split: str | None = None) -> pd.DataFrame:
    """One row per complete video (of ``split``, or all), sorted by id: ``video_id, label, split, n_steps,
    duration, has_audio``, ``segments`` as a list of (start, end) seconds, and the rest of its attributes."""
    rows = []
    for vid, entry in sorted(_store(store).entries().items()):
        if split is not None and entry.get("split") != split:
            continue
        row = {"video_id": vid, **{k: v for k, v in entry.items() if k not in ("video_id", "tag", "complete")}}
        row["segments"] = parse_segments(entry.get("segments") or "") if isinstance(entry.get("segments", ""), str) \
            else [tuple(s) for s in entry["segments"]]
        rows.append(row)
    first = ["video_id", "label", "split", "n_steps", "duration", "has_audio", "segments"]
    df = pd.DataFrame(rows, columns=first if not rows else None)
    return df[first + [c for c in df.columns if c not in first]] if rows else df


def read_video(store: FeatureStore | str | Path, video_id: str, arrays: Iterable[str] | None = None) -> VideoFeatures:
    """One complete video's arrays (all, or ``arrays``) as numpy, with its attributes: ``v["audio"]``,
    ``v.arrays``, ``v.attrs``, ``v.label``, ``v.n_steps``. A damaged or missing array is a one-line
    :class:`StoreError`."""
    return _store(store).read_video(video_id, list(arrays) if arrays is not None else None)


def methods() -> list[str]:
    """The method names ``fs bench --methods`` and :func:`evaluate` accept: the built-in ones in table order, then
    those installed packages register (entry-point group ``fs.methods``); ``pkg.module:build`` is accepted too."""
    return list(METHODS) + [m for m in installed_methods() if m not in METHODS]


def evaluate(store: FeatureStore | str | Path, methods: Sequence[str] = ("UNIFORM",),
             selectors: Sequence[Selector] = (), runs: str | Path | None = None, split: str = "test",
             train_split: str | None = "train", subsample: int = 5, steps: int = 3, device: str = "cpu",
             intervals: bool = True) -> pd.DataFrame:
    """The bench's table as a DataFrame (the columns of ``bench.csv``: method, top1 with its interval, train_top1,
    mAP, gflops_per_video, segment_hit, role, ...) for ``methods`` (registry names, installed plug-ins,
    ``pkg.module:build``) and your own ``selectors`` (role ``plugin``), on
    ``split``. Per-step heads missing from ``runs`` are trained first, as ``fs bench`` does; nothing else is
    written."""
    if isinstance(methods, str):
        methods = parse_methods(methods)
    return evaluate_methods(_store(store), tuple(methods), tuple(selectors), runs, split, train_split, subsample,
                            steps, device, intervals)


def export(store: FeatureStore | str | Path, split: str, format: str, out: str | Path,
           arrays: Sequence[str] | None = None, overwrite: bool = False) -> ExportResult:
    """Write ``split``'s arrays (default: every stored array but the kept inputs) and metadata to ``out`` as
    ``npy`` (``<out>/<array>/<video_id>.npy`` + ``metadata.csv``), ``parquet`` (``<out>/<split>.parquet``, one row per
    video) or ``webdataset`` (``<out>/<split>-%06d.tar``), bit for bit (``fs export``); see docs/store.md."""
    return export_split(_store(store), split, format, out, tuple(arrays) if arrays is not None else None, overwrite)


def synth(out: str | Path, videos: int = 8, classes: int = 2, seconds: tuple[float, float] = (12.0, 16.0),
          seed: int = 0, test_fraction: float = 0.25, jobs: int = 0, **options) -> Path:
    """Generate a synthetic untrimmed audio-visual dataset (``fs synth``); returns its ``manifest.csv``.
    ``options``: ``actions``, ``action_seconds``, ``action_share``, ``confounders``, ``confounder_kinds``."""
    from manifests.synth import generate_synthetic
    return generate_synthetic(out, videos, classes, tuple(seconds), seed, test_fraction,
                              jobs=jobs or os.cpu_count() or 1, **options)


def extract(manifest: str | Path, store: str | Path | None = None, *, descriptors: str = "image,audio,fused,r2p1d",
            weights: str = "imagenet", teacher_weights: str = "kinetics400", workers: int = 1, gpus: int = 0,
            dataset: str | None = None, retry_failed: bool = False, progress: bool = True, **options) -> FeatureStore:
    """Decode each video of ``manifest`` (a manifest CSV) once and write its arrays into ``store`` (``fs extract
    --manifest``); returns the store, opened read-only. Videos already stored are skipped, failures recorded.
    ``options``: the other ``launch`` settings (``batch_size``, ``in_flight``, ``seed``, ``hwaccel``,
    ``keep_inputs``, ``spatial_map`` (AVGN's spatial-glance inputs), ``video_timeout``, ...)."""
    from featurestore.cluster import close_client
    from featurestore.extract import run_extraction
    from featurestore.launch import launch
    from manifests.datasets import load_dataset

    ds = load_dataset(dataset, manifest)
    config, client = launch(gpus=gpus, workers=workers, descriptors=descriptors, student_weights=weights,
                            teacher_weights=teacher_weights, **options)
    path = Path(store) if store is not None else default_store_path()
    try:
        run_extraction(ds.manifest, FeatureStore(path, mode="a"), config, client, ds.name, ds.classes,
                       retry_failed=retry_failed, progress=progress)
    finally:
        close_client(client)
    return open_store(path)
