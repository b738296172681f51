"""ImgAud-Skimming (Listen to Look §3.3, supp. C, D, G): an attention LSTM that picks T useful moments.

At each step the LSTM state queries the image and audio indexing features (Eq. 6), soft-indexes them (Eq. 7), mixes
the two modalities with predicted scores s^I, s^A (Eq. 8) and feeds Psi(z~^I, z~^A) back (Eq. 5); m is the mean of
the T fused features (Eq. 9) and an FC layer classifies it.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import numpy as np

import torch
from torch import nn
from torch.nn import functional as F

from models.imgaud import AUDIO_DIM, FUSED_DIM, IMAGE_DIM, Fusion
from models.selection import (BUDGET, NO_STEP, BlockSelection, Selection, ShapeCosts, UnitCosts, VideoArrays,
                              VideoBlock, counted, counted_gflops, masked_top, stored)

INDEXING_MODES = ("audio-visual", "visual", "single")
NEG = -1e9   # what padded or already-chosen positions score before the softmax


def soft_index(w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Eq. 7: the attention-weighted sum of indexing features. w (B, N), z (B, N, D) -> (B, D)."""
    return torch.bmm(w.unsqueeze(1), z).squeeze(1)


def kept_steps(n: int, subsample: int) -> torch.Tensor:
    """Indices whose indexing features are computed when subsampling by ``subsample``: every s-th step and the last."""
    if subsample < 1:
        raise ValueError(f"subsample factor must be >= 1, got {subsample}")
    idx = list(range(0, n, subsample))
    if n and idx[-1] != n - 1:
        idx.append(n - 1)
    return torch.tensor(idx, dtype=torch.long)


def interpolate_features(z: torch.Tensor, subsample: int) -> torch.Tensor:
    """Sparse indexing features: keep :func:`kept_steps`, rebuild the rest by linear interpolation along time.

    z (N, D) -> (N, D); exact on sequences that are linear in time.
    """
    n = z.shape[0]
    if subsample == 1 or n <= 2:
        return z
    kept = kept_steps(n, subsample).to(z.device)
    pos = torch.arange(n, device=z.device)
    right = torch.searchsorted(kept, pos).clamp(max=len(kept) - 1)
    left = (right - 1).clamp(min=0)
    exact = kept[right] == pos
    a, b = kept[left], kept[right]
    frac = ((pos - a).float() / (b - a).clamp(min=1).float()).unsqueeze(1).to(z.dtype)
    out = z[a] + frac * (z[b] - z[a])
    return torch.where(exact.unsqueeze(1), z[pos], out)


