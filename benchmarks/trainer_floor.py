"""Every trainer's epoch compute beside its FLOP floor (issue 24): a benchmark, not a test.

    .venv/bin/python benchmarks/trainer_floor.py --store PATH [--runs PATH] [--only train-skim:lstm,...] [--floor-only]

For each trainer (train-head; train-skim for skim, skim-visual, skim-single, non-recurrent, lstm; train-sampler for
one modality with each loss ac, sal-cl, sal-rank; train-avgn) one epoch is trained on ``--device cpu`` with the batch
size its default (sized) schedule picks for the split, and the epoch's ``compute_seconds`` (forward, backward and
optimiser steps, from the history) is printed beside its floor:

* TFLOP: the forward and backward of one epoch on the valid (unpadded) rows, counted by FlopCounterMode on the
  trainer's own loss over two videos of one length n (no padding) at two lengths, a per-video cost affine in n, summed
  over the training split's lengths (the head: per step; AVGN: per video, averaged over the drawn glances T_G);
* floor s: TFLOP divided by the machine's float32 GEMM rate, timed here (a 4096 x 4096 matmul, best of 5);
* ratio: compute s / floor s.

Time is the machine's: run it with nothing else on the cores.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from featurestore.constants import FEATURE_DIMS                       # noqa: E402
from featurestore.store import FeatureStore                           # noqa: E402
from pipelines.data import load_split, student_fusion                 # noqa: E402
from pipelines.train import sized_schedule                            # noqa: E402

TRAINERS = ["train-head", "train-skim:skim", "train-skim:skim-visual", "train-skim:skim-single",
            "train-skim:non-recurrent", "train-skim:lstm", "train-sampler:audio:ac", "train-sampler:audio:sal-cl",
            "train-sampler:audio:sal-rank", "train-avgn"]
DEFAULTS = {"train-head": (256, 15, (10,)), "train-skim": (256, 25, (15, 20)), "train-sampler": (16, 15, (10,)),
            "train-avgn": (16, 30, (20,))}      # the CLI's batch size, epochs, milestones


def gemm_gflops(n: int = 4096, reps: int = 5) -> float:
    """The machine's float32 GEMM rate in GFLOP/s (best of ``reps``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def counted_flops(step) -> float:
    """FLOPs of ``step()`` (a loss, whose backward is run too) under FlopCounterMode."""
    with FlopCounterMode(display=False) as fc:
        step().backward()
    return fc.get_total_flops()


def per_video_affine(flops_of_two, n1: int = 40, n2: int = 80) -> tuple[float, float]:
    """(a, b) with one video of n steps costing a + b n: counted on two videos of n1 and of n2 steps."""
    f1, f2 = flops_of_two(n1) / 2, flops_of_two(n2) / 2
    b = (f2 - f1) / (n2 - n1)
    return f1 - b * n1, b


def skim_flops(model: str, fusion, classes: int):
    from pipelines.train_skim import DEFAULT_PROTOCOL, build_skim_model, skim_loss
    torch.manual_seed(0)
    net = build_skim_model(model, fusion, classes).train()
    t_steps = 10

    def two(n: int) -> float:
        zi, za, zf = torch.randn(2, n, 256), torch.randn(2, n, 256), torch.randn(2, n, 512)
        mask = torch.ones(2, n, dtype=torch.bool)
        y = torch.tensor([0, 1])

        def step():
            if model == "lstm":
                return F.cross_entropy(net.forward_stepwise(zf, mask), y)     # the fused kernel is not counted
            if model == "non-recurrent":
                from models.skim import non_recurrent
                return F.cross_entropy(non_recurrent(net, zi, za, mask, t_steps, straight_through=True)[1], y)
            feats = [zf] if model == "skim-single" else [zi, za]     # the default (paper) protocol: m_T's loss
            return skim_loss(net, model, feats, feats, mask, y, t_steps, prefixes=DEFAULT_PROTOCOL == "fs")[0]
        return counted_flops(step)
    return two


def sampler_flops(loss: str, classes: int):
    from models.scsampler import SaliencySampler, sal_cl_loss, sal_rank_loss
    torch.manual_seed(0)
    net = SaliencySampler(FEATURE_DIMS["audio"], loss, classes).train()

    def two(n: int) -> float:
        z = torch.randn(2 * n, FEATURE_DIMS["audio"])
        f_true = [torch.rand(n), torch.rand(n)]

        def step():
            out = net(z)
            if loss == "ac":
                return F.cross_entropy(out, torch.zeros(2 * n, dtype=torch.long))
            fn = sal_cl_loss if loss == "sal-cl" else sal_rank_loss
            return torch.stack([fn(o, f) for o, f in zip(torch.split(out, n), f_true)]).mean()
        return counted_flops(step)
    return two


