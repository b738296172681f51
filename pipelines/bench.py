"""``fs bench``: every selector on the test split in one loop — accuracy, mAP, counted GFLOPs, wall time — plus the
accuracy/GFLOPs trade-off plot and the skimmer's sweep over subsampling factors and early-stop steps (Fig. 6)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from featurestore.progress import progress_bar, tracker
from featurestore.store import FeatureStore, StoreError
from models.selection import NO_STEP, Selector, VideoBlock, select_block, to_device
from models.skim import SkimSelector
from pipelines.checkpoints import checkpoint_path, runs_dir
from pipelines.data import SplitData, action_segments, load_split, resolve_device
from pipelines.methods import (METHODS, BenchContext, bench_arrays, build_rows, check_methods,
                               role)
from pipelines.report import ENERGY_MARK, GalleryItem, below_energy, gallery_videos, write_report
from pipelines.show import SHOW_METHODS, render_video, show_rows
from pipelines.train import bound_heap

log = logging.getLogger(__name__)

SWEEP_SUBSAMPLE = (1, 2, 5, 10)
SWEEP_STEPS = tuple(range(1, 11))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one class: mean precision at the rank of each positive (scores sorted descending); tied scores form
    one group, the precision at its end (as scikit-learn's average_precision_score), whatever order they are in."""
    ap = average_precisions(np.asarray(scores, float)[None], np.asarray(positive)[None])[0]
    return float(ap)


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
    train_top1: float = float("nan")      # the same selector on the training split, evaluated the same way
    top1_lo: float = float("nan")         # 95 % bootstrap interval over test videos
    top1_hi: float = float("nan")
    mAP_lo: float = float("nan")
    mAP_hi: float = float("nan")
    segment_hit: float = float("nan")     # share of chosen steps inside a ground-truth action segment
    one_class: bool = False               # every test video got the same predicted class
    role: str = ""                        # "control" (energy), "learned", "baseline" or "plugin" (methods.role)


@dataclass
class Predictions:
    """One selector's answers over a split: class scores (V, C), labels (V,), per video how many chosen steps lie
    inside an action segment of the videos that have them, and mean cost, time and steps per video."""

    scores: np.ndarray
    labels: np.ndarray
    hits: np.ndarray              # (V,) chosen steps inside a ground-truth action segment
    chosen: np.ndarray            # (V,) chosen steps of each annotated video (0 for a video without segments)
    gflops: float
    seconds: float
    steps: float
    annotated: bool = False       # some video of the split has ground-truth action segments

    @property
    def segment_hit(self) -> float:
        """Share of the chosen steps of annotated videos that lie inside an action segment (NaN without any)."""
        total = int(self.chosen.sum())
        return float(self.hits.sum() / total) if self.annotated and total else float("nan")


def block_videos(device: str) -> dict:
    """Block size of :meth:`~pipelines.data.SplitData.blocks` on ``device``: small enough for a CPU's caches and a
    few hundred MB of padded arrays, large on a GPU."""
    return {"videos": 2048, "values": 1 << 30} if device.startswith("cuda") else {"videos": 128, "values": 32 << 20}


def action_masks(block: VideoBlock) -> tuple[np.ndarray, np.ndarray] | None:
    """(B, N) whether each step of the block starts inside a ground-truth action segment, and (B,) which videos have
    segments (the rule of :func:`~pipelines.data.action_mask`); None when no video of the block has any."""
    segments = [action_segments(vid, attrs) for vid, attrs in zip(block.video_ids, block.attrs)]
    if not any(segments):
        return None
    width = max(len(g) for g in segments)
    bounds = np.full((len(segments), width, 2), np.nan)
    for i, g in enumerate(segments):
        if g:
            bounds[i, :len(g)] = g
    t = block.padded("t").cpu().numpy()[:, :, None]
    inside = ((t >= bounds[:, None, :, 0]) & (t < bounds[:, None, :, 1])).any(-1)
    return inside & block.mask.cpu().numpy(), np.array([bool(g) for g in segments])


def share_runs(selectors: list[Selector]) -> None:
    """Skimmer rows that differ only in their early stop read one run of the longest (a prefix each)."""
    longest: dict = {}
    skims = [s for s in selectors if isinstance(s, SkimSelector)]
    for s in skims:
        key = (id(s.skimmer), s.subsample, s.hard)
        longest[key] = max(longest.get(key, 0), s.run_steps)
    for s in skims:
        s.run_steps = longest[(id(s.skimmer), s.subsample, s.hard)]


