"""``fs bench``: every selector on the test split in one loop — accuracy, mAP, counted GFLOPs, wall time — plus the
accuracy/GFLOPs trade-off plot and the skimmer's sweep over subsampling factors and early-stop steps (Fig. 6)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from featurestore.store import FeatureStore, StoreError
from models.selection import Selector
from models.skim import SkimSelector
from pipelines.checkpoints import checkpoint_path
from pipelines.data import SplitData, load_split
from pipelines.methods import METHODS, BenchContext, build_selectors

SWEEP_SUBSAMPLE = (1, 2, 5, 10)
SWEEP_STEPS = tuple(range(1, 11))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one class: mean precision at the rank of each positive (scores sorted descending)."""
    order = np.argsort(-scores, kind="stable")
    hits = positive[order].astype(float)
    if hits.sum() == 0:
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """mAP over the classes that have test videos. scores (V, C), labels (V,)."""
    aps = [average_precision(scores[:, c], labels == c) for c in range(scores.shape[1])]
    return float(np.nanmean(aps))


@dataclass
class MethodResult:
    method: str
    top1: float
    mAP: float
    gflops_per_video: float
    seconds_per_video: float
    steps_per_video: float


def evaluate(selector: Selector, data: SplitData) -> MethodResult:
    """Run one selector over every video of ``data``; indices outside [0, N) are an error, not a number."""
    scores, gflops, seconds, n_steps = [], [], [], []
    for video in data.videos:
        t0 = time.perf_counter()
        sel = selector.select(video)
        seconds.append(time.perf_counter() - t0)
        n = video.n_steps
        if len(sel.steps) and (sel.steps.min() < 0 or sel.steps.max() >= n):
            raise RuntimeError(f"{selector.name} chose steps outside [0, {n}) for {video.video_id}")
        scores.append(sel.scores)
        gflops.append(sel.gflops)
        n_steps.append(len(sel.steps))
    s = np.stack(scores)
    y = data.labels.numpy()
    return MethodResult(selector.name, float((s.argmax(1) == y).mean()), mean_average_precision(s, y),
                        float(np.mean(gflops)), float(np.mean(seconds)), float(np.mean(n_steps)))


def sweep(ctx: BenchContext, data: SplitData) -> pd.DataFrame:
    """The skimmer over subsampling factors x early-stop steps (the papers' Fig. 6), plus UNIFORM for reference."""
    net = ctx.skim_model("skim")
    rows = []
    for s in SWEEP_SUBSAMPLE:
        for t in SWEEP_STEPS:
            r = evaluate(SkimSelector("skim", net, ctx.costs, steps=t, subsample=s), data)
            rows.append({"subsample": s, "steps": t, "top1": r.top1, "mAP": r.mAP, "gflops_per_video": r.gflops_per_video})
    return pd.DataFrame(rows)


def plot_tradeoff(table: pd.DataFrame, path: Path, title: str) -> None:
    """Accuracy against GFLOPs per video (log scale); points are numbered and named in the legend, so that
    methods of equal cost stay readable."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(11, max(5.5, 0.2 * len(table) + 1)))   # room for one legend line per method
    for i, r in enumerate(table.itertuples(), start=1):
        oracle, ours = r.method.startswith("ORACLE"), r.method.startswith("IMGAUD-SKIM")
        ax.scatter(r.gflops_per_video, 100 * r.top1, s=90 if ours else 50,
                   marker="*" if ours else ("x" if oracle else "o"),
                   color="C3" if ours else ("grey" if oracle else "C0"), zorder=3,
                   label=f"{i:>2}  {r.method}: {100 * r.top1:.1f}%, {r.gflops_per_video:.1f} GFLOPs")
        ax.annotate(str(i), (r.gflops_per_video, 100 * r.top1), textcoords="offset points",
                    xytext=(4, 4 + 7 * (i % 3)), fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("GFLOPs per video (counted with FlopCounterMode, 2 FLOPs per multiply-add)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False, handletextpad=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_sweep(sw: pd.DataFrame, uniform_top1: float | None, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    full = sw[sw["steps"] == 10]
    a.plot(full["subsample"], 100 * full["top1"], "o-", color="C3", label="IMGAUD-SKIM (T=10)")
    a.set_xlabel("subsampling factor s of the indexing features")
    a.set_xticks(list(SWEEP_SUBSAMPLE))
    dense = sw[sw["subsample"] == 1]
    b.plot(dense["steps"], 100 * dense["top1"], "o-", color="C3", label="IMGAUD-SKIM (s=1)")
    b.set_xlabel("early stop at step t")
    for ax, title in ((a, "(a) sparse indexing features"), (b, "(b) early stopping")):
        if uniform_top1 is not None:
            ax.axhline(100 * uniform_top1, ls="--", color="grey", label="UNIFORM")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run_bench(store: FeatureStore, runs: Path, out: Path, methods: tuple[str, ...] = tuple(METHODS),
              subsample: int = 5, steps: int = 3, do_sweep: bool = True,
              say: Callable[[str], None] = print) -> pd.DataFrame:
    """Evaluate, write ``bench.csv``, ``tradeoff.png`` (and ``sweep.csv``, ``sweep.png``) into ``out``."""
    if subsample < 1 or not 1 <= steps <= 10:
        raise ValueError("--subsample must be >= 1 and --steps within 1..10")
    ctx = BenchContext(store, runs, subsample, steps, say)
    selectors = build_selectors(ctx, methods)
    names = ("image", "audio", "fused") + (("r2p1d",) if ctx.has_r2p1d else ())
    data = load_split(store, "test", names)
    if not selectors:
        raise StoreError("no method could be evaluated (see the lines above)")
    rows = []
    for sel in selectors:
        r = evaluate(sel, data)
        rows.append(r.__dict__)
        say(f"  {r.method:<40} top1 {100 * r.top1:5.1f}%  mAP {100 * r.mAP:5.1f}%  {r.gflops_per_video:9.1f} GFLOPs")
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "bench.csv", index=False)
    title = f"{store.attrs.get('dataset')} test split: {len(data.videos)} videos, {len(data.classes)} classes"
    plot_tradeoff(table, out / "tradeoff.png", title)
    if do_sweep and checkpoint_path(runs, "skim").is_file():
        sw = sweep(ctx, data)
        sw.to_csv(out / "sweep.csv", index=False)
        uni = table.loc[table["method"] == "UNIFORM", "top1"]
        plot_sweep(sw, float(uni.iloc[0]) if len(uni) else None, out / "sweep.png")
    return table
