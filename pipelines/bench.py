"""``fs bench``: every selector on the test split in one loop — accuracy, mAP, counted GFLOPs, wall time — plus the
accuracy/GFLOPs trade-off plot and the skimmer's sweep over subsampling factors and early-stop steps (Fig. 6)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from featurestore.cost import unit_gflops
from featurestore.store import FeatureStore, StoreError
from models.baselines import HeadSelector, LSTMSelector, NonRecurrentSelector, SkimSelector
from models.selection import Selector
from pipelines.data import SplitData, load_split
from pipelines.train_head import step_head
from pipelines.train_sampler import clip_classifier, load_sampler
from pipelines.train_skim import load_skim_model
from models.avgn import AVGNSelector
from models.scsampler import SamplerSelector
from pipelines.train_avgn import load_avgn

BLIND = ("RANDOM", "UNIFORM", "FRONT", "CENTER", "END")
METHODS = BLIND + ("DENSE", "SCSAMPLER", "LSTM", "NON-RECURRENT", "SKIM", "SKIM-DENSE", "SKIM-ARGMAX",
                   "SKIM-VISUAL", "SKIM-SINGLE", "ORACLE", "SAMPLERS", "ORACLE-F", "AVGN")
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


def build_selectors(store: FeatureStore, runs: Path, methods: tuple[str, ...], subsample: int, steps: int,
                    say: Callable[[str], None]) -> list[Selector]:
    """The selectors asked for, in table order; those whose checkpoint is missing are skipped with a line saying
    how to train them. The per-step head the baselines average is trained on first use."""
    pair = unit_gflops()["pair"]
    class_index = {c: i for i, c in enumerate(store.attrs["classes"])}
    head_rules = {"RANDOM": "random", "UNIFORM": "uniform", "FRONT": "front", "CENTER": "center", "END": "end",
                  "DENSE": "dense", "SCSAMPLER": "confidence", "ORACLE": "oracle"}
    sparse = dict(subsample=subsample, steps=steps)
    skims = {"SKIM": ("skim", sparse, f"IMGAUD-SKIM (s={subsample}, T={steps})"),
             "SKIM-DENSE": ("skim", dict(subsample=1, steps=10), "IMGAUD-SKIM (s=1, T=10)"),
             "SKIM-ARGMAX": ("skim", dict(sparse, hard=True), f"IMGAUD-SKIM argmax (s={subsample}, T={steps})"),
             "SKIM-VISUAL": ("skim-visual", sparse, f"IMGAUD-SKIM visual indexing (s={subsample}, T={steps})"),
             "SKIM-SINGLE": ("skim-single", sparse, f"IMGAUD-SKIM single query (s={subsample}, T={steps})"),
             "LSTM": ("lstm", None, "LSTM"), "NON-RECURRENT": ("non-recurrent", None, "NON-RECURRENT")}
    head = None
    nets: dict[str, object] = {}
    out: list[Selector] = []
    for m in (m for m in METHODS if m in methods):
        if m in head_rules:
            if head is None:
                head = step_head(store, runs, "fused", say)
            name = "ORACLE (upper bound)" if m == "ORACLE" else m
            out.append(HeadSelector(name, head, pair, rule=head_rules[m], class_index=class_index))
            continue
        if m not in skims:
            continue                      # SAMPLERS and ORACLE-F are added below
        model, options, name = skims[m]
        if model not in nets:
            path = runs / f"{model}.pt"
            nets[model] = load_skim_model(store, path, model)[0] if path.is_file() else None
            if nets[model] is None:
                say(f"skipping {model}: no checkpoint at {path} (train it: fs train-skim --model {model})")
        net = nets[model]
        if net is None:
            continue
        if m == "LSTM":
            out.append(LSTMSelector(name, net, pair))
        elif m == "NON-RECURRENT":
            out.append(NonRecurrentSelector(name, net, pair))
        else:
            out.append(SkimSelector(name, net, pair, **options))
    if "AVGN" in methods:
        out += avgn_selectors(store, runs, say)
    if "SAMPLERS" in methods or "ORACLE-F" in methods:
        out += sampler_selectors(store, runs, "SAMPLERS" in methods, "ORACLE-F" in methods, class_index, say)
    return out


AVGN_GRID = [(k, t_g) for k in (1, 4, 10) for t_g in (2, 4, 8, None)]


def avgn_selectors(store: FeatureStore, runs: Path, say: Callable[[str], None]) -> list[Selector]:
    """AVGN rows: top-k by saliency with T_G glances over the k x T_G grid, and the ablations (no audio tokens,
    no L_mask) at k = 4 for every T_G."""
    u = unit_gflops()
    out: list[Selector] = []
    for ablation, label in (("avgn", ""), ("avgn-no-audio", " no audio tokens"), ("avgn-no-mask", " no L_mask")):
        path = runs / f"{ablation}.pt"
        if not path.is_file():
            say(f"skipping {ablation}: no checkpoint at {path} (fs train-avgn" +
                {"avgn": "", "avgn-no-audio": " --no-audio-tokens", "avgn-no-mask": " --no-mask-loss"}[ablation] + ")")
            continue
        model, cfg = load_avgn(store, path)
        grid = AVGN_GRID if ablation == "avgn" else [(4, t_g) for t_g in (2, 4, 8, None)]
        for k, t_g in grid:
            name = f"AVGN{label} (k={k}, T_G={'all' if t_g is None else t_g})"
            out.append(AVGNSelector(name, model, u, k=k, t_g=t_g, t=cfg["t"]))
    return out


def sampler_selectors(store: FeatureStore, runs: Path, samplers: bool, oracle: bool, class_index: dict[str, int],
                      say: Callable[[str], None]) -> list[Selector]:
    """SCSampler rows: every trained sampler (each loss x modality), the AV combinations and joint training, each
    recognised by the student head and, when the store has r2p1d, by the R(2+1)D head f; plus f's oracle."""
    u = unit_gflops()
    unit = {"image": u["image"], "audio": u["audio"], "fusion": u["fusion"], "r2p1d": u["clip"]}
    has_r2p1d = "r2p1d" in store.attrs.get("descriptors", [])
    found = {}
    for path in sorted(runs.glob("sampler-*.pt")):
        model, cfg = load_sampler(store, path)
        found[(cfg["modality"], cfg["loss"])] = model
    if samplers and not found:
        say(f"skipping SCSampler rows: no sampler checkpoints in {runs} (fs train-sampler --modality audio|visual "
            f"--loss ac|sal-cl|sal-rank)")
    recognisers = []
    if found or oracle:
        recognisers.append(("student", step_head(store, runs, "fused", say), "fused"))
        if has_r2p1d:
            recognisers.append(("R(2+1)D", clip_classifier(store, runs, say), "r2p1d"))
    out: list[Selector] = []
    for rec_name, head, feature in recognisers if samplers else []:
        for (modality, loss), model in sorted(found.items()):
            label = "AV-joint-training" if modality == "av" else modality
            out.append(SamplerSelector(f"SCS {label} {loss.upper()} -> {rec_name}", {modality: model}, (head, feature),
                                       unit))
        visual = found.get(("visual", "ac")) or next((m for (mo, _), m in found.items() if mo == "visual"), None)
        audio = found.get(("audio", "sal-rank")) or next((m for (mo, _), m in found.items() if mo == "audio"), None)
        if visual is not None and audio is not None:
            for combine, extra in (("convex-score", " (a=0.9)"), ("convex-list", " (a=0.8)"), ("union-list", " (K'=8)"),
                                   ("intersect-list", "")):
                out.append(SamplerSelector(f"SCS AV-{combine}{extra} -> {rec_name}", {"visual": visual, "audio": audio},
                                           (head, feature), unit, combine=combine))
    if oracle:
        if not has_r2p1d:
            say("skipping ORACLE-F: the store has no r2p1d descriptors")
        else:
            f = clip_classifier(store, runs, say)
            out.append(HeadSelector("ORACLE-F (SCSampler upper bound)", f, u["clip"], feature="r2p1d", rule="oracle",
                                    class_index=class_index))
    return out