def run_selectors(selectors: list[Selector], data: SplitData,
                  progress: Callable[[int, int], None] | None = None, device: str | None = None) -> list[Predictions]:
    """Run every selector over every video of ``data``, a block of videos at a time (:meth:`SplitData.blocks`):
    each block is read once and every selector answers it whole (``select_batch``, or its ``select`` per video),
    sharing the work they have in common through the block. Indices outside [0, N) are an error, not a number.
    ``progress(done, total)`` after each block."""
    device = device or getattr(data, "device", "cpu")
    share_runs(selectors)
    v, k_sel = len(data), len(selectors)
    scores: list = [None] * k_sel
    gflops, counts, hits, chosen = (np.zeros((k_sel, v)) for _ in range(4))
    seconds = np.zeros(k_sel)
    annotated, done = False, 0
    for idx, block in _blocks(data, device):
        n = block.lengths.cpu().numpy()
        segments = action_masks(block)
        annotated |= segments is not None
        for k, selector in enumerate(selectors):
            t0 = time.perf_counter()
            sel = select_block(selector, block)
            seconds[k] += time.perf_counter() - t0
            valid = sel.steps != NO_STEP
            bad = (valid & ((sel.steps < 0) | (sel.steps >= n[:, None]))).any(1)
            if bad.any():
                i = int(np.nonzero(bad)[0][0])
                raise RuntimeError(f"{selector.name} chose steps outside [0, {n[i]}) for {block.video_ids[i]}")
            if scores[k] is None:
                scores[k] = np.zeros((v, sel.scores.shape[1]))
            scores[k][idx] = sel.scores
            gflops[k, idx] = sel.gflops
            counts[k, idx] = valid.sum(1)
            if segments is not None:
                inside, has = segments
                at = np.take_along_axis(inside, np.where(valid, sel.steps, 0), 1) & valid
                hits[k, idx] = np.where(has, at.sum(1), 0)
                chosen[k, idx] = np.where(has, valid.sum(1), 0)
        done += len(idx)
        if progress:
            progress(done, v)
    labels = data.labels.numpy()
    return [Predictions(scores[k] if scores[k] is not None else np.zeros((0, 0)), labels,
                        hits[k], chosen[k], float(gflops[k].mean()) if v else float("nan"),
                        float(seconds[k] / max(v, 1)), float(counts[k].mean()) if v else float("nan"), annotated)
            for k in range(k_sel)]


def _blocks(data, device: str) -> Iterator[tuple[np.ndarray, VideoBlock]]:
    """(video indices, block) over a :class:`SplitData`, or over any split-like object whose ``videos`` are held in
    memory (consecutive blocks)."""
    size = block_videos(device)
    if isinstance(data, SplitData):
        for idx in data.blocks(**size):
            yield idx, data.block(idx, device)
        return
    for i in range(0, len(data.videos), size["videos"]):
        idx = np.arange(i, min(i + size["videos"], len(data.videos)))
        yield idx, VideoBlock.of([data.videos[int(j)] for j in idx], device)


def run_selector(selector: Selector, data: SplitData) -> Predictions:
    """One selector's :class:`Predictions` over ``data``."""
    return run_selectors([selector], data)[0]


def average_precisions(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AP of each row: scores and positives (D, V), precision averaged at the rank of each positive (NaN without
    positives). The vectorised form of :func:`average_precision`."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(positive, order, axis=1).astype(float)
    ranked = np.take_along_axis(scores, order, axis=1)
    v = hits.shape[1]
    # a tie group is ranked as a whole: each position takes the precision at the last position of its group
    ends = np.where(np.concatenate([ranked[:, 1:] != ranked[:, :-1], np.ones((len(ranked), 1), bool)], 1),
                    np.arange(v), v)
    ends = np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1]
    precision = np.take_along_axis(np.cumsum(hits, 1), ends, axis=1) / (ends + 1)
    n_pos = hits.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, (precision * hits).sum(1) / n_pos, np.nan)


