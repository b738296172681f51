"""AVGN's temporal glance (Audio-Visual Glance Network §3.1, 3.3-3.5) over stored image and audio descriptors.

The global visual encoder f_G and audio encoder f_A are the stored ``image`` and ``audio`` features. AV-TeST embeds
them into tokens, concatenates the visual and audio token of each time step (Eq. 2), runs a transformer encoder and
scores each step's saliency with FC_s (Eq. 3). Visual tokens after the first T_G glances are replaced by a learnt
mask token (Eq. 14). The prediction head fuses audio into each visual feature with an attention block psi (query
e^G_t, keys/values the audio sequence) and classifies with FC layers aggregated over time by max (Eq. 8).
The spatial glance (AESPA, patch policy) needs pixels and is not part of this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.imgaud import AUDIO_DIM, IMAGE_DIM
from models.selection import (NO_STEP, BlockSelection, Selection, ShapeCosts, UnitCosts, VideoBlock, counted,
                              counted_gflops, stored)


def glance_order(t: int) -> list[int]:
    """Coarse-to-fine order of t sampled steps (0, t/2, t/4, 3t/4, ...): the first T_G glances span the video."""
    order, seen = [], set()
    step = t
    while len(order) < t:
        for i in range(0, t, max(step, 1)):
            if i not in seen:
                seen.add(i)
                order.append(i)
        step //= 2
        if step == 0:
            step = 1
    return order


class Standardize(nn.Module):
    """Per-dimension standardisation of a stored descriptor with statistics of the training split (buffers, saved
    with the model): stored features sit around a large common offset (random or frozen backbones), which the
    token projections would otherwise have to learn away."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_statistics(self, x: torch.Tensor) -> None:
        """Take the mean and standard deviation of rows ``x`` (N, dim)."""
        self.set_moments(x.mean(0), x.std(0))

    def set_moments(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Take a mean and (unbiased) standard deviation computed elsewhere, e.g. streamed over a large split."""
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SequenceClassifier(nn.Module):
    """f_C: FC layers on each step's feature, aggregated over steps 1..t by max, then FC to class logits."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int = 256):
        super().__init__()
        self.step = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cumulative: bool = False) -> torch.Tensor:
        """x (B, T, D) -> logits (B, C), or (B, T, C) for every prefix 1..t when ``cumulative``."""
        h = self.step(x)
        if mask is not None:
            h = h.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        h = torch.cummax(h, dim=1).values if cumulative else h.max(dim=1).values
        return self.out(h)

    def per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of each step alone (no aggregation), for the saliency pseudo-labels (Eq. 11)."""
        return self.out(self.step(x))


@dataclass
class AVGNOutput:
    saliency: torch.Tensor          # (B, T) in [0, 1]
    saliency_logits: torch.Tensor   # (B, T)
    tf_out: torch.Tensor            # (B, T, 2D) AV-TeST outputs
    tokens_v: torch.Tensor          # (B, T, D) embedded visual tokens before masking


class AVTeST(nn.Module):
    """AV-TeST plus AVGN's prediction head and auxiliary heads, over stored per-step descriptors."""

    def __init__(self, num_classes: int, image_dim: int = IMAGE_DIM, audio_dim: int = AUDIO_DIM, dim: int = 128,
                 layers: int = 2, heads: int = 4, max_len: int = 64, use_audio_tokens: bool = True):
        super().__init__()
        self.dim, self.use_audio_tokens, self.num_classes = dim, use_audio_tokens, num_classes
        self.norm_g, self.norm_a = Standardize(image_dim), Standardize(audio_dim)
        self.embed_v, self.embed_a = nn.Linear(image_dim, dim), nn.Linear(audio_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.pos = nn.Parameter(torch.zeros(max_len, 2 * dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(2 * dim, heads, dim_feedforward=4 * dim, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.fc_s = nn.Linear(2 * dim, 1)
        self.mask_decoder = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim))
        # prediction head: psi fuses the audio sequence into each visual feature, f_C^AV classifies
        self.proj_v, self.proj_a = nn.Linear(image_dim, dim), nn.Linear(audio_dim, dim)
        self.psi = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.f_av = SequenceClassifier(2 * dim, num_classes)
        # auxiliary heads (Eq. 9, 10)
        self.fc_g, self.fc_a = nn.Linear(image_dim, num_classes), nn.Linear(audio_dim, num_classes)
        self.f_v, self.f_a = SequenceClassifier(image_dim, num_classes), SequenceClassifier(audio_dim, num_classes)

    def glance(self, e_g: torch.Tensor, e_a: torch.Tensor, visible: torch.Tensor) -> AVGNOutput:
        """Eq. 2, 3, 14: saliency of every step. e_g (B, T, Dg) (rows where ``visible`` is False are never read),
        e_a (B, T, Da), visible (B, T) bool: which visual features were computed."""
        e_g, e_a = self.norm_g(e_g), self.norm_a(e_a)
        tok_v = self.embed_v(e_g)
        shown = torch.where(visible.unsqueeze(-1), tok_v, self.mask_token.expand_as(tok_v))
        tok_a = self.embed_a(e_a) if self.use_audio_tokens else torch.zeros_like(tok_v)
        x = torch.cat([shown, tok_a], dim=-1) + self.pos[: e_g.shape[1]]
        out = self.encoder(x)
        logits = self.fc_s(out).squeeze(-1)
        return AVGNOutput(torch.sigmoid(logits), logits, out, tok_v)

    def fused(self, e_g: torch.Tensor, e_a_all: torch.Tensor) -> torch.Tensor:
        """[e^G_t, e^AT_t] for each given step: psi attends from the visual feature to the whole audio sequence."""
        q = self.proj_v(self.norm_g(e_g))
        kv = self.proj_a(self.norm_a(e_a_all))
        at, _ = self.psi(q, kv, kv, need_weights=False)
        return torch.cat([q, at], dim=-1)

    def classify(self, e_g: torch.Tensor, e_a_all: torch.Tensor) -> torch.Tensor:
        """Video logits from the selected steps' visual features and the audio sequence (max over steps)."""
        return self.f_av(self.fused(e_g, e_a_all))


def saliency_pseudo_labels(step_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 12: s~_t = max_c p'_{c,t} / max_t max_c p'_{c,t}, p' the softmax of each step's own prediction."""
    conf = F.softmax(step_logits, dim=-1).max(dim=-1).values          # (B, T)
    return conf / conf.max(dim=1, keepdim=True).values


def avgn_losses(model: AVTeST, e_g: torch.Tensor, e_a: torch.Tensor, y: torch.Tensor, t_g: int, k: int,
                use_mask_loss: bool = True, tau: float = 1.0) -> dict[str, torch.Tensor]:
    """All of AVGN's training losses on a batch of T glance-ordered steps: L_p, L_V, L_A, L_s, L_mask, L_ord."""
    b, t, _ = e_g.shape
    visible = torch.zeros(b, t, dtype=torch.bool, device=e_g.device)
    visible[:, :t_g] = True
    g = model.glance(e_g, e_a, visible)
    fused = model.fused(e_g, e_a)                                         # (B, T, 2D)
    steps_y = y.unsqueeze(1).expand(b, t)
    ce = lambda logits: F.cross_entropy(logits.reshape(-1, logits.shape[-1]), steps_y.reshape(-1))  # noqa: E731
    losses = {"p": ce(model.f_av(fused, cumulative=True))}
    n_g, n_a = model.norm_g(e_g), model.norm_a(e_a)
    losses["v"] = ce(model.fc_g(n_g)) + ce(model.f_v(n_g, cumulative=True))
    losses["a"] = ce(model.fc_a(n_a)) + ce(model.f_a(n_a, cumulative=True))
    target = saliency_pseudo_labels(model.f_av.per_step(fused)).detach()
    losses["s"] = F.l1_loss(g.saliency, target)
    if use_mask_loss and t_g < t:
        recon = model.mask_decoder(g.tf_out[:, t_g:])
        losses["mask"] = F.mse_loss(recon, g.tokens_v[:, t_g:].detach())
    # ordered AV logits: Gumbel-softmax sample k steps by saliency, reorder, classify (straight-through weights)
    soft = F.gumbel_softmax(g.saliency_logits, tau=tau, hard=False, dim=1)
    idx = torch.argsort(soft, dim=1, descending=True)[:, :k]
    w = torch.gather(soft, 1, idx)
    picked = torch.gather(fused, 1, idx.unsqueeze(-1).expand(-1, -1, fused.shape[-1]))
    picked = picked * (w / w.detach()).unsqueeze(-1)
    losses["ord"] = F.cross_entropy(model.f_av(picked), y)
    return losses


def sample_steps(n: int, t: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """t steps of an n-step video in glance order: one per equal bin (random within the bin when a generator is given,
    its centre otherwise), then reordered coarse-to-fine. Videos shorter than t repeat steps."""
    edges = torch.linspace(0, n, t + 1)
    if generator is None:
        pos = (edges[:-1] + edges[1:]) / 2
    else:
        pos = edges[:-1] + torch.rand(t, generator=generator) * (edges[1:] - edges[:-1])
    steps = pos.long().clamp(0, n - 1)
    return steps[torch.tensor(glance_order(t))]


@lru_cache(maxsize=None)
def centre_steps(n: int, t: int) -> tuple[int, ...]:
    """:func:`sample_steps` without a generator (bin centres): it depends only on n and t, so it is computed once."""
    return tuple(sample_steps(n, t).tolist())


def _at(z: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` (B, K) of each video of ``z`` (B, N, D). (B, K, D)"""
    return torch.gather(z, 1, idx.unsqueeze(-1).expand(-1, -1, z.shape[-1]))


class AVGNSelector:
    """Top-k steps by AV-TeST saliency with T_G visual glances; recognition by the prediction head on those k.

    GFLOPs: the audio features of all T sampled steps, the visual features actually computed (the T_G glances and
    any chosen step beyond them), and the transformer and heads, counted on the call."""

    def __init__(self, name: str, model: AVTeST, costs: UnitCosts, k: int, t_g: int | None, t: int = 16):
        self.name, self.model, self.costs, self.k, self.t_g, self.t = name, model.eval(), costs, k, t_g, t
        self.glance_gflops = ShapeCosts(self._count_glance)
        """GFLOPs of the glance over the t sampled steps (the same shape for every video), counted once."""
        self.classify_gflops = ShapeCosts(self._count_classify)
        """GFLOPs of the prediction head on a number of chosen steps, counted once per number."""

    @property
    def glances(self) -> int:
        """T_G: the sampled steps whose visual features are computed before any saliency is known."""
        return self.t if self.t_g is None else min(self.t_g, self.t)

    def _zeros(self, rows: int, norm: Standardize) -> torch.Tensor:
        return torch.zeros(1, rows, norm.mean.numel(), device=norm.mean.device)

    def _count_glance(self) -> float:
        visible = torch.arange(self.t, device=self.model.pos.device)[None] < self.glances
        return counted_gflops(self.model.glance, self._zeros(self.t, self.model.norm_g),
                              self._zeros(self.t, self.model.norm_a), visible)

    def _count_classify(self, rows: int) -> float:
        return counted_gflops(self.model.classify, self._zeros(rows, self.model.norm_g),
                              self._zeros(self.t, self.model.norm_a))

    @torch.inference_mode()
    def select(self, video):
        image, audio = stored(video, "image"), stored(video, "audio")
        steps = sample_steps(len(image), self.t)
        t_g = self.t if self.t_g is None else min(self.t_g, self.t)
        visible = torch.zeros(1, self.t, dtype=torch.bool)
        visible[0, :t_g] = True
        e_g = image[steps][None] * visible[..., None]        # unglanced visual features are never computed
        e_a = audio[steps][None]
        g, flops_glance = counted(self.model.glance, e_g, e_a, visible)
        top = torch.argsort(g.saliency[0], descending=True)[: min(self.k, self.t)]
        top = top[torch.argsort(top)]                         # in glance order
        _, first = np.unique(steps[top].numpy(), return_index=True)
        top = top[np.sort(first)]                             # a short video samples steps twice: keep each once
        chosen = steps[top]
        logits, flops_head = counted(self.model.classify, image[chosen][None], e_a)
        n_visual = t_g + int((top >= t_g).sum())
        gflops = self.t * self.costs.audio + n_visual * self.costs.image + flops_glance + flops_head
        return Selection(chosen.numpy(), F.softmax(logits[0], 0).numpy(), gflops,
                         {"saliency": {"AV-TeST": (steps.numpy(), g.saliency[0].numpy())}})

    @torch.inference_mode()
    def select_batch(self, block: VideoBlock) -> BlockSelection:
        """:meth:`select` for a block of videos: one glance over (B, t) sampled steps, the top-k back in glance order
        with repeated steps (short videos) dropped, the prediction head on the kept rows by mask; GFLOPs by shape."""
        model, dev, t, t_g = self.model.to(block.device), block.device, self.t, self.glances
        image = block.padded("image")

        def glance() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            sampled = torch.tensor([centre_steps(int(n), t) for n in block.lengths.tolist()], dtype=torch.long,
                                   device=dev).reshape(len(block), t)
            visible = (torch.arange(t, device=dev) < t_g)[None].expand(len(block), t)
            e_g = _at(image, sampled) * visible[..., None]        # unglanced visual features are never computed
            e_a = _at(block.padded("audio"), sampled)
            return sampled, e_a, model.glance(e_g, e_a, visible).saliency
        # the glance depends on the model and T_G only: rows that differ in k share it
        sampled, e_a, saliency = block.memo(("avgn-glance", id(model), t, t_g), glance)
        top = torch.sort(saliency, dim=1, descending=True, stable=True).indices[:, :min(self.k, t)]
        top = torch.sort(top, dim=1).values                                  # in glance order
        steps = sampled.gather(1, top)
        j = torch.arange(top.shape[1], device=dev)
        again = ((steps[:, :, None] == steps[:, None, :]) & (j[None, None, :] < j[None, :, None])).any(2)
        first = torch.sort(again.long(), dim=1, stable=True).indices         # each step once, still in glance order
        top, keep = top.gather(1, first), ~again.gather(1, first)
        steps = steps.gather(1, first)
        logits = model.f_av(model.fused(_at(image, steps), e_a), mask=keep)
        kept = keep.sum(1).cpu().numpy()
        n_visual = t_g + ((top >= t_g) & keep).sum(1).cpu().numpy()
        gflops = t * self.costs.audio + n_visual * self.costs.image + self.glance_gflops() + self.classify_gflops.each(
            kept)
        return BlockSelection(steps.masked_fill(~keep, NO_STEP).cpu().numpy(),
                              F.softmax(logits, 1).double().cpu().numpy(), gflops)
