"""SCSampler (Korbar et al., §3): light saliency rankers over one modality's per-step descriptor, their losses
(AC, SAL-CL, SAL-RANK), and the audio-visual combinations used at selection time.

Modalities: ``visual`` reads the image descriptor (the image ResNet-18 on the step's first frame), ``audio`` the audio
descriptor, and ``motion`` the stored ``motion`` signal: SCSampler's cheap visual sampler (§3.3.1). There, two
ResNet-18s read the compressed stream's motion displacements (MD) and RGB residuals (RGB-R) of the P-frames, which
cost no decoding; here the frames are decoded anyway, so the analogue is the mean |difference| of consecutive decoded
frames per channel and grid cell (an uncompressed, motion-uncompensated RGB-R pooled to MOTION_GRID x MOTION_GRID),
read by the same small MLP as the other samplers: its cost per step is that signal plus the MLP, a few MFLOPs against
the image ResNet-18's 0.97 GFLOPs. ``spectrum`` is SCSampler's cheap audio sampler (a light net on the spectrogram,
not the audio ResNet-18): the same MLP on the stored ``spectrum`` signal, each mel band's log level averaged over the
step's 1 s window (2.61 MFLOPs a step to compute). ``av-cheap`` joins motion and spectrum: an audio-visual sampler
whose cost per step is a small fraction of one image-audio pair.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.baselines import head_probabilities, in_features
from models.selection import (BUDGET, NO_STEP, BlockSelection, Selection, ShapeCosts, UnitCosts, VideoBlock, counted,
                              counted_gflops, masked_top, mean_at, scatter_rows, stored)

LOSSES = ("ac", "sal-cl", "sal-rank")
MODALITY_FEATURE = {"visual": "image", "audio": "audio", "motion": "motion", "spectrum": "spectrum"}
"""The stored array a sampler of each single modality reads (motion, spectrum: stored signals, not descriptors)."""
JOINT_MODALITIES = {"av": ("visual", "audio"), "av-motion": ("motion", "audio"), "av-cheap": ("motion", "spectrum")}
"""AV-joint-training: the visual-side and the audio-side sampler it averages (image descriptor's or motion's; audio
descriptor's or spectrum's)."""
VISUAL_SIDES = ("visual", "motion")
"""The modalities that can be the visual side of an audio-visual combination."""
AUDIO_SIDES = ("audio", "spectrum")
"""The modalities that can be the audio side of an audio-visual combination."""


def modality_parts(modality: str) -> tuple[str, ...]:
    """The single modalities a sampler of ``modality`` reads (a joint one reads its two parts)."""
    return JOINT_MODALITIES.get(modality, (modality,))


def modality_features(modality: str) -> tuple[str, ...]:
    """The stored arrays a sampler of ``modality`` reads, in its inputs' order."""
    return tuple(MODALITY_FEATURE[m] for m in modality_parts(modality))


