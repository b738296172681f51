"""The bench rows of every method on a small fabricated store with fixed seeds: chosen steps, scores, GFLOPs.

``python -m tests.bench_rows`` rewrites ``tests/fixtures/bench_rows.json``; do that only in the commit that changes a
method's behaviour on purpose, and say so in its message. ``test_bench_rows.py`` recomputes the rows and compares.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "bench_rows.json"


def compute_rows(tmp: Path) -> dict[str, dict[str, dict]]:
    """{method row name: {video_id: {"steps", "scores", "gflops"}}} for every method of ``fs bench``, plus
    ``"__order__"``: the row names in table order."""
    from pipelines.methods import METHODS, BenchContext, build_selectors
    from pipelines.data import load_split
    from pipelines.train_avgn import train_avgn
    from pipelines.train_sampler import train_sampler
    from pipelines.train_skim import SKIM_MODELS, train_skim
    from tests.test_bench import fabricate_store

    torch.set_num_threads(1)
    store = fabricate_store(tmp / "rows.zarr", n_videos=24, seed=7, r2p1d=True)
    runs = tmp / "runs"
    quiet = lambda *_: None  # noqa: E731
    for model in SKIM_MODELS:
        train_skim(store, runs, model, epochs=3, batch_size=6, lr=0.05, milestones=(2,), seed=0, sized=False)
    for modality, loss in (("visual", "ac"), ("audio", "sal-rank"), ("av", "sal-cl")):
        train_sampler(store, runs, modality, loss, epochs=2, batch_size=4, seed=0, say=quiet, sized=False)
    for audio_tokens, mask_loss in ((True, True), (False, True), (True, False)):
        train_avgn(store, runs, layers=1, heads=2, dim=32, t=8, k=2, epochs=2, batch_size=4,
                   audio_tokens=audio_tokens, mask_loss=mask_loss, seed=0, sized=False)
    names = ("image", "audio", "fused", "r2p1d")
    data = load_split(store, "test", names)
    rows: dict = {"__order__": []}
    for sel in build_selectors(BenchContext(store, runs, subsample=5, steps=3, say=quiet), tuple(METHODS)):
        rows[sel.name] = {}
        rows["__order__"].append(sel.name)
        for video in data.videos:
            out = sel.select(video)
            rows[sel.name][video.video_id] = {"steps": np.asarray(out.steps).tolist(),
                                              "scores": np.asarray(out.scores, np.float64).tolist(),
                                              "gflops": float(out.gflops)}
    return rows


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        result = compute_rows(Path(d))
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(result)} method rows to {FIXTURE}", file=sys.stderr)