def interpolate_padded(z: torch.Tensor, lengths: torch.Tensor, subsample: int) -> torch.Tensor:
    """:func:`interpolate_features` of every video of a padded batch at once: z (B, N, D), ``lengths`` (B,) valid
    steps per video; padded steps come back as zeros. Equal to interpolating each video alone."""
    if subsample == 1:
        return z
    b, n = z.shape[:2]
    lengths = lengths.to(z.device).long()
    pos = torch.arange(n, device=z.device).expand(b, n)
    last = (lengths - 1).clamp(min=0)[:, None]
    a = (pos // subsample) * subsample                       # the kept step at or before pos
    bnext = torch.minimum(a + subsample, last)                # the next kept step: s on, or the last valid one
    exact = (pos % subsample == 0) | (pos == last) | (lengths[:, None] <= 2)
    a, bnext = a.clamp(max=n - 1), bnext.clamp(min=0)
    frac = ((pos - a).float() / (bnext - a).clamp(min=1).float()).unsqueeze(2).to(z.dtype)
    # the kept steps before and after each position without a gather over (B, N, D): the grid z[:, ::s] repeated s
    # times, its next point likewise; only where the next kept step is a video's last one is it read per video
    grid = z[:, ::subsample]
    za = grid.repeat_interleave(subsample, dim=1)[:, :n]
    zb = torch.cat([grid[:, 1:], grid[:, -1:]], 1).repeat_interleave(subsample, dim=1)[:, :n]
    tail = (a + subsample > last).unsqueeze(2)
    zb = torch.where(tail, z[torch.arange(b, device=z.device), last[:, 0]].unsqueeze(1), zb)
    out = torch.where(exact.unsqueeze(2), z, za + frac * (zb - za))
    return out * (pos < lengths[:, None]).unsqueeze(2).to(z.dtype)


def masked_mean(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid steps. z (B, N, D), mask (B, N) -> (B, D)."""
    m = mask.unsqueeze(-1).to(z.dtype)
    return (z * m).sum(1) / m.sum(1).clamp(min=1)


class IndexKey(nn.Module):
    """Key(.): a 1x1 convolution + BN + ReLU over the feature bank, applied to valid steps only."""

    def __init__(self, in_dim: int, key_dim: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(in_dim, key_dim, kernel_size=1), nn.BatchNorm1d(key_dim), nn.ReLU())
        self.key_dim = key_dim

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, N, D), (B, N) -> keys (B, N, key_dim), zero at padded steps (BN statistics see valid steps only)."""
        conv, norm, relu = self.net
        rows = z[mask]                                   # (M, D)
        keys = relu(norm(F.linear(rows, conv.weight.squeeze(-1), conv.bias)))   # the 1x1 convolution as one GEMM
        out = z.new_zeros(*mask.shape, self.key_dim)
        out[mask] = keys
        return out


def attention_query(hidden: int = 1024, key_dim: int = 512) -> nn.Module:
    """Query(.): MLP 1024 -> 1024 (BN, ReLU) -> 512."""
    return nn.Sequential(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, key_dim))


class KeyBank:
    """The keys of one feature bank, queried by the T - 1 skimming steps in turn (Eq. 6).

    In training, the gradient of the keys is the sum over steps of (score gradient) x (query): formed here once, as
    one batched GEMM over the stacked steps when backward reaches the keys, instead of one (B, N, d) outer product
    and one accumulation per step. Without gradients the keys are used as they are."""

    def __init__(self, keys: torch.Tensor):
        self.keys = keys
        self.values = keys.detach()
        self.queries: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        self.anchor = _BankAnchor.apply(keys, self) if keys.requires_grad and torch.is_grad_enabled() else None

    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """k^T q of every step: query (B, d) -> (B, N)."""
        if self.anchor is None:
            return torch.bmm(query.unsqueeze(1), self.keys.transpose(1, 2)).squeeze(1)
        return _BankScores.apply(query, self.anchor, self)


class _BankAnchor(torch.autograd.Function):
    """Ties a :class:`KeyBank`'s scores to its keys: its backward runs after every step's, and returns the keys'
    gradient from the steps' stacked (score gradient, query) pairs."""

    @staticmethod
    def forward(ctx, keys, bank):
        ctx.bank = bank
        return keys.new_zeros(())

    @staticmethod
    def backward(ctx, _):
        bank = ctx.bank
        if not bank.grads:
            return None, None
        g = torch.stack(bank.grads, 2)                   # (B, N, steps)
        q = torch.stack(bank.queries, 1)                 # (B, steps, d)
        bank.grads, bank.queries = [], []
        return torch.bmm(g, q), None


class _BankScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, anchor, bank):
        ctx.bank = bank
        ctx.save_for_backward(query)
        return torch.bmm(query.unsqueeze(1), bank.values.transpose(1, 2)).squeeze(1)

    @staticmethod
    def backward(ctx, g):
        (query,) = ctx.saved_tensors
        ctx.bank.grads.append(g)
        ctx.bank.queries.append(query)
        return torch.bmm(g.unsqueeze(1), ctx.bank.values).squeeze(1), None, None