class SaliencySampler(nn.Module):
    """A light sampler s(.) on a stored descriptor: BN -> FC 256 -> ReLU -> FC (C classes for AC, 1 otherwise)."""

    def __init__(self, in_dim: int, loss: str, num_classes: int, hidden: int = 256):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.loss = loss
        out = num_classes if loss == "ac" else 1
        self.net = nn.Sequential(nn.BatchNorm1d(in_dim), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Raw outputs: class logits (AC) or a saliency logit (SAL-CL, SAL-RANK). (L, D) -> (L, C) or (L,)."""
        out = self.net(z)
        return out if self.loss == "ac" else out.squeeze(-1)

    def saliency(self, z: torch.Tensor) -> torch.Tensor:
        """Per-step saliency in [0, 1]: max class probability (AC) or the sigmoid of the saliency logit."""
        out = self(z)
        return F.softmax(out, dim=-1).max(-1).values if self.loss == "ac" else torch.sigmoid(out)


K_TR = {"audio": 0.25, "spectrum": 0.25}
"""SAL-CL's K_tr / L_tr by modality (SCSampler App. C.1, Fig. 3): L/4 is best for the audio sampler, L/2 for the
video sampler; the audio samplers (the audio descriptor's and the spectrum's) take L/4, every other modality (image,
motion, the joint ones, whose visual side leads) takes
:data:`K_TR_DEFAULT`."""
K_TR_DEFAULT = 0.5


def k_tr_fraction(modality: str) -> float:
    """The fraction of a training video's steps SAL-CL labels salient for a sampler of ``modality``."""
    return K_TR.get(modality, K_TR_DEFAULT)


def sal_cl_labels(true_class_scores: torch.Tensor, k_tr: float = K_TR_DEFAULT) -> torch.Tensor:
    """SAL-CL pseudo-labels: the top K_tr = floor(k_tr L) steps of a video by f's true-class score are salient (1.0),
    at least one when the video has two steps or more (so a short video still orders a salient step above one)."""
    if not 0.0 < k_tr <= 1.0:
        raise ValueError(f"K_tr must be a fraction in (0, 1], got {k_tr}")
    n = len(true_class_scores)
    k = int(k_tr * n + 1e-9)            # floor, but 0.29 x 100 is 29
    k = max(k, 1) if n >= 2 else k
    labels = torch.zeros(n)
    labels[torch.argsort(true_class_scores, descending=True)[:k]] = 1.0
    return labels


def sal_cl_loss(logits: torch.Tensor, true_class_scores: torch.Tensor, k_tr: float = K_TR_DEFAULT) -> torch.Tensor:
    """Binary cross-entropy against :func:`sal_cl_labels` (the top ``k_tr`` of the steps salient)."""
    return F.binary_cross_entropy_with_logits(logits, sal_cl_labels(true_class_scores, k_tr).to(logits))


def sal_rank_loss(scores: torch.Tensor, true_class_scores: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """SAL-RANK (Eq. 1-2): over all pairs (i, j) of steps of one video, z = +1 if f_y(i) > f_y(j) else -1, and the
    margin ranking loss max(0, eta - z (s_i - s_j)); pairs with equal f scores carry no order and are skipped.
    Zero for pairs ordered correctly beyond the margin."""
    i, j = torch.triu_indices(len(scores), len(scores), offset=1)
    diff_f = true_class_scores[i] - true_class_scores[j]
    keep = diff_f != 0
    if not keep.any():
        return scores.sum() * 0.0
    z = torch.sign(diff_f[keep])
    return F.margin_ranking_loss(scores[i][keep], scores[j][keep], z, margin=margin)


# --- audio-visual combinations at selection time (all return exactly min(K, L) distinct step indices) -------------

def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank position of every step (0 = most salient)."""
    r = np.empty(len(scores), int)
    r[np.argsort(-scores, kind="stable")] = np.arange(len(scores))
    return r


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, kind="stable")[:k]


def convex_score(s_visual: np.ndarray, s_audio: np.ndarray, k: int, alpha: float = 0.9) -> np.ndarray:
    """AV-convex-score: top-K of alpha s^V + (1 - alpha) s^A."""
    return top_k(alpha * s_visual + (1 - alpha) * s_audio, k)


def convex_list(s_visual: np.ndarray, s_audio: np.ndarray, k: int, alpha: float = 0.8) -> np.ndarray:
    """AV-convex-list: top-K by the convex combination of each step's positions in the two ranked lists."""
    pos = alpha * _ranks(s_visual) + (1 - alpha) * _ranks(s_audio)
    return np.argsort(pos, kind="stable")[:k]


def union_list(s_visual: np.ndarray, s_audio: np.ndarray, k: int, k_visual: int = 8) -> np.ndarray:
    """AV-union-list: the K' top steps of the visual list, then different steps from the audio list up to K."""
    chosen = list(top_k(s_visual, min(k_visual, k)))
    for j in np.argsort(-s_audio, kind="stable"):
        if len(chosen) >= min(k, len(s_audio)):
            break
        if j not in chosen:
            chosen.append(int(j))
    return np.asarray(chosen, int)


def intersect_list(s_visual: np.ndarray, s_audio: np.ndarray, k: int) -> np.ndarray:
    """AV-intersect-list: grow m until top-m(visual) and top-m(audio) share K steps; when the last increment adds two,
    the K with the best summed rank are kept, so exactly K come back."""
    n = len(s_visual)
    k = min(k, n)
    order_v, order_a = np.argsort(-s_visual, kind="stable"), np.argsort(-s_audio, kind="stable")
    for m in range(k, n + 1):
        common = np.intersect1d(order_v[:m], order_a[:m])
        if len(common) >= k:
            break
    total = _ranks(s_visual) + _ranks(s_audio)
    return common[np.argsort(total[common], kind="stable")[:k]]


# --- the same combinations for a block of videos at once: scores (B, N), ``mask`` (B, N) valid steps, ``k`` (B,) steps
# per video (min(K, n)); (B, width) int64 steps in the per-video functions' order, NO_STEP past each video's k --------

def saliency_order(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each video's steps by decreasing score, ties by step index, padded positions last (np.argsort(-x, "stable"))."""
    return torch.sort(scores.masked_fill(~mask, float("-inf")), dim=1, descending=True, stable=True).indices


def saliency_ranks(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`_ranks` of every video (B, N) int64; padded positions rank after every valid step."""
    order = saliency_order(scores, mask)
    pos = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, pos)


def first_by(key: torch.Tensor, chosen: torch.Tensor, k: torch.Tensor, width: int) -> torch.Tensor:
    """The ``k`` (B,) ``chosen`` steps of each video with the smallest ``key``, ties by step index. (B, width)"""
    order = torch.sort(key.double().masked_fill(~chosen, float("inf")), dim=1, stable=True).indices[:, :width]
    return order.masked_fill(torch.arange(width, device=k.device)[None] >= k[:, None], NO_STEP)


def convex_list_batch(s_visual: torch.Tensor, s_audio: torch.Tensor, mask: torch.Tensor, k: torch.Tensor,
                      width: int, alpha: float = 0.8) -> torch.Tensor:
    """:func:`convex_list` of every video (positions combined in float64, as numpy does with integer ranks)."""
    pos = alpha * saliency_ranks(s_visual, mask).double() + (1 - alpha) * saliency_ranks(s_audio, mask).double()
    return first_by(pos, mask, k, width)


def union_list_batch(s_visual: torch.Tensor, s_audio: torch.Tensor, mask: torch.Tensor, k: torch.Tensor,
                     width: int, k_visual: int = 8) -> torch.Tensor:
    """:func:`union_list` of every video: the K' visual steps keep their visual ranks, the audio steps not among them
    follow in audio order, as many as each video lacks."""
    k_v = k.clamp(max=k_visual)[:, None]
    rank_v = saliency_ranks(s_visual, mask)
    in_visual = mask & (rank_v < k_v)
    order_a = saliency_order(s_audio, mask)
    new = (mask & ~in_visual).gather(1, order_a)                   # along the audio list: a step not yet chosen
    nth = new.long().cumsum(1)
    taken = new & (nth <= k[:, None] - k_v)
    after = torch.empty_like(order_a).scatter_(1, order_a, torch.where(taken, k_v + nth - 1, -1))
    key = torch.where(in_visual, rank_v, after)
    return first_by(key, in_visual | (after >= 0), k, width)


def intersect_list_batch(s_visual: torch.Tensor, s_audio: torch.Tensor, mask: torch.Tensor, k: torch.Tensor,
                         width: int) -> torch.Tensor:
    """:func:`intersect_list` of every video: a step is in both top-m lists iff max(rank_v, rank_a) < m, so m is the
    smallest m >= k with k such steps; of those, the k with the smallest summed rank, ties by step index."""
    rank_v, rank_a = saliency_ranks(s_visual, mask), saliency_ranks(s_audio, mask)
    both = torch.maximum(rank_v, rank_a)
    kth = torch.sort(both, dim=1).values.gather(1, (k - 1).clamp(min=0)[:, None])   # padded ranks sort last
    m = torch.maximum(k[:, None], kth + 1)
    return first_by(rank_v + rank_a, mask & (both < m), k, width)


def equal_rows_tied(saliency: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """``saliency`` (L,) with the steps whose input rows are equal (in every input) given one value, their first
    step's. A network can score equal rows a rounding error apart by their place in the batch (BLAS blocking), which
    would rank a constant stretch (a video without audio: every spectrum row at log(LOG_EPS), every audio descriptor
    zero; a still video's zero motion) by noise, differently per video and in blocks; tied, they rank by step."""
    x = inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)
    if len(x) < 2:
        return saliency
    _, group = torch.unique(x, dim=0, return_inverse=True)
    steps = torch.arange(len(x), device=x.device)
    first = torch.full((int(group.max()) + 1,), len(x), device=x.device).scatter_reduce(0, group, steps, "amin")
    return saliency[first[group]]


def sampler_saliency(block: VideoBlock, modality: str, sampler: nn.Module) -> torch.Tensor:
    """A sampler's saliency over every valid step of the block (B, N; 0 at padded steps), computed once per block
    and sampler and shared by every row that reads it (alone, in combinations, with either recogniser); equal input
    rows are tied (:func:`equal_rows_tied`)."""
    def compute() -> torch.Tensor:
        sampler.to(block.device)
        rows = [block.rows(f) for f in modality_features(modality)]
        return scatter_rows(equal_rows_tied(sampler.saliency(*rows), *rows), block.mask)
    return block.memo(("saliency", id(sampler), modality), compute)


class JointSampler(nn.Module):
    """AV-joint-training: the visual and audio samplers' outputs averaged, and both fine-tuned through that average
    (``visual`` reads the image descriptor, or the motion signal for ``av-motion`` and ``av-cheap``; ``audio`` the
    audio descriptor, or the spectrum signal for ``av-cheap``)."""

    def __init__(self, visual: SaliencySampler, audio: SaliencySampler):
        super().__init__()
        if visual.loss != audio.loss:
            raise ValueError("joint training needs two samplers trained with the same loss")
        self.visual, self.audio, self.loss = visual, audio, visual.loss

    def forward(self, z_visual: torch.Tensor, z_audio: torch.Tensor) -> torch.Tensor:
        return (self.visual(z_visual) + self.audio(z_audio)) / 2

    def saliency(self, z_visual: torch.Tensor, z_audio: torch.Tensor) -> torch.Tensor:
        out = self(z_visual, z_audio)
        return F.softmax(out, dim=-1).max(-1).values if self.loss == "ac" else torch.sigmoid(out)


COMBINATIONS = ("convex-score", "convex-list", "union-list", "intersect-list")


class SamplerSelector:
    """Index with cheap saliency, recognise the top-K with a per-step classifier.

    ``samplers`` maps "visual"/"motion"/"audio"/"spectrum" to a sampler (two for the list/score combinations: a
    visual side, "visual" or "motion", and an audio side, "audio" or "spectrum"), or "av"/"av-motion"/"av-cheap" to
    a :class:`JointSampler`. ``recogniser`` is (head,
    stored descriptor it classifies); every descriptor or signal computed for the video is paid for exactly once, at
    ``costs``.
    """

    def __init__(self, name: str, samplers: dict[str, nn.Module], costs: UnitCosts,
                 recogniser: tuple[nn.Module, str], k: int = BUDGET, combine: str | None = None,
                 alpha: float | None = None, k_visual: int = 8):
        if combine is not None and combine not in COMBINATIONS:
            raise ValueError(f"combine must be one of {COMBINATIONS}")
        if combine and not any(set(samplers) == {v, a} for v in VISUAL_SIDES for a in AUDIO_SIDES):
            raise ValueError("a combination needs a visual-side sampler (visual or motion) and an audio-side one "
                             "(audio or spectrum)")
        self.visual_side = next((v for v in VISUAL_SIDES if v in samplers), None)
        self.audio_side = next((a for a in AUDIO_SIDES if a in samplers), None)
        self.name, self.samplers, self.costs, self.k = name, {m: s.eval() for m, s in samplers.items()}, costs, k
        self.head, self.feature = recogniser[0].eval(), recogniser[1]
        self.combine, self.alpha, self.k_visual = combine, alpha, k_visual
        self.sampler_gflops = {m: ShapeCosts(lambda n, m=m: self._count_sampler(m, n), affine_from=1)
                               for m in self.samplers}
        """GFLOPs of each sampler's saliency on n steps, by shape (linear in n)."""
        self.head_gflops = ShapeCosts(lambda rows: counted_gflops(lambda: F.softmax(self.head(torch.zeros(
            rows, in_features(self.head), device=next(self.head.parameters()).device)), 1).mean(0)))
        """GFLOPs of the recogniser on k steps, counted once per k."""

    def _count_sampler(self, modality: str, n: int) -> float:
        sampler = self.samplers[modality]
        dev = next(sampler.parameters()).device
        parts = (sampler.visual, sampler.audio) if modality in JOINT_MODALITIES else (sampler,)
        return counted_gflops(sampler.saliency, *(torch.zeros(n, in_features(p), device=dev) for p in parts))

    def _read(self) -> set[str]:
        """The stored arrays the samplers read (each computed once, on every step)."""
        return {f for m in self.samplers for f in modality_features(m)}

    @torch.inference_mode()
    def select(self, video) -> Selection:
        computed = self._read()
        arr = {n: stored(video, n) for n in computed}
        n_steps = len(next(iter(arr.values())))
        gflops = 0.0
        scores = {}
        for modality, sampler in self.samplers.items():
            rows = [arr[f] for f in modality_features(modality)]
            s, g = counted(sampler.saliency, *rows)
            scores[modality] = equal_rows_tied(s, *rows).numpy()
            gflops += g
        gflops += n_steps * sum(self.costs.of(f) for f in computed)
        k = min(self.k, n_steps)
        if self.combine is None:
            steps = top_k(next(iter(scores.values())), k)
        else:
            v, a = scores[self.visual_side], scores[self.audio_side]
            steps = {"convex-score": lambda: convex_score(v, a, k, self.alpha if self.alpha is not None else 0.9),
                     "convex-list": lambda: convex_list(v, a, k, self.alpha if self.alpha is not None else 0.8),
                     "union-list": lambda: union_list(v, a, k, self.k_visual),
                     "intersect-list": lambda: intersect_list(v, a, k)}[self.combine]()
        z = stored(video, self.feature)[torch.as_tensor(steps)]
        probs, g = counted(lambda: F.softmax(self.head(z), 1).mean(0))
        if self.feature == "fused":      # the student's descriptors not yet computed, plus Psi, for K steps
            gflops += k * (sum(self.costs.of(f) for f in ("image", "audio") if f not in computed) + self.costs.fusion)
        else:
            gflops += k * self.costs.of(self.feature)
        every = np.arange(n_steps)
        return Selection(np.asarray(steps), probs.numpy(), gflops + g,
                         {"saliency": {m: (every, s) for m, s in scores.items()}})

    @torch.inference_mode()
    def select_batch(self, block: VideoBlock) -> BlockSelection:
        """:meth:`select` for a block of videos: each sampler's saliency and the recogniser's probabilities are
        computed once per block and shared with the other rows of the same modules; GFLOPs by shape."""
        mask = block.mask
        scores = {m: sampler_saliency(block, m, s) for m, s in self.samplers.items()}
        k = block.lengths.clamp(max=self.k)
        width = min(self.k, block.n)
        if self.combine is None:
            steps = masked_top(next(iter(scores.values())), mask, self.k)
        else:
            v, a = scores[self.visual_side], scores[self.audio_side]
            alpha = self.alpha if self.alpha is not None else {"convex-score": 0.9, "convex-list": 0.8}.get(
                self.combine)
            steps = {"convex-score": lambda: masked_top(alpha * v + (1 - alpha) * a, mask, self.k),
                     "convex-list": lambda: convex_list_batch(v, a, mask, k, width, alpha),
                     "union-list": lambda: union_list_batch(v, a, mask, k, width, self.k_visual),
                     "intersect-list": lambda: intersect_list_batch(v, a, mask, k, width)}[self.combine]()
        probs = head_probabilities(block, self.head, self.feature)
        n, kk = block.lengths.cpu().numpy(), k.cpu().numpy()
        gflops = np.zeros(len(block))
        computed = self._read()
        for modality in self.samplers:
            gflops += self.sampler_gflops[modality].each(n)
        gflops += n * sum(self.costs.of(f) for f in computed)
        if self.feature == "fused":
            gflops += kk * (sum(self.costs.of(f) for f in ("image", "audio") if f not in computed) + self.costs.fusion)
        else:
            gflops += kk * self.costs.of(self.feature)
        return BlockSelection(steps.cpu().numpy(), mean_at(probs, steps).double().cpu().numpy(),
                              gflops + self.head_gflops.each(kk))
