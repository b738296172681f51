"""The bench rows of every method on a small fabricated store with fixed seeds: chosen steps, scores, GFLOPs.

Every network the bench loads (per-step heads, skimmers, LSTM, samplers, AVGN) is built from a seed and saved as a
checkpoint, not trained: training amplifies the rounding differences between CPUs' kernels (the fixture, recorded
on one machine, failed on another), while a forward pass of fixed weights agrees to float rounding everywhere. What
is pinned is the selectors' behaviour on given weights; the trainers have tests of their own.

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


def seeded(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``net`` with its initial weights redrawn from ``seed`` and its normalisation statistics set away from the
    identity (BatchNorm running moments, AVGN's standardisation), so that eval-mode normalisation is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / max(1, p[0].numel() if p.dim() > 1 else 1)) ** 0.5
                    if p.dim() > 1 else torch.randn(p.shape, generator=gen) * 0.1)
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0.0, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
            if hasattr(m, "set_moments"):          # AVGN's Standardize
                d = m.mean.numel()
                m.set_moments(torch.randn(d, generator=gen) * 0.2, torch.rand(d, generator=gen) + 0.5)
    return net.eval()


def save_seeded_checkpoints(store, runs: Path) -> None:
    """Every checkpoint ``fs bench`` reads, with weights built from fixed seeds (not trained), and the configs the
    trainers write."""
    from featurestore.constants import FEATURE_DIMS
    from pipelines.checkpoints import save_checkpoint
    from pipelines.data import student_fusion
    from pipelines.train_avgn import build_avgn, checkpoint_name as avgn_name
    from pipelines.train_head import checkpoint_name as head_name
    from models.baselines import StepClassifier
    from pipelines.train_sampler import build_sampler, checkpoint_name as sampler_name
    from pipelines.train_skim import SKIM_MODELS, SKIMMERS, build_skim_model

    n_cls = len(store.attrs["classes"])
    seed = iter(range(100, 200))
    for feature in ("fused", "r2p1d"):
        save_checkpoint(runs, head_name(feature), "head", seeded(StepClassifier(FEATURE_DIMS[feature], n_cls),
                                                                   next(seed)), store,
                        {"features": feature, "in_dim": FEATURE_DIMS[feature], "num_classes": n_cls}, [])
    for model in SKIM_MODELS:
        net = seeded(build_skim_model(model, student_fusion(store), n_cls), next(seed))
        save_checkpoint(runs, model, model, net, store, {"model": model, "steps": 10, "num_classes": n_cls,
                                                         "protocol": "paper" if model in SKIMMERS else None,
                                                         **({"objective": "top-k mean, straight-through"}
                                                            if model == "non-recurrent" else {})}, [])
    # the trainers' set: AV-joint-training (av, SAL-CL) leaves its visual and audio SAL-CL parts beside it
    for modality, loss in (("visual", "ac"), ("audio", "sal-rank"), ("visual", "sal-cl"), ("audio", "sal-cl"),
                           ("av", "sal-cl")):
        save_checkpoint(runs, sampler_name(modality, loss), "sampler",
                        seeded(build_sampler(modality, loss, n_cls), next(seed)), store,
                        {"modality": modality, "loss": loss, "margin": 1.0, "num_classes": n_cls,
                         "clip_classifier": "r2p1d"}, [])
    for audio_tokens, mask_loss in ((True, True), (False, True), (True, False)):
        cfg = {"num_classes": n_cls, "dim": 32, "layers": 1, "heads": 2, "t": 8, "k": 2,
               "audio_tokens": audio_tokens, "mask_loss": mask_loss}
        save_checkpoint(runs, avgn_name(audio_tokens, mask_loss), "avgn", seeded(build_avgn(cfg), next(seed)),
                        store, cfg, [])
    # the skimmer trained with the fs protocol, beside the paper's (seeded last: the seeds above stay as they were)
    save_checkpoint(runs, "skim-fs", "skim", seeded(build_skim_model("skim", student_fusion(store), n_cls), next(seed)),
                    store, {"model": "skim", "steps": 10, "num_classes": n_cls, "protocol": "fs"}, [])
    # SCSampler's cheap visual sampler on the motion signal (after the others and skim-fs): the
    # video bench's set, motion AC beside audio SAL-RANK, and AV(motion)-joint-training (SAL-CL) with its parts
    for modality, loss in (("motion", "ac"), ("motion", "sal-cl"), ("av-motion", "sal-cl")):
        save_checkpoint(runs, sampler_name(modality, loss), "sampler",
                        seeded(build_sampler(modality, loss, n_cls), next(seed)), store,
                        {"modality": modality, "loss": loss, "margin": 1.0, "num_classes": n_cls,
                         "clip_classifier": "r2p1d"}, [])
    # SCSampler's cheap audio sampler on the spectrum signal (after every other, the motion samplers included): the
    # video bench's spectrum SAL-RANK beside motion AC (the AV(cheap) combinations), and AV(cheap)-joint-training
    # (SAL-CL) with its spectrum part (its motion part is seeded above)
    for modality, loss in (("spectrum", "sal-rank"), ("spectrum", "sal-cl"), ("av-cheap", "sal-cl")):
        save_checkpoint(runs, sampler_name(modality, loss), "sampler",
                        seeded(build_sampler(modality, loss, n_cls), next(seed)), store,
                        {"modality": modality, "loss": loss, "margin": 1.0, "num_classes": n_cls,
                         "clip_classifier": "r2p1d"}, [])


def compute_rows(tmp: Path, blocks: bool = False) -> dict[str, dict[str, dict]]:
    """{method row name: {video_id: {"steps", "scores", "gflops"}}} for every method of ``fs bench``, plus
    ``"__order__"``: the row names in table order. Each video answered alone (``select``), or with ``blocks`` as
    ``fs bench`` runs them: blocks of videos of mixed lengths (``select_batch``, GFLOPs by shape)."""
    from models.selection import select_block
    from pipelines.methods import METHODS, BenchContext, build_selectors
    from pipelines.data import load_split
    from tests.test_bench import fabricate_store

    torch.set_num_threads(1)
    store = fabricate_store(tmp / "rows.zarr", n_videos=24, seed=7, r2p1d=True)
    runs = tmp / "runs"
    save_seeded_checkpoints(store, runs)
    quiet = lambda *_: None  # noqa: E731
    names = ("image", "audio", "fused", "r2p1d", "loudness", "motion", "spectrum")
    data = load_split(store, "test", names)
    rows: dict = {"__order__": []}
    selectors = build_selectors(BenchContext(store, runs, subsample=5, steps=3, say=quiet), tuple(METHODS))
    for sel in selectors:
        rows[sel.name] = {}
        rows["__order__"].append(sel.name)

    def record(sel, video_id: str, out) -> None:
        rows[sel.name][video_id] = {"steps": np.asarray(out.steps).tolist(),
                                    "scores": np.asarray(out.scores, np.float64).tolist(), "gflops": float(out.gflops)}
    if blocks:
        for idx in data.blocks(videos=4):         # 6 test videos of 12-39 steps: blocks of 4 and 2, padded
            block = data.block(idx)
            for sel in selectors:
                answers = select_block(sel, block)
                for i, j in enumerate(idx):
                    record(sel, data.video_ids[int(j)], answers.video(i))
        return rows
    for sel in selectors:
        for video in data.videos:
            record(sel, video.video_id, sel.select(video))
    return rows


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        result = compute_rows(Path(d))
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(result)} method rows to {FIXTURE}", file=sys.stderr)
