"""Selection baselines of Listen to Look §4.2 as :class:`~models.selection.Selector`s, beside their models: the
per-step classifier the blind and score-based rules average (RANDOM, UNIFORM, FRONT, CENTER, END, DENSE, SCSAMPLER
confidence, ORACLE) and the LSTM over every fused feature.

Costs: each selector pays :class:`~models.selection.UnitCosts` for every stored descriptor step it uses and adds the
FLOPs of its own modules, counted on the call.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from models.imgaud import FUSED_DIM
from models.selection import (BUDGET, NO_STEP, BlockSelection, Selection, ShapeCosts, UnitCosts, VideoArrays,
                              VideoBlock, counted, counted_gflops, masked_top, mean_at, scatter_rows, stored)



class StepClassifier(nn.Module):
    """A linear classifier over one step's descriptor (BN then FC: the student's final layer, fine-tuned)."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.BatchNorm1d(in_dim), nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
        self.in_dim, self.num_classes = in_dim, num_classes

    def forward(self, z):
        return self.net(z)


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
    """RANDOM's per-video seed, from the video's id: the same steps wherever the store or the video file lies (the
    stored path is absolute, so it differs between machines)."""
    return _id_seed(getattr(video, "video_id", None), video.attrs)


def _id_seed(video_id: str | None, attrs) -> int:
    key = video_id or attrs.get("video_id") or attrs.get("path", "")
    return zlib.crc32(str(key).encode())


