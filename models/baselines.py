"""Selection baselines of Listen to Look §4.2 and the skimmer, all as :class:`~models.selection.Selector`s.

Costs: ``pair_gflops`` is what one image-audio pair costs to compute (image ResNet-18 + audio ResNet-18 + Psi,
counted by the caller with FlopCounterMode); each selector adds the FLOPs of its own modules, counted on the call.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.selection import Selection, VideoArrays, counted, stored
from models.skim import ImgAudSkimmer, attend, interpolate_features, kept_steps, masked_mean

BUDGET = 10


def index_random(n: int, k: int, seed: int = 0) -> np.ndarray:
    """RANDOM: k distinct steps drawn at random (seeded, so a benchmark is repeatable)."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(k, n), replace=False))


def index_uniform(n: int, k: int) -> np.ndarray:
    """UNIFORM: k steps evenly spread over the video (centres of k equal parts)."""
    if n <= k:
        return np.arange(n)
    return np.unique(((np.arange(k) + 0.5) * n / k).astype(int))


def index_front(n: int, k: int) -> np.ndarray:
    return np.arange(min(k, n))


def index_center(n: int, k: int) -> np.ndarray:
    start = max(0, (n - k) // 2)
    return np.arange(start, min(n, start + k))


def index_end(n: int, k: int) -> np.ndarray:
    return np.arange(max(0, n - k), n)


def _video_seed(video: VideoArrays) -> int:
    return zlib.crc32(str(video.attrs.get("path", video.attrs.get("label", ""))).encode())


class HeadSelector:
    """Average the per-step head's predictions over steps chosen without looking (RANDOM, UNIFORM, ...) or by
    the head's own scores (DENSE, SCSAMPLER confidence, ORACLE)."""

    def __init__(self, name: str, head: nn.Module, pair_gflops: float, feature: str = "fused", k: int = BUDGET,
                 rule: str = "uniform", class_index: dict[str, int] | None = None):
        rules = ("random", "uniform", "front", "center", "end", "dense", "confidence", "oracle")
        if rule not in rules:
            raise ValueError(f"rule must be one of {rules}")
        if rule == "oracle" and class_index is None:
            raise ValueError("the oracle needs the class index of the true labels")
        self.name, self.head, self.pair_gflops, self.feature, self.k, self.rule = name, head, pair_gflops, feature, k, rule
        self.class_index = class_index

    @torch.inference_mode()
    def select(self, video: VideoArrays) -> Selection:
        z = stored(video, self.feature)
        n = len(z)
        blind = {"random": lambda: index_random(n, self.k, _video_seed(video)), "uniform": lambda: index_uniform(n, self.k),
                 "front": lambda: index_front(n, self.k), "center": lambda: index_center(n, self.k),
                 "end": lambda: index_end(n, self.k)}
        if self.rule in blind:
            steps = blind[self.rule]()
            probs, head_gflops = counted(lambda: F.softmax(self.head(z[steps]), dim=1))
            return Selection(steps, probs.mean(0).numpy(), len(steps) * self.pair_gflops + head_gflops)
        probs, head_gflops = counted(lambda: F.softmax(self.head(z), dim=1))   # every step is computed
        cost = n * self.pair_gflops + head_gflops
        if self.rule == "dense":
            return Selection(np.arange(n), probs.mean(0).numpy(), cost)
        if self.rule == "confidence":
            rank = probs.max(1).values
        else:
            rank = probs[:, self.class_index[video.attrs["label"]]]
        steps = torch.argsort(rank, descending=True)[: self.k].numpy()
        return Selection(steps, probs[steps].mean(0).numpy(), cost)


class SkimSelector:
    """ImgAud-Skimming with its inference options: early stop (``steps``), sparse indexing features
    (``subsample``), unaggregated argmax features (``hard``, ablation G.3)."""

    def __init__(self, name: str, skimmer: ImgAudSkimmer, pair_gflops: float, steps: int = BUDGET,
                 subsample: int = 1, hard: bool = False):
        self.name, self.skimmer, self.pair_gflops = name, skimmer.eval(), pair_gflops
        self.steps, self.subsample, self.hard = steps, subsample, hard

    @torch.inference_mode()
    def select(self, video: VideoArrays) -> Selection:
        single = self.skimmer.indexing == "single"
        names = ("fused",) if single else ("image", "audio")
        feats = [interpolate_features(stored(video, k), self.subsample) for k in names]
        n = len(feats[0])
        mask = torch.ones(1, n, dtype=torch.bool)
        if single:
            out, gflops = counted(self.skimmer, None, None, mask, self.steps, self.hard, feats[0][None])
        else:
            out, gflops = counted(self.skimmer, feats[0][None], feats[1][None], mask, self.steps, self.hard)
        steps = out.steps[0].numpy()
        computed = set(kept_steps(n, self.subsample).tolist())
        if self.hard or self.skimmer.indexing == "visual":
            computed |= set(steps.tolist())      # the chosen steps' own features are needed too
        return Selection(steps, F.softmax(out.logits[0], 0).numpy(), len(computed) * self.pair_gflops + gflops)


class NonRecurrentSelector:
    """NON-RECURRENT: one query (from the LSTM state after the mean-feature input), then the k steps with the largest
    attention weights; their fused features are averaged and classified."""

    def __init__(self, name: str, skimmer: ImgAudSkimmer, pair_gflops: float, k: int = BUDGET):
        self.name, self.skimmer, self.pair_gflops, self.k = name, skimmer.eval(), pair_gflops, k

    @torch.inference_mode()
    def select(self, video: VideoArrays) -> Selection:
        z_i, z_a = stored(video, "image")[None], stored(video, "audio")[None]
        mask = torch.ones(1, z_i.shape[1], dtype=torch.bool)

        def run():
            sk = self.skimmer
            x = sk.fusion(masked_mean(z_i, mask), masked_mean(z_a, mask))
            h, _ = sk.lstm(x)
            w_i = attend(sk.key_i(z_i, mask), sk.query_i(h), mask)
            w_a = attend(sk.key_a(z_a, mask), sk.query_a(h), mask)
            s = F.softmax(sk.modality(h), dim=1)
            combined = (s[:, :1] * w_i + s[:, 1:] * w_a)[0]
            steps = torch.argsort(combined, descending=True)[: self.k]
            m = sk.fusion(z_i[0, steps], z_a[0, steps]).mean(0)
            return steps, F.softmax(sk.classifier(m[None])[0], 0)
        (steps, probs), gflops = counted(run)
        return Selection(steps.numpy(), probs.numpy(), z_i.shape[1] * self.pair_gflops + gflops)


class LSTMBaseline(nn.Module):
    """LSTM: a one-layer LSTM (1024) run over all N fused features; the last valid hidden state is classified.

    Stepped with ``nn.LSTMCell`` so that padded steps leave the state unchanged and FlopCounterMode sees every
    multiply (it does not count the fused ``aten::lstm`` kernel).
    """

    def __init__(self, num_classes: int, in_dim: int = 512, hidden: int = 1024):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim)      # input BN over valid steps, for the reason given in models/skim.py
        self.cell = nn.LSTMCell(in_dim, hidden)
        self.classifier = nn.Linear(hidden, num_classes)
        self.hidden = hidden

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        normed = torch.zeros_like(z)
        normed[mask] = self.norm(z[mask])
        z = normed
        h = z.new_zeros(z.shape[0], self.hidden)
        c = torch.zeros_like(h)
        for t in range(z.shape[1]):
            h2, c2 = self.cell(z[:, t], (h, c))
            keep = mask[:, t:t + 1]
            h, c = torch.where(keep, h2, h), torch.where(keep, c2, c)
        return self.classifier(h)


class LSTMSelector:
    def __init__(self, name: str, model: LSTMBaseline, pair_gflops: float):
        self.name, self.model, self.pair_gflops = name, model.eval(), pair_gflops

    @torch.inference_mode()
    def select(self, video: VideoArrays) -> Selection:
        z = stored(video, "fused")[None]
        logits, gflops = counted(self.model, z, torch.ones(1, z.shape[1], dtype=torch.bool))
        return Selection(np.arange(z.shape[1]), F.softmax(logits[0], 0).numpy(), z.shape[1] * self.pair_gflops + gflops)