def head_flops_per_row(classes: int) -> float:
    from models.baselines import StepClassifier
    net = StepClassifier(FEATURE_DIMS["fused"], classes).train()
    x, y = torch.randn(64, FEATURE_DIMS["fused"]), torch.zeros(64, dtype=torch.long)
    return counted_flops(lambda: F.cross_entropy(net(x), y)) / 64


def avgn_flops_per_video(classes: int, t: int = 16, k: int = 4) -> float:
    from models.avgn import AVTeST, avgn_losses
    from pipelines.train_avgn import training_glances
    torch.manual_seed(0)
    net = AVTeST(classes, dim=128, layers=2, heads=4, max_len=t).train()
    e_g, e_a, y = torch.randn(8, t, 256), torch.randn(8, t, 256), torch.zeros(8, dtype=torch.long)
    glances = training_glances(t)
    total = 0.0
    for t_g in glances:
        total += counted_flops(lambda: sum(avgn_losses(net, e_g, e_a, y, t_g, k).values()))
        with torch.no_grad(), FlopCounterMode(display=False) as fc:     # the accuracy's eval pass in loss_fn
            net.classify(e_g, e_a)
        total += fc.get_total_flops()
    return total / len(glances) / 8


def floor_tflop(trainer: str, data, fusion) -> float:
    """One epoch's forward + backward FLOPs on the valid rows of the split, in TFLOP."""
    classes = len(data.classes)
    lengths = [int(n) for n in data.n_steps]
    kind, _, option = trainer.partition(":")
    if kind == "train-head":
        return head_flops_per_row(classes) * sum(lengths) / 1e12
    if kind == "train-avgn":
        return avgn_flops_per_video(classes) * len(lengths) / 1e12
    two = skim_flops(option, fusion, classes) if kind == "train-skim" else sampler_flops(option.split(":")[1], classes)
    a, b = per_video_affine(two)
    return sum(a + b * n for n in lengths) / 1e12


def one_epoch(trainer: str, store: FeatureStore, runs: Path, rows: int, videos: int) -> tuple[float, int]:
    """compute_seconds of one epoch with the default schedule's batch size, and that batch size."""
    kind, _, option = trainer.partition(":")
    batch, epochs, milestones = DEFAULTS[kind]
    batch = sized_schedule(rows if kind == "train-head" else videos, batch, epochs, milestones).batch_size
    common = dict(epochs=1, batch_size=batch, milestones=(), sized=False, device="cpu")
    if kind == "train-head":
        from pipelines.train_head import train_head
        out = train_head(store, runs, **common)
    elif kind == "train-skim":
        from pipelines.train_skim import train_skim
        out = train_skim(store, runs, model=option, **common)
    elif kind == "train-sampler":
        from pipelines.train_sampler import train_sampler
        modality, loss = option.split(":")
        out = train_sampler(store, runs, modality, loss, say=lambda m: None, **common)
    else:
        from pipelines.train_avgn import train_avgn
        out = train_avgn(store, runs, **common)
    return out.history[0]["compute_seconds"], batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--runs", default=None, help="checkpoints (default: beside the store, .floor-runs)")
    ap.add_argument("--only", default=None, help="comma list of trainers (default all): " + ",".join(TRAINERS))
    ap.add_argument("--floor-only", action="store_true", help="count the floors, train nothing")
    args = ap.parse_args()
    store = FeatureStore(args.store)
    runs = Path(args.runs or str(Path(args.store).with_suffix("")) + ".floor-runs")
    trainers = args.only.split(",") if args.only else TRAINERS
    data = load_split(store, "train", ("fused",), "cpu")
    fusion = student_fusion(store)
    rows, videos = int(data.n_steps.sum()), len(data)
    rate = gemm_gflops()
    print(f"store {args.store}: {videos} training videos, {rows} steps; float32 GEMM {rate:.0f} GFLOP/s; "
          f"{torch.get_num_threads()} threads", flush=True)
    print(f"{'trainer':<30} {'batch':>5} {'compute s':>10} {'TFLOP':>8} {'floor s':>8} {'ratio':>6}", flush=True)
    for trainer in trainers:
        tflop = floor_tflop(trainer, data, fusion)
        if args.floor_only:
            print(f"{trainer:<30} {'':>5} {'':>10} {tflop:>8.4f} {tflop * 1e3 / rate:>8.2f}", flush=True)
            continue
        compute, batch = one_epoch(trainer, store, runs, rows, videos)
        floor = tflop * 1e3 / rate
        print(f"{trainer:<30} {batch:>5} {compute:>10.2f} {tflop:>8.4f} {floor:>8.2f} {compute / floor:>6.1f}",
              flush=True)


if __name__ == "__main__":
    main()