def bootstrap_intervals(scores: np.ndarray, labels: np.ndarray, draws: int = 1000,
                        seed: int = 0) -> tuple[tuple[float, float], tuple[float, float]]:
    """95 % percentile intervals of top-1 and mAP over test sets resampled from the videos with replacement.

    A resample is scored through how often it draws each video (the same draws for every row): each class is
    ranked once, and a resample's AP weighs each video by its count, a video drawn twice being a tie with itself;
    equal to sorting every resample (:func:`average_precisions`), in O(draws x videos) per class."""
    counts = _draw_counts(len(labels), draws, seed)                                # (D, V)
    v = len(labels)
    top1 = counts @ (scores.argmax(1) == labels).astype(np.float64) / v
    aps = np.stack([_weighted_average_precisions(scores[:, c], labels == c, counts)
                    for c in range(scores.shape[1])], 1)                         # (D, C)
    with np.errstate(all="ignore"):
        maps = np.nanmean(np.where(np.isnan(aps).all(1, keepdims=True), 0.0, aps), 1)
    lo_t, hi_t = np.percentile(top1, [2.5, 97.5])
    lo_m, hi_m = np.percentile(maps, [2.5, 97.5])
    return (float(lo_t), float(hi_t)), (float(lo_m), float(hi_m))


@lru_cache(maxsize=4)
def _draw_counts(v: int, draws: int, seed: int) -> np.ndarray:
    """(draws, v): how many times each resample draws each video (``default_rng(seed).integers(0, v, (draws, v))``)."""
    idx = np.random.default_rng(seed).integers(0, v, (draws, v))
    counts = np.bincount((idx + v * np.arange(draws)[:, None]).ravel(), minlength=draws * v).reshape(draws, v)
    counts.flags.writeable = False
    return counts


def _weighted_average_precisions(scores: np.ndarray, positive: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AP of one class in every resample given by ``counts`` (D, V): videos ranked by descending score, tied scores
    one group taking the precision at its end (as :func:`average_precisions`). NaN where a resample has no positive."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    pos = positive[order].astype(np.float64)
    w = counts[:, order].astype(np.float64)
    v = len(order)
    ends = np.where(np.concatenate([ranked[1:] != ranked[:-1], [True]]), np.arange(v), v)
    ends = np.minimum.accumulate(ends[::-1])[::-1]                     # each position's tie-group end
    cum_w, cum_pos = np.cumsum(w, 1), np.cumsum(w * pos, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = cum_pos[:, ends] / cum_w[:, ends]
        n_pos = cum_pos[:, -1]
        return np.where(n_pos > 0, np.nansum(precision * w * pos, 1) / n_pos, np.nan)


def top1_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(1) == labels).mean())


def evaluate_all(selectors: list[Selector], data: SplitData, train: SplitData | None = None,
                 intervals: bool = True, progress: Callable[[str, int, int], None] | None = None,
                 predictions: list[Predictions] | None = None, extra: list[Selector] = (),
                 device: str | None = None) -> list[MethodResult]:
    """Each selector's row: top-1 and mAP on ``data`` with bootstrap intervals, cost, segment_hit, the one-class
    flag, and its top-1 on ``train`` when given; one pass over each split for all of them. The test split's
    :class:`Predictions` are appended to ``predictions`` when given (the gallery picks videos from them), followed
    by those of the ``extra`` selectors, which run in the same pass over the test split but get no row (the
    sweep)."""
    rows = []
    def split_progress(name: str):
        return (lambda i, n: progress(name, i, n)) if progress else None

    test = run_selectors(list(selectors) + list(extra), data, split_progress("test"), device)
    if predictions is not None:
        predictions.extend(test)
    for selector, p in zip(selectors, test):
        r = MethodResult(selector.name, top1_accuracy(p.scores, p.labels), mean_average_precision(p.scores, p.labels),
                         p.gflops, p.seconds, p.steps, segment_hit=p.segment_hit,
                         one_class=bool(len(np.unique(p.labels)) > 1 and len(np.unique(p.scores.argmax(1))) == 1))
        if intervals:
            (r.top1_lo, r.top1_hi), (r.mAP_lo, r.mAP_hi) = bootstrap_intervals(p.scores, p.labels)
        rows.append(r)
    if train is not None:
        for r, t in zip(rows, run_selectors(selectors, train, split_progress("train"), device)):
            r.train_top1 = top1_accuracy(t.scores, t.labels)
    return rows