def blind_steps(rule: str, lengths: torch.Tensor, k: int) -> torch.Tensor:
    """The steps of UNIFORM, FRONT, CENTER or END for videos of ``lengths`` (B,) steps at once: (B, k) int64, NO_STEP
    past min(k, n) (each rule picks min(k, n) steps, as :func:`index_uniform` and its siblings)."""
    n = lengths.long()[:, None]
    j = torch.arange(k, device=lengths.device)[None]
    if rule == "uniform":     # float64, in index_uniform's order of operations: the same steps
        spread = ((j.double() + 0.5) * n.double() / k).long()
        steps = torch.where(n <= k, j, spread)
    elif rule == "front":
        steps = j.expand(len(n), k)
    elif rule == "center":
        steps = ((n - k) // 2).clamp(min=0) + j
    elif rule == "end":
        steps = (n - k).clamp(min=0) + j
    else:
        raise ValueError(f"no blind rule {rule!r}")
    return steps.masked_fill(j >= n, NO_STEP)


class HeadSelector:
    """Average the per-step head's predictions over steps chosen without looking (RANDOM, UNIFORM, ...) or by
    the head's own scores (DENSE, SCSAMPLER confidence, ORACLE)."""

    def __init__(self, name: str, head: nn.Module, costs: UnitCosts, feature: str = "fused", k: int = BUDGET,
                 rule: str = "uniform", class_index: dict[str, int] | None = None):
        rules = ("random", "uniform", "front", "center", "end", "dense", "confidence", "oracle")
        if rule not in rules:
            raise ValueError(f"rule must be one of {rules}")
        if rule == "oracle" and class_index is None:
            raise ValueError("the oracle needs the class index of the true labels")
        self.name, self.head, self.feature, self.k, self.rule = name, head, feature, k, rule
        self.step_gflops = costs.of(feature)
        self.class_index = class_index
        self.head_gflops = ShapeCosts(lambda rows: counted_gflops(
            lambda: F.softmax(self.head(torch.zeros(rows, in_features(self.head), device=_device(self.head))), dim=1)),
            affine_from=1)
        """GFLOPs of the head (and its softmax) on a given number of rows, counted once per count."""

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
            return Selection(steps, probs.mean(0).numpy(), len(steps) * self.step_gflops + head_gflops)
        probs, head_gflops = counted(lambda: F.softmax(self.head(z), dim=1))   # every step is computed
        cost = n * self.step_gflops + head_gflops
        if self.rule == "dense":
            return Selection(np.arange(n), probs.mean(0).numpy(), cost)
        if self.rule == "confidence":
            rank = probs.max(1).values
        else:
            rank = probs[:, self.class_index[video.attrs["label"]]]
        steps = torch.argsort(rank, descending=True, stable=True)[: self.k].numpy()
        return Selection(steps, probs[steps].mean(0).numpy(), cost)

    @torch.inference_mode()
    def select_batch(self, block: VideoBlock) -> BlockSelection:
        """:meth:`select` for a block of videos: the head runs once over every step of the block, and its
        probabilities are shared with every other row of the same head (the head-rule baselines, ORACLE, the
        samplers' recogniser)."""
        probs = head_probabilities(block, self.head, self.feature)           # (B, N, C)
        mask, lengths = block.mask, block.lengths
        n = lengths.cpu().numpy()
        if self.rule in ("random", "uniform", "front", "center", "end"):
            if self.rule == "random":
                steps = torch.full((len(block), min(self.k, block.n)), NO_STEP, dtype=torch.long)
                for i, (vid, attrs) in enumerate(zip(block.video_ids, block.attrs)):
                    chosen = index_random(int(n[i]), self.k, _id_seed(vid, attrs))
                    steps[i, :len(chosen)] = torch.from_numpy(chosen)
                steps = steps.to(mask.device)
            else:
                steps = blind_steps(self.rule, lengths, self.k)
            m = (steps != NO_STEP).sum(1).cpu().numpy()
            gflops = m * self.step_gflops + self.head_gflops.each(m)
        else:
            gflops = n * self.step_gflops + self.head_gflops.each(n)
            if self.rule == "dense":
                steps = torch.arange(block.n, device=mask.device)[None].expand(len(block), -1).masked_fill(~mask,
                                                                                                      NO_STEP)
            else:
                if self.rule == "confidence":
                    rank = probs.max(-1).values
                else:
                    y = torch.tensor([self.class_index[a["label"]] for a in block.attrs], device=probs.device)
                    rank = torch.gather(probs, 2, y[:, None, None].expand(-1, probs.shape[1], 1))[..., 0]
                steps = masked_top(rank, mask, self.k)
        return BlockSelection(steps.cpu().numpy(), mean_at(probs, steps).double().cpu().numpy(), gflops)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def in_features(module: nn.Module) -> int:
    """The width of the rows ``module`` reads: its first BatchNorm's or Linear layer's input width."""
    for m in module.modules():
        for attr in ("in_dim", "num_features", "in_features"):
            if isinstance(getattr(m, attr, None), int):
                return getattr(m, attr)
    raise ValueError(f"cannot tell the input width of {type(module).__name__}")


def head_probabilities(block: VideoBlock, head: nn.Module, feature: str) -> torch.Tensor:
    """softmax(head(z)) of every valid step of the block's ``feature`` (B, N, C), computed once per block and head
    and shared by every row that reads it."""
    def compute() -> torch.Tensor:
        head.to(block.device)
        return scatter_rows(F.softmax(head(block.rows(feature)), dim=1), block.mask)
    return block.memo(("head", id(head), feature), compute)


class LSTMBaseline(nn.Module):
    """LSTM: a one-layer LSTM (1024) run over all N fused features; the last valid hidden state is classified.

    :meth:`forward` runs the fused ``nn.LSTM`` (see there for padded and packed inputs).
    :meth:`forward_stepwise` is the same network written as explicit cell steps (``F.linear`` on the same weights),
    which FlopCounterMode counts multiply by multiply whatever the device; :meth:`gflops` counts it once per length.
    """

    def __init__(self, num_classes: int, in_dim: int = FUSED_DIM, hidden: int = 1024):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim)      # input BN over valid steps, for the reason given in models/skim.py
        self.lstm = nn.LSTM(in_dim, hidden, batch_first=True)
        with torch.no_grad():        # forget-gate bias 1 (gates i, f, g, o): remember across hundreds of steps
            self.lstm.bias_ih_l0[hidden:2 * hidden].fill_(1.0)
            self.lstm.bias_hh_l0[hidden:2 * hidden].zero_()
        self.classifier = nn.Linear(hidden, num_classes)
        self.hidden, self.in_dim = hidden, in_dim
        self._gflops: dict[int, float] = {}

    def _normed(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        normed = torch.zeros_like(z)
        normed[mask] = self.norm(z[mask])
        return normed

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Class logits (B, C) of z (B, N, D) whose valid steps ``mask`` (B, N) come first in each row.

        On the CPU the fused kernel runs over the padded batch (one GEMM for every step's input projection, and in
        training one per weight gradient; the LSTM is causal, so padding after a video's last step does not change
        its state there): 25 % faster than packed steps on blocks sorted by length. On a GPU it runs over the packed
        valid steps only (cuDNN). FlopCounterMode does not see the fused kernel: :meth:`gflops` counts by shape."""
        lengths = mask.sum(1)
        normed = self._normed(z, mask)
        if z.device.type == "cpu":
            out, _ = self.lstm(normed)
            h = out[torch.arange(len(z), device=z.device), (lengths - 1).clamp(min=0)]
        else:
            packed = nn.utils.rnn.pack_padded_sequence(normed, lengths.clamp(min=1).cpu(), batch_first=True,
                                                       enforce_sorted=False)
            h = self.lstm(packed)[1][0][0]
        h = h * (lengths > 0).unsqueeze(1).to(h.dtype)     # a video without steps keeps the zero state
        return self.classifier(h)

    def forward_stepwise(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` as explicit LSTM cell steps: a padded step leaves the state unchanged (any mask)."""
        z = self._normed(z, mask)
        w_ih, w_hh = self.lstm.weight_ih_l0, self.lstm.weight_hh_l0
        b_ih, b_hh = self.lstm.bias_ih_l0, self.lstm.bias_hh_l0
        h = z.new_zeros(z.shape[0], self.hidden)
        c = torch.zeros_like(h)
        for t in range(z.shape[1]):
            i, f, g, o = (F.linear(z[:, t], w_ih, b_ih) + F.linear(h, w_hh, b_hh)).chunk(4, 1)
            c2 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h2 = torch.sigmoid(o) * torch.tanh(c2)
            keep = mask[:, t:t + 1]
            h, c = torch.where(keep, h2, h), torch.where(keep, c2, c)
        return self.classifier(h)

    def gflops(self, n: int) -> float:
        """GFLOPs of the forward for one video of ``n`` steps: FlopCounterMode on :meth:`forward_stepwise` over
        zeros of (1, n, D), counted once per ``n`` (the cost depends on the shape, not the values)."""
        n = int(n)
        if n not in self._gflops:
            z = torch.zeros(1, n, self.in_dim, device=self.classifier.weight.device)
            was = self.training
            self.eval()
            try:
                with torch.no_grad(), FlopCounterMode(display=False) as fc:
                    self.forward_stepwise(z, torch.ones(1, n, dtype=torch.bool, device=z.device))
            finally:
                self.train(was)
            self._gflops[n] = fc.get_total_flops() / 1e9
        return self._gflops[n]

    _CELL_KEYS = {"cell.weight_ih": "lstm.weight_ih_l0", "cell.weight_hh": "lstm.weight_hh_l0",
                  "cell.bias_ih": "lstm.bias_ih_l0", "cell.bias_hh": "lstm.bias_hh_l0"}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for old, new in self._CELL_KEYS.items():     # checkpoints written when the LSTM was an nn.LSTMCell
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class LSTMSelector:
    """LSTM: every step's fused feature is computed and read."""

    def __init__(self, name: str, model: LSTMBaseline, costs: UnitCosts):
        self.name, self.model, self.pair_gflops = name, model.eval(), costs.pair
        self.model_gflops = ShapeCosts(self._count, affine_from=1)
        """The LSTM's GFLOPs on one video of n steps, by shape (linear in n)."""

    def _count(self, n: int) -> float:
        gflops = getattr(self.model, "gflops", None)
        if gflops is not None:
            return gflops(n)
        dev = _device(self.model)
        return counted_gflops(self.model, torch.zeros(1, n, in_features(self.model), device=dev),
                              torch.ones(1, n, dtype=torch.bool, device=dev))

    @torch.inference_mode()
    def select(self, video: VideoArrays) -> Selection:
        z = stored(video, "fused")[None]
        logits = self.model(z, torch.ones(1, z.shape[1], dtype=torch.bool))
        n = z.shape[1]           # the fused kernel is not seen by FlopCounterMode: counted by shape
        return Selection(np.arange(n), F.softmax(logits[0], 0).numpy(), n * self.pair_gflops + self.model_gflops(n))

    @torch.inference_mode()
    def select_batch(self, block: VideoBlock) -> BlockSelection:
        """:meth:`select` for a block: the padded, masked sequences in one forward."""
        self.model.to(block.device)
        logits = self.model(block.padded("fused"), block.mask)
        n = block.lengths.cpu().numpy()
        steps = torch.arange(block.n)[None].expand(len(block), -1).masked_fill(~block.mask.cpu(), NO_STEP)
        return BlockSelection(steps.numpy(), F.softmax(logits, 1).double().cpu().numpy(),
                              n * self.pair_gflops + self.model_gflops.each(n))