def sweep(store: FeatureStore, runs: Path, data: SplitData) -> pd.DataFrame:
    """The skimmer over subsampling factors x early-stop steps (the papers' Fig. 6), plus UNIFORM for reference."""
    net = load_skim_model(store, runs / "skim.pt", "skim")[0]
    pair = unit_gflops()["pair"]
    rows = []
    for s in SWEEP_SUBSAMPLE:
        for t in SWEEP_STEPS:
            r = evaluate(SkimSelector("skim", net, pair, steps=t, subsample=s), data)
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


def run_bench(store: FeatureStore, runs: Path, out: Path, methods: tuple[str, ...] = METHODS, subsample: int = 5,
              steps: int = 3, do_sweep: bool = True, say: Callable[[str], None] = print) -> pd.DataFrame:
    """Evaluate, write ``bench.csv``, ``tradeoff.png`` (and ``sweep.csv``, ``sweep.png``) into ``out``."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    if subsample < 1 or not 1 <= steps <= 10:
        raise ValueError("--subsample must be >= 1 and --steps within 1..10")
    names = ("image", "audio", "fused") + (("r2p1d",) if "r2p1d" in store.attrs.get("descriptors", []) else ())
    data = load_split(store, "test", names)
    selectors = build_selectors(store, runs, methods, subsample, steps, say)
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
    if do_sweep and (runs / "skim.pt").is_file():
        sw = sweep(store, runs, data)
        sw.to_csv(out / "sweep.csv", index=False)
        uni = table.loc[table["method"] == "UNIFORM", "top1"]
        plot_sweep(sw, float(uni.iloc[0]) if len(uni) else None, out / "sweep.png")
    return table