def evaluate(selector: Selector, data: SplitData, train: SplitData | None = None,
             intervals: bool = True) -> MethodResult:
    """One selector's row (see :func:`evaluate_all`)."""
    return evaluate_all([selector], data, train, intervals)[0]


def sweep_selectors(ctx: BenchContext) -> list[SkimSelector]:
    """The skimmer at every (s, T) of the sweep, s major: the ten early stops of each s read one T = 10 run."""
    net = ctx.skim_model("skim")
    return [SkimSelector(f"sweep s={s} T={t}", net, ctx.costs, steps=t, subsample=s, run_steps=max(SWEEP_STEPS))
            for s in SWEEP_SUBSAMPLE for t in SWEEP_STEPS]


def sweep_table(selectors: list[SkimSelector], predictions: list[Predictions]) -> pd.DataFrame:
    """The sweep's table (the papers' Fig. 6) from its selectors' predictions on the test split."""
    return pd.DataFrame([{"subsample": s.subsample, "steps": s.steps, "top1": top1_accuracy(p.scores, p.labels),
                          "mAP": mean_average_precision(p.scores, p.labels), "gflops_per_video": p.gflops,
                          "segment_hit": p.segment_hit} for s, p in zip(selectors, predictions)])


def sweep(ctx: BenchContext, data: SplitData, device: str | None = None) -> pd.DataFrame:
    """The skimmer over subsampling factors x early-stop steps (the papers' Fig. 6), in one pass over ``data``."""
    selectors = sweep_selectors(ctx)
    return sweep_table(selectors, run_selectors(selectors, data, device=device))


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
        if r.top1_hi == r.top1_hi:          # not NaN: the 95 % bootstrap interval
            err = [[100 * (r.top1 - r.top1_lo)], [100 * (r.top1_hi - r.top1)]]
            ax.errorbar(r.gflops_per_video, 100 * r.top1, yerr=err, fmt="none", ecolor="grey", alpha=0.5, capsize=2,
                        zorder=2)
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


def format_table(table: pd.DataFrame) -> str:
    """The bench table for a terminal: percentages with their intervals, a flag on rows that predict one class, a
    mark on learned rows that do not beat the best energy control."""
    def pct(v: float) -> str:
        return "-" if v != v else f"{100 * v:.1f}"

    def interval(v: float, lo: float, hi: float) -> str:
        return pct(v) if lo != lo else f"{pct(v)} [{100 * lo:.0f}-{100 * hi:.0f}]"

    shown = pd.DataFrame({
        "method": table["method"] + np.where(table["one_class"], " !", "") + np.where(below_energy(table),
                                                                                       ENERGY_MARK, ""),
        "top1": [interval(*v) for v in zip(table["top1"], table["top1_lo"], table["top1_hi"])],
        "train_top1": table["train_top1"].map(pct),
        "mAP": [interval(*v) for v in zip(table["mAP"], table["mAP_lo"], table["mAP_hi"])],
        "segment_hit": table["segment_hit"].map(pct),
        "gflops_per_video": table["gflops_per_video"].map(lambda v: f"{v:.1f}"),
        "seconds_per_video": table["seconds_per_video"].map(lambda v: f"{v:.4f}"),
        "steps_per_video": table["steps_per_video"].map(lambda v: f"{v:.1f}")})
    return shown.to_string(index=False)


def bench_notes(table: pd.DataFrame, n_test: int | None = None) -> list[str]:
    """Lines a reader needs under the table: collapsed rows, and a test split too small to separate methods."""
    n_test = n_test if n_test is not None else table.attrs.get("n_test", 0)
    notes = []
    for r in table[table["one_class"]].itertuples():
        fits = "fits its training split" if r.train_top1 >= 0.9 else f"trains to {100 * r.train_top1:.0f}%"
        notes.append(f"! {r.method}: predicts one class for every test video ({fits}): not ranked, look at its model")
    below = below_energy(table)
    if below.any():
        controls = table[table["role"] == "control"]
        best = controls.loc[controls["top1"].idxmax()]
        notes.append(f"{ENERGY_MARK.strip()}: {int(below.sum())} learned or plug-in selector row(s) whose top-1 does "
                     f"not beat the best energy control, {best['method']} ({100 * best['top1']:.1f}%: the K loudest or "
                     f"most moving steps, no learned model): their learning buys nothing over the raw signal here")
    widest = float((table["top1_hi"] - table["top1_lo"]).max()) if len(table) else 0.0
    if n_test < 30 or widest > 0.3:
        notes.append(f"the test split has {n_test} videos: top-1 intervals span up to {100 * widest:.0f} points, too "
                     f"few to separate the methods; for a benchmark-sized set see docs/benchmark.md (e.g. fs synth --out "
                     f"fs-data/long216 --videos 216 --classes 8 --seconds 24:40 --test-fraction 0.3334 --actions 1:2 "
                     f"--action-seconds 6:14 --action-share 0.6)")
    return notes