def attend(keys: torch.Tensor | KeyBank, query: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Eq. 6: softmax(k^T q / sqrt(d)) over the available steps. keys (B, N, d) or their :class:`KeyBank`,
    query (B, d) -> w (B, N)."""
    bank = keys if isinstance(keys, KeyBank) else KeyBank(keys)
    scores = bank.scores(query) / math.sqrt(bank.values.shape[-1])
    return F.softmax(scores.masked_fill(~available, NEG), dim=1)


@dataclass
class SkimOutput:
    logits: torch.Tensor          # (B, C) the classifier on m (Eq. 9)
    steps: torch.Tensor           # (B, T - 1) the step looked at by each skimming step whose feature enters m
    fused: torch.Tensor           # (B, T, 512) Psi(z~_1) .. Psi(z~_T): the LSTM inputs, z~_1 the mean features
    modality: torch.Tensor        # (B, T - 1, 2) s^I, s^A per skimming step
    attention: torch.Tensor       # (B, T - 1, N) each skimming step's weights over the steps, s^I w^I + s^A w^A

    def prefix_means(self) -> torch.Tensor:
        """m_t = (1/t) sum_{j<=t} Psi(z~_j) for t = 1..T: what an early stop after t inputs classifies. (B, T, D)"""
        t = torch.arange(1, self.fused.shape[1] + 1, device=self.fused.device, dtype=self.fused.dtype)
        return self.fused.cumsum(1) / t[None, :, None]


class ImgAudSkimmer(nn.Module):
    """ImgAud-Skimming over a video's indexing features.

    ``indexing``: "audio-visual" (the paper's method), "visual" (ablation G.1: query the image features only; the
    audio feature is the one at argmax w^I) or "single" (ablation G.2: one query on the fused features).
    """

    def __init__(self, fusion: Fusion, num_classes: int, image_dim: int = IMAGE_DIM, audio_dim: int = AUDIO_DIM,
                 fused_dim: int = FUSED_DIM, hidden: int = 1024, key_dim: int = 512, indexing: str = "audio-visual"):
        super().__init__()
        if indexing not in INDEXING_MODES:
            raise ValueError(f"indexing must be one of {INDEXING_MODES}, got {indexing!r}")
        self.indexing, self.hidden, self.num_classes = indexing, hidden, num_classes
        self.fusion = fusion
        self.lstm = nn.LSTMCell(fused_dim, hidden)
        if indexing == "single":
            self.key_f = IndexKey(fused_dim, key_dim)
            self.query_f = attention_query(hidden, key_dim)
        else:
            self.key_i, self.key_a = IndexKey(image_dim, key_dim), IndexKey(audio_dim, key_dim)
            self.query_i, self.query_a = attention_query(hidden, key_dim), attention_query(hidden, key_dim)
            self.modality = nn.Linear(hidden, 2)
        # BN before the final FC: stored features vary little between videos around a large common offset (random or
        # frozen backbones), and an unnormalised FC on m learns far too slowly; with trained features it is harmless.
        self.classifier = nn.Sequential(nn.BatchNorm1d(fused_dim), nn.Linear(fused_dim, num_classes))

    def forward(self, z_image: torch.Tensor, z_audio: torch.Tensor, mask: torch.Tensor, steps: int = 10,
                hard: bool = False, z_fused: torch.Tensor | None = None,
                lookup: tuple[torch.Tensor, ...] | None = None) -> SkimOutput:
        """Skim with ``steps`` LSTM steps (T). z_* (B, N, D) indexing features, mask (B, N) valid steps.

        The first input is Psi of the mean features (z~_1); each step's attention gives the next input, so T steps
        look at T - 1 moments and m averages the T inputs Psi(z~_1) .. Psi(z~_T) (Eq. 9). ``hard`` (ablation G.3,
        "unaggregated") feeds the features at the chosen step instead of the soft-indexed aggregate; the features
        looked up at a chosen step (hard, and the visual mode's audio) come from ``lookup`` when given (the real
        features where the indexing features are interpolated). A chosen step is never chosen again while unchosen
        valid steps remain.
        """
        if steps < 1:
            raise ValueError(f"skimming needs at least one step, got {steps}")
        if self.indexing == "single":
            if z_fused is None:
                raise ValueError("single-query skimming needs the fused features")
            return self._forward_single(z_fused, mask, steps, hard, lookup[0] if lookup else z_fused)
        real_i, real_a = lookup if lookup is not None else (z_image, z_audio)
        b = torch.arange(mask.shape[0], device=mask.device)
        k_i, k_a = KeyBank(self.key_i(z_image, mask)), KeyBank(self.key_a(z_audio, mask))
        avail_i, avail_a, taken = mask.clone(), mask.clone(), torch.zeros_like(mask)
        h = z_image.new_zeros(mask.shape[0], self.hidden)
        c = torch.zeros_like(h)
        x = self.fusion(masked_mean(z_image, mask), masked_mean(z_audio, mask))   # z~_1: the mean features
        fused, chosen, modality, attention = [x], [], [], []
        for _ in range(steps - 1):
            h, c = self.lstm(x, (h, c))
            w_i = attend(k_i, self.query_i(h), avail_i)
            w_a = attend(k_a, self.query_a(h), avail_a)
            s = F.softmax(self.modality(h), dim=1)                               # s^I, s^A (Eq. 8)
            if self.indexing == "visual":
                j = w_i.argmax(1)
                zi, za, combined = soft_index(w_i, z_image), real_a[b, j], w_i
            else:
                s_i, s_a = s[:, :1], s[:, 1:]
                w = torch.stack([w_i, w_a], 1)                                  # each bank read once for both
                zi = (s.unsqueeze(2) * torch.bmm(w, z_image)).sum(1)      # s^I soft_index(w^I) + s^A soft_index(w^A)
                za = (s.unsqueeze(2) * torch.bmm(w, z_audio)).sum(1)
                combined = s_i * w_i + s_a * w_a
            pick = self._pick(combined, mask, taken)
            if hard:
                zi, za = real_i[b, pick], real_a[b, pick]
            avail_i = self._mask_out(avail_i, w_i.argmax(1), mask)
            avail_a = self._mask_out(avail_a, w_a.argmax(1), mask)
            x = self.fusion(zi, za)
            fused.append(x)
            chosen.append(pick)
            modality.append(s)
            attention.append(combined.detach())
        return self._output(fused, chosen, modality, attention, mask)

    def _output(self, fused: list, chosen: list, modality: list, attention: list, mask: torch.Tensor) -> SkimOutput:
        feats = torch.stack(fused, 1)
        b, n = mask.shape
        steps = torch.stack(chosen, 1) if chosen else torch.zeros(b, 0, dtype=torch.long, device=mask.device)
        mod = torch.stack(modality, 1) if modality else feats.new_zeros(b, 0, 2)
        att = torch.stack(attention, 1) if attention else feats.new_zeros(b, 0, n)
        return SkimOutput(self.classify(feats.mean(1)), steps, feats, mod, att)

    def first_query_weights(self, z_image: torch.Tensor, z_audio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The attention of the first skimming step alone (Eq. 6, 8): the LSTM state after the mean-feature input
        queries both modalities, and their weights are mixed by s^I, s^A. (B, N) over the valid steps."""
        x = self.fusion(masked_mean(z_image, mask), masked_mean(z_audio, mask))
        h, _ = self.lstm(x)
        w_i = attend(self.key_i(z_image, mask), self.query_i(h), mask)
        w_a = attend(self.key_a(z_audio, mask), self.query_a(h), mask)
        s = F.softmax(self.modality(h), dim=1)
        return s[:, :1] * w_i + s[:, 1:] * w_a

    def classify(self, m: torch.Tensor) -> torch.Tensor:
        """Class logits of aggregated fused features m (B, D), as Eq. 9's m is classified."""
        return self.classifier(m)

    def _forward_single(self, z: torch.Tensor, mask: torch.Tensor, steps: int, hard: bool,
                        real: torch.Tensor) -> SkimOutput:
        b = torch.arange(mask.shape[0], device=mask.device)
        keys = KeyBank(self.key_f(z, mask))
        avail, taken = mask.clone(), torch.zeros_like(mask)
        h = z.new_zeros(mask.shape[0], self.hidden)
        c = torch.zeros_like(h)
        x = masked_mean(z, mask)
        feats, chosen, attention = [x], [], []
        for _ in range(steps - 1):
            h, c = self.lstm(x, (h, c))
            w = attend(keys, self.query_f(h), avail)
            attention.append(w.detach())
            pick = self._pick(w, mask, taken)
            x = real[b, pick] if hard else soft_index(w, z)
            avail = self._mask_out(avail, w.argmax(1), mask)
            feats.append(x)
            chosen.append(pick)
        modality = [torch.tensor([1.0, 0.0], device=z.device).expand(len(b), 2)] * len(chosen)
        return self._output(feats, chosen, modality, attention, mask)

    @staticmethod
    def _pick(weights: torch.Tensor, mask: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
        """The step looked at: the best-weighted valid step not yet chosen (any valid step once all are chosen)."""
        free = mask & ~taken
        free = torch.where(free.any(1, keepdim=True), free, mask)
        pick = weights.detach().masked_fill(~free, -1.0).argmax(1)
        taken[torch.arange(len(pick), device=pick.device), pick] = True
        return pick

    @staticmethod
    def _mask_out(avail: torch.Tensor, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Remove each video's argmax from its available steps; a video with none left starts over."""
        avail = avail.clone()
        avail[torch.arange(len(idx), device=idx.device), idx] = False
        return torch.where(avail.any(1, keepdim=True), avail, mask)


def kept_counts(lengths: np.ndarray, subsample: int) -> np.ndarray:
    """len(kept_steps(n, subsample)) for every n of ``lengths``: every s-th step, and the last one."""
    n = np.asarray(lengths, np.int64)
    return np.where(n > 0, -(-n // subsample) + ((n - 1) % subsample != 0), 0)


_SKIM_COSTS: "weakref.WeakKeyDictionary[ImgAudSkimmer, dict]" = weakref.WeakKeyDictionary()
SKIM_AFFINE_FROM = 16     # step counts from which a skimmer's counted FLOPs are read off a line in N


def skim_gflops(skimmer: ImgAudSkimmer, n: int, steps: int, hard: bool = False) -> float:
    """GFLOPs of the skimmer's own modules on one video of ``n`` steps skimmed with T = ``steps``, by shape: counted
    with FlopCounterMode at T = 1 and T = 2, and affine in T beyond (every skimming step runs the same modules on the
    same shapes); counted for each n below SKIM_AFFINE_FROM and affine in n from there (keys, attention and soft
    indexing grow linearly with the steps). The indexing features themselves are paid for by the caller."""
    per_n = _SKIM_COSTS.setdefault(skimmer, {})
    if hard not in per_n:
        per_n[hard] = tuple(ShapeCosts(lambda m, t=t: _count_skim(skimmer, m, t, hard), SKIM_AFFINE_FROM)
                            for t in (1, 2))
    one, two = (c(n) for c in per_n[hard])
    return one + (steps - 1) * (two - one)


def _count_skim(skimmer: ImgAudSkimmer, n: int, steps: int, hard: bool) -> float:
    dev = next(skimmer.parameters()).device
    mask = torch.ones(1, n, dtype=torch.bool, device=dev)
    if skimmer.indexing == "single":
        z = torch.zeros(1, n, skimmer.key_f.net[0].in_channels, device=dev)
        return counted_gflops(skimmer, None, None, mask, steps, hard, z, lookup=(z,))
    z_i = torch.zeros(1, n, skimmer.key_i.net[0].in_channels, device=dev)
    z_a = torch.zeros(1, n, skimmer.key_a.net[0].in_channels, device=dev)
    return counted_gflops(skimmer, z_i, z_a, mask, steps, hard, lookup=(z_i, z_a))


def skim_block(block: VideoBlock, skimmer: ImgAudSkimmer, subsample: int, hard: bool, steps: int) -> SkimOutput:
    """One skimmer run with T = ``steps`` over a block (padded, masked), shared through the block's memo by every
    row of the same network, subsampling and hard option: an early stop at t < T is a prefix of it (the sweep's ten
    early-stop rows are one run); the interpolated indexing features are shared by every network at that s."""
    def run() -> SkimOutput:
        skimmer.to(block.device)
        names = ("fused",) if skimmer.indexing == "single" else ("image", "audio")
        real = [block.padded(k) for k in names]
        feats = [block.memo(("interpolated", k, subsample),
                            lambda z=z: interpolate_padded(z, block.lengths, subsample)) for k, z in zip(names, real)]
        if skimmer.indexing == "single":
            return skimmer(None, None, block.mask, steps, hard, feats[0], lookup=real)
        return skimmer(feats[0], feats[1], block.mask, steps, hard, lookup=real)
    return block.memo(("skim", id(skimmer), subsample, hard, steps), run)


class SkimSelector:
    """ImgAud-Skimming with its inference options: early stop (``steps``), sparse indexing features
    (``subsample``), unaggregated argmax features (``hard``, ablation G.3). In a block, the skimmer runs for
    ``run_steps`` (default ``steps``) and this row reads the first ``steps`` of it: rows that differ only in the
    early stop share one run."""

    def __init__(self, name: str, skimmer: ImgAudSkimmer, costs: UnitCosts, steps: int = BUDGET,
                 subsample: int = 1, hard: bool = False, run_steps: int | None = None):
        self.name, self.skimmer, self.pair_gflops = name, skimmer.eval(), costs.pair
        self.steps, self.subsample, self.hard = steps, subsample, hard
        self.run_steps = max(steps, run_steps or steps)

    @property
    def looks_up(self) -> bool:
        """Whether the chosen steps' own features are read (computed) beside the indexing features."""
        return self.hard or self.skimmer.indexing == "visual"

    @torch.inference_mode()
    def select(self, video: VideoArrays) -> Selection:
        single = self.skimmer.indexing == "single"
        names = ("fused",) if single else ("image", "audio")
        real = [stored(video, k)[None] for k in names]
        feats = [interpolate_features(z[0], self.subsample)[None] for z in real]
        n = feats[0].shape[1]
        mask = torch.ones(1, n, dtype=torch.bool)
        if single:
            out, gflops = counted(self.skimmer, None, None, mask, self.steps, self.hard, feats[0], lookup=real)
        else:
            out, gflops = counted(self.skimmer, feats[0], feats[1], mask, self.steps, self.hard, lookup=real)
        steps = out.steps[0].numpy()
        computed = set(kept_steps(n, self.subsample).tolist())
        if self.looks_up:
            computed |= set(steps.tolist())      # the chosen steps' own features are computed and used
        details = {"attention": out.attention[0].numpy()}
        if self.skimmer.indexing == "audio-visual":          # s^I, s^A mix the two attentions only in this mode
            details["modality"] = out.modality[0].numpy()
        return Selection(steps, F.softmax(out.logits[0], 0).numpy(), len(computed) * self.pair_gflops + gflops,
                         details)

    @torch.inference_mode()
    def select_batch(self, block: VideoBlock) -> BlockSelection:
        """:meth:`select` for a block of videos, reading a shared run (:func:`skim_block`); GFLOPs by shape."""
        out = skim_block(block, self.skimmer, self.subsample, self.hard, self.run_steps)
        t = self.steps
        logits = out.logits if t == out.fused.shape[1] else self.skimmer.classify(out.fused[:, :t].mean(1))
        steps = out.steps[:, :t - 1].cpu().numpy()
        n = block.lengths.cpu().numpy()
        computed = kept_counts(n, self.subsample)
        if self.looks_up and self.subsample > 1:      # chosen steps that are not kept, each counted once
            extra = (steps % self.subsample != 0) & (steps != (n - 1)[:, None])
            ordered = np.sort(np.where(extra, steps, -1), axis=1)
            computed = computed + ((ordered >= 0) & np.diff(ordered, axis=1, prepend=-1).astype(bool)).sum(1)
        lengths, inverse = np.unique(n, return_inverse=True)
        own = np.array([skim_gflops(self.skimmer, int(v), t, self.hard) for v in lengths])[inverse]
        return BlockSelection(steps, F.softmax(logits, 1).double().cpu().numpy(), computed * self.pair_gflops + own)


def non_recurrent(skimmer: ImgAudSkimmer, z_i: torch.Tensor, z_a: torch.Tensor, mask: torch.Tensor, k: int = BUDGET,
                  straight_through: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """NON-RECURRENT (Listen to Look §4.2): the skimmer's first query alone (from the LSTM state after the
    mean-feature input; Eq. 6, 8), no recurrent iterations; the k steps of largest attention weight are looked at,
    Psi of their image and audio features is averaged (as Eq. 9 averages the T inputs) and classified.
    z_* (B, N, D), mask (B, N) -> (steps (B, min(k, N)), NO_STEP past each video's count; logits (B, C)).

    ``straight_through`` (training): the forward value is the same, and the gradient reaches the query, keys and
    modality scores through a soft top-k: the r-th look's features are also soft-indexed (Eq. 7) with the attention
    renormalised over the steps not among the r - 1 before it (the skimmer's masking of chosen moments), whose
    limit as the attention sharpens is the r-th largest step, and that soft feature's gradient is passed to the
    hard one (z_hard + z_soft - stop_gradient(z_soft)). Without it no soft feature is formed (nor counted)."""
    w = skimmer.first_query_weights(z_i, z_a, mask)
    steps = masked_top(w, mask, k)
    valid, idx = steps != NO_STEP, steps.clamp(min=0)
    pick = lambda z: torch.gather(z, 1, idx.unsqueeze(-1).expand(-1, -1, z.shape[-1]))  # noqa: E731
    zi, za = pick(z_i), pick(z_a)
    if straight_through:
        b, n = mask.shape
        top = steps.shape[1]
        place = torch.arange(top, device=mask.device).expand(b, -1).masked_fill(~valid, top)
        rank = torch.full((b, n), top, dtype=torch.long, device=mask.device).scatter_reduce(   # place in the top k
            1, idx, place, reduce="amin")
        looks = torch.arange(steps.shape[1], device=mask.device)
        avail = mask[:, None, :] & (rank[:, None, :] >= looks[None, :, None])       # (B, k, N): not looked at yet
        soft = w[:, None, :] * avail.to(w.dtype)
        soft = soft / soft.sum(2, keepdim=True).clamp(min=1e-12)
        si, sa = torch.bmm(soft, z_i), torch.bmm(soft, z_a)
        zi, za = zi + (si - si.detach()), za + (sa - sa.detach())
    fused = skimmer.fusion(zi.reshape(-1, zi.shape[-1]), za.reshape(-1, za.shape[-1])).reshape(*idx.shape, -1)
    return steps, skimmer.classify(masked_mean(fused, valid))


class NonRecurrentSelector:
    """NON-RECURRENT (:func:`non_recurrent`): one query (from the LSTM state after the mean-feature input), then the
    k steps with the largest attention weights; their fused features are averaged and classified."""

    def __init__(self, name: str, skimmer: ImgAudSkimmer, costs: UnitCosts, k: int = BUDGET):
        self.name, self.skimmer, self.pair_gflops, self.k = name, skimmer.eval(), costs.pair, k
        self.own_gflops = ShapeCosts(self._count, affine_from=max(k, 1))
        """GFLOPs of the query, the min(k, n) fusions and the classifier on one video of n steps, by shape."""

    def _run(self, z_i: torch.Tensor, z_a: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps (B, k; NO_STEP past each video's count) and class probabilities (B, C) of padded videos."""
        steps, logits = non_recurrent(self.skimmer, z_i, z_a, mask, self.k)
        return steps, F.softmax(logits, 1)

    def _count(self, n: int) -> float:
        dev = next(self.skimmer.parameters()).device
        z_i = torch.zeros(1, n, self.skimmer.key_i.net[0].in_channels, device=dev)
        z_a = torch.zeros(1, n, self.skimmer.key_a.net[0].in_channels, device=dev)
        return counted_gflops(self._run, z_i, z_a, torch.ones(1, n, dtype=torch.bool, device=dev))

    @torch.inference_mode()
    def select(self, video: VideoArrays) -> Selection:
        z_i, z_a = stored(video, "image")[None], stored(video, "audio")[None]
        mask = torch.ones(1, z_i.shape[1], dtype=torch.bool)
        (steps, probs), gflops = counted(self._run, z_i, z_a, mask)
        return Selection(steps[0].numpy(), probs[0].numpy(), z_i.shape[1] * self.pair_gflops + gflops)

    @torch.inference_mode()
    def select_batch(self, block: VideoBlock) -> BlockSelection:
        """:meth:`select` for a block of videos; GFLOPs by shape."""
        self.skimmer.to(block.device)
        steps, probs = self._run(block.padded("image"), block.padded("audio"), block.mask)
        n = block.lengths.cpu().numpy()
        return BlockSelection(steps.cpu().numpy(), probs.double().cpu().numpy(),
                              n * self.pair_gflops + self.own_gflops.each(n))
