"""Signal-energy controls: pick the K steps where the signal is strongest, with no learned model at all.

A learned preview (a skimmer, a sampler, AVGN) earns its keep only if it beats choosing the loudest or the most
moving steps; these rows are that control. They read the stored per-step signals of the single decode
(``loudness``: the RMS level in dBFS of each step's audio window; ``motion``: mean |frame difference| per channel
and grid cell) and recognise the chosen steps with the same per-step head as UNIFORM, sharing its probabilities.

Costs: the signal over every step (per-step analytic counts in :class:`~models.selection.UnitCosts`), plus, as
UNIFORM, the descriptor of each chosen step and the head on them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.baselines import head_probabilities, in_features
from models.selection import (BUDGET, NO_STEP, BlockSelection, Selection, ShapeCosts, UnitCosts, VideoArrays,
                              VideoBlock, counted, counted_gflops, masked_top, mean_at, stored)

ENERGY_SIGNALS = {"audio": ("loudness",), "motion": ("motion",), "av": ("loudness", "motion")}
"""The stored signals each energy control reads."""


def signal_energy(signal: str, values: torch.Tensor) -> torch.Tensor:
    """One energy per step (B, N) float64 from a stored signal padded to (B, N) (loudness) or (B, N, MOTION_DIM)
    (motion: the mean of the row)."""
    values = values.double()
    return values.mean(-1) if signal == "motion" else values


def zscore(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each video's values (B, N) standardised over its valid steps (population standard deviation); a video whose
    values are all equal (a silent video's floor) gets zeros. 0 at padded steps."""
    w = mask.to(values.dtype)
    n = w.sum(1, keepdim=True).clamp(min=1)
    mean = (values * w).sum(1, keepdim=True) / n
    centred = (values - mean) * w
    std = (centred.square().sum(1, keepdim=True) / n).sqrt()
    return torch.where(std > 0, centred / std.clamp(min=1e-300), torch.zeros_like(centred))


def energy_rank(kind: str, signals: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """The score each control ranks steps by (B, N): AUDIO-ENERGY the loudness, MOTION-ENERGY the mean motion,
    AV-ENERGY the sum of both z-scored per video over its valid steps."""
    energies = [signal_energy(s, signals[s]) for s in ENERGY_SIGNALS[kind]]
    if kind == "av":
        return sum(zscore(e, mask) for e in energies)
    return energies[0]


class EnergySelector:
    """AUDIO-ENERGY, MOTION-ENERGY or AV-ENERGY (``kind`` audio, motion, av): the top-``k`` steps by signal energy
    (ties: the earlier step), recognised by the per-step ``head`` on ``feature`` averaged over them."""

    def __init__(self, name: str, head: nn.Module, costs: UnitCosts, kind: str = "audio", feature: str = "fused",
                 k: int = BUDGET):
        if kind not in ENERGY_SIGNALS:
            raise ValueError(f"kind must be one of {', '.join(ENERGY_SIGNALS)}, got {kind!r}")
        self.name, self.head, self.kind, self.feature, self.k = name, head, kind, feature, k
        self.signals = ENERGY_SIGNALS[kind]
        self.step_gflops = costs.of(feature)
        self.signal_gflops = sum(costs.of(s) for s in self.signals)
        """GFLOPs of this control's signals on one step (paid on every step)."""
        self.head_gflops = ShapeCosts(lambda rows: counted_gflops(lambda: F.softmax(self.head(torch.zeros(
            rows, in_features(self.head), device=next(self.head.parameters()).device)), dim=1)), affine_from=1)
        """GFLOPs of the head (and its softmax) on a given number of rows."""

    @torch.inference_mode()
    def select(self, video: VideoArrays) -> Selection:
        z = stored(video, self.feature)
        n = len(z)
        signals = {s: stored(video, s)[None] for s in self.signals}
        rank = energy_rank(self.kind, signals, torch.ones(1, n, dtype=torch.bool))
        steps = torch.argsort(rank[0], descending=True, stable=True)[: self.k].numpy()
        probs, head_gflops = counted(lambda: F.softmax(self.head(z[steps]), dim=1))
        return Selection(steps, probs.mean(0).numpy(), n * self.signal_gflops + len(steps) * self.step_gflops
                         + head_gflops, {"saliency": {self.name: (np.arange(n), rank[0].numpy())}})

    @torch.inference_mode()
    def select_batch(self, block: VideoBlock) -> BlockSelection:
        """:meth:`select` for a block: the signals ranked at once, the head's probabilities shared with every row of
        the same head (UNIFORM and the other head-rule baselines)."""
        mask = block.mask
        rank = energy_rank(self.kind, {s: block.padded(s) for s in self.signals}, mask)
        steps = masked_top(rank, mask, self.k)
        probs = head_probabilities(block, self.head, self.feature)
        n = block.lengths.cpu().numpy()
        m = (steps != NO_STEP).sum(1).cpu().numpy()
        gflops = n * self.signal_gflops + m * self.step_gflops + self.head_gflops.each(m)
        return BlockSelection(steps.cpu().numpy(), mean_at(probs, steps).double().cpu().numpy(), gflops)