def evaluate_methods(store: FeatureStore, methods: tuple[str, ...] = ("UNIFORM",), selectors: tuple = (),
                     runs: Path | str | None = None, split: str = "test", train_split: str | None = "train",
                     subsample: int = 5, steps: int = 3, device: str = "cpu", intervals: bool = True,
                     say: Callable[[str], None] | None = None) -> pd.DataFrame:
    """The bench's table for ``methods`` (registry names) and your own ``selectors`` (objects with ``name`` and
    ``select``), evaluated on ``split`` (and their top-1 on ``train_split``), one row each, as a DataFrame with the
    columns of ``bench.csv``; nothing is written. Checkpoints come from ``runs`` (``$FS_RUNS`` or ``fs-runs``)."""
    for sel in selectors:
        if not (isinstance(getattr(sel, "name", None), str) and callable(getattr(sel, "select", None))):
            raise TypeError(f"{sel!r} is not a selector: it needs a str `name` and a `select(video)` method")
    ctx = BenchContext(store, runs_dir(runs), subsample, steps, say or log.info)
    built = build_rows(ctx, tuple(methods)) + [("", sel) for sel in selectors]
    if not built:
        raise ValueError("nothing to evaluate: name methods or pass selectors")
    names = bench_arrays(ctx, tuple(methods))
    device = resolve_device(device)
    data = load_split(store, split, names, device)
    train = load_split(store, train_split, names, device) if train_split else None
    for _, sel in built:
        to_device(sel, device)
    try:
        results = evaluate_all([sel for _, sel in built], data, train, intervals=intervals, device=device)
    finally:
        for _, sel in built:
            to_device(sel, "cpu")
    return results_table(built, results, len(data))


def results_table(built: list[tuple[str, Selector]], results: list[MethodResult], n_test: int) -> pd.DataFrame:
    """The bench's table: one row per result, with the role of the method that built it (a selector built outside
    the registry, or passed in as an object with method "", is a plug-in)."""
    for (method, _), r in zip(built, results):
        r.role = role(method)
    table = pd.DataFrame([r.__dict__ for r in results])
    table.attrs["n_test"] = n_test
    return table


