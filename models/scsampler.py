"""SCSampler (Korbar et al., §3): light saliency rankers over one modality's per-step descriptor, their losses
(AC, SAL-CL, SAL-RANK), and the audio-visual combinations used at selection time."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.selection import BUDGET, Selection, UnitCosts, counted, stored

LOSSES = ("ac", "sal-cl", "sal-rank")
MODALITY_FEATURE = {"visual": "image", "audio": "audio"}     # the stored descriptor a sampler of each modality reads


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


def sal_cl_labels(true_class_scores: torch.Tensor) -> torch.Tensor:
    """SAL-CL pseudo-labels: the top floor(L/2) steps of a video by f's true-class score are salient (1.0)."""
    n = len(true_class_scores)
    labels = torch.zeros(n)
    labels[torch.argsort(true_class_scores, descending=True)[: n // 2]] = 1.0
    return labels


def sal_cl_loss(logits: torch.Tensor, true_class_scores: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy against :func:`sal_cl_labels`."""
    return F.binary_cross_entropy_with_logits(logits, sal_cl_labels(true_class_scores).to(logits))


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


class JointSampler(nn.Module):
    """AV-joint-training: the visual and audio samplers' outputs averaged, and both fine-tuned through that average."""

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

    ``samplers`` maps "visual"/"audio" to a sampler (two for the list/score combinations), or "av" to a
    :class:`JointSampler`. ``recogniser`` is (head, stored descriptor it classifies); every descriptor computed for
    the video is paid for exactly once, at ``costs``.
    """

    def __init__(self, name: str, samplers: dict[str, nn.Module], costs: UnitCosts,
                 recogniser: tuple[nn.Module, str], k: int = BUDGET, combine: str | None = None,
                 alpha: float | None = None, k_visual: int = 8):
        if combine is not None and combine not in COMBINATIONS:
            raise ValueError(f"combine must be one of {COMBINATIONS}")
        if combine and set(samplers) != {"visual", "audio"}:
            raise ValueError("a combination needs a visual and an audio sampler")
        self.name, self.samplers, self.costs, self.k = name, {m: s.eval() for m, s in samplers.items()}, costs, k
        self.head, self.feature = recogniser[0].eval(), recogniser[1]
        self.combine, self.alpha, self.k_visual = combine, alpha, k_visual

    @torch.inference_mode()
    def select(self, video) -> Selection:
        arr = {n: stored(video, n) for n in ("image", "audio") if n in video.arrays}
        n_steps = len(next(iter(arr.values())))
        gflops = 0.0
        computed: set[str] = set()
        scores = {}
        for modality, sampler in self.samplers.items():
            if modality == "av":
                s, g = counted(sampler.saliency, arr["image"], arr["audio"])
                computed |= {"image", "audio"}
            else:
                s, g = counted(sampler.saliency, arr[MODALITY_FEATURE[modality]])
                computed.add(MODALITY_FEATURE[modality])
            scores[modality] = s.numpy()
            gflops += g
        gflops += n_steps * sum(self.costs.of(f) for f in computed)
        k = min(self.k, n_steps)
        if self.combine is None:
            steps = top_k(next(iter(scores.values())), k)
        else:
            v, a = scores["visual"], scores["audio"]
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