def run_bench(store: FeatureStore, runs: Path, out: Path, methods: tuple[str, ...] = tuple(METHODS),
              subsample: int = 5, steps: int = 3, do_sweep: bool = True,
              say: Callable[[str], None] = log.info, gallery: int = 0, device: str = "auto") -> pd.DataFrame:
    """Evaluate, write ``bench.csv``, ``tradeoff.png`` (and ``sweep.csv``, ``sweep.png``), ``gallery/*.png`` for
    ``gallery`` test videos (see :func:`write_gallery`) and ``report.html`` with all of them into ``out``.
    Selection runs on ``device`` (auto: the first GPU when torch sees one), in blocks of videos; each split is
    resident on a GPU when it fits (as for the trainers), else streamed."""
    check_methods(methods)
    if subsample < 1 or not 1 <= steps <= 10:
        raise ValueError("--subsample must be >= 1 and --steps within 1..10")
    device = resolve_device(device)
    bound_heap()            # blocks of varying padded shapes would otherwise fragment the heap over a long run
    ctx = BenchContext(store, runs, subsample, steps, say)
    names = bench_arrays(ctx, methods)
    data = load_split(store, "test", names, device)
    train = load_split(store, "train", names, device)
    built = build_rows(ctx, methods)
    selectors = [sel for _, sel in built]
    if not selectors:
        raise StoreError("no method could be evaluated (see the lines above)")
    for sel in selectors:
        to_device(sel, device)
    say(f"evaluating {len(selectors)} selectors on {len(data)} test and {len(train)} training videos on {device} "
        f"(one pass over each split, blocks of videos)")
    bars: dict = {}

    def progress(split: str, i: int, n: int) -> None:
        if split not in bars:                 # one bar a split
            bars[split] = progress_bar(n, f"bench {split}", logger=log)
        tracker(bars[split])(i, n)
    test_predictions: list[Predictions] = []
    swept = sweep_selectors(ctx) if do_sweep and checkpoint_path(runs, "skim").is_file() else []
    if swept:
        say(f"with the sweep: {len(swept)} skimmer rows (s x T) on the test split, one T = 10 run per s")
    results = evaluate_all(selectors, data, train, progress=progress, predictions=test_predictions, extra=swept,
                           device=device)
    test_predictions, sweep_predictions = test_predictions[:len(selectors)], test_predictions[len(selectors):]
    for bar in bars.values():
        bar.close()
    for sel in selectors + swept:         # the gallery and fs show answer one video at a time, on the CPU
        to_device(sel, "cpu")
    table = results_table(built, results, len(data.videos))
    for r in results:
        say(f"  {r.method:<40} top1 {100 * r.top1:5.1f}% [{100 * r.top1_lo:3.0f}-{100 * r.top1_hi:3.0f}]  "
            f"train {100 * r.train_top1:5.1f}%  mAP {100 * r.mAP:5.1f}%  {r.gflops_per_video:9.1f} GFLOPs"
            + ("  ONE CLASS" if r.one_class else ""))
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "bench.csv", index=False)
    title = (f"{store.attrs.get('dataset')} test split: {len(data.videos)} videos, {len(data.classes)} classes "
             f"(bars: 95 % bootstrap intervals)")
    plot_tradeoff(table, out / "tradeoff.png", title)
    figures = {"accuracy against GFLOPs per video": out / "tradeoff.png"}
    sw = None
    if swept:
        sw = sweep_table(swept, sweep_predictions)
        sw.to_csv(out / "sweep.csv", index=False)
        uni = table.loc[table["method"] == "UNIFORM", "top1"]
        plot_sweep(sw, float(uni.iloc[0]) if len(uni) else None, out / "sweep.png")
        figures["the skimmer's sweep (Fig. 6): sparse indexing features and early stopping"] = out / "sweep.png"
    items, ref = write_gallery(ctx, data, table, selectors, test_predictions, gallery, out / "gallery") \
        if gallery > 0 else ([], "")
    table.attrs["gallery"] = len(items)
    write_report(out / "report.html", table, store.attrs, store.info(), bench_notes(table), figures, sw, items, ref)
    return table


def write_gallery(ctx: BenchContext, data: SplitData, table: pd.DataFrame, selectors: list[Selector],
                  predictions: list[Predictions], k: int, folder: Path) -> tuple[list[GalleryItem], str]:
    """``fs show`` figures of ``k`` test videos, chosen by the skimmer's confidence (else the first row's): the most
    and the least confident, right and wrong. The figures show the bench's own rows (UNIFORM, the best SCSampler
    combination and AVGN row of ``table``, and the skimmer that chose the videos). Returns the items and the method
    whose confidence chose them."""
    ref = next((i for i, s in enumerate(selectors) if s.name.startswith("IMGAUD-SKIM (")), 0)
    rows = show_rows(selectors, table, tuple(m for m in SHOW_METHODS if m != "SKIM"))
    if selectors[ref] not in rows:
        rows.append(selectors[ref])
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):           # figures of an earlier run are not this run's gallery
        old.unlink()
    items = []
    scores = predictions[ref].scores
    chosen = gallery_videos(scores, predictions[ref].labels, k)
    with progress_bar(len(chosen), "gallery", unit="figure", logger=log) as bar:
        for i, bucket in chosen:
            video = data.videos[i]
            render_video(ctx.store, video, [(s.name, s.select(video)) for s in rows],
                         folder / f"{video.video_id}.png", subtitle=f"{bucket}, by {selectors[ref].name}")
            items.append(GalleryItem(video.video_id, bucket, float(scores[i].max()),
                                     folder / f"{video.video_id}.png"))
            bar.update(1)
    return items, selectors[ref].name
