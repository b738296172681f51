"""AVGN's spatial glance (Audio-Visual Glance Network §3.2-3.5, Tables 4 and 6) and FrameExit's early exit.

The temporal glance (:class:`models.avgn.AVTeST`) ranks the T sampled steps; only the k most salient reach the spatial
glance. For each of them the stored global feature map e^G_t (``image_map``: the image ResNet-18's layer4 output,
H_G x W_G x D_G) is flattened into tokens; :class:`AESPA` (Eq. 4) enhances them with the audio of all T steps through
shared bottleneck tokens; the recurrent :class:`PatchNetwork` pi (Eq. 5, after AdaFocusV2's policy) turns the
enhanced map e^GA_t into a continuous patch centre; :func:`crop_patches` (Eq. 6) cuts a P x P patch from the stored
frame by bilinear sampling, differentiable w.r.t. the centre; the :class:`LocalEncoder` f_L (Eq. 7) encodes it into
e^L_t. The prediction head f_C^AV classifies [e^G_t, e^L_t, e^AT_t] (Eq. 8) with a max over steps; e^AT_t is the
audio sequence attended from e^G_t by AVTeST's psi. Pure torch, no I/O: the arrays arrive as tensors.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.avgn import AVTeST, SequenceClassifier, Standardize, sample_steps, saliency_pseudo_labels
from models.imgaud import IMAGENET_MEAN, IMAGENET_STD
from models.selection import Selection, ShapeCosts, UnitCosts, counted_gflops, stored
from models.widths import AUDIO_DIM, IMAGE_DIM, MAP_DIM, MAP_SIZE

PATCH = 64                                           # P: the patch side in pixels on the stored 112 x 112 frames
SPATIAL_VARIANTS = ("aespa", "pi", "centre", "random")
"""Table 6's spatial samplings: AESPA + pi, pi on the global map alone, a fixed centre patch, a random patch."""


# --- Eq. 6: the differentiable crop ----------------------------------------------------------------------------------

def centre_bounds(patch: int, height: int, width: int, like: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lowest and highest patch centre (x, y) in [0, 1] frame coordinates that keep a ``patch`` x ``patch`` patch
    inside a ``height`` x ``width`` frame: (P / 2W, P / 2H) and (1 - P / 2W, 1 - P / 2H)."""
    if patch > min(height, width):
        raise ValueError(f"a {patch} px patch does not fit in a {height} x {width} frame")
    half = torch.tensor([patch / (2 * width), patch / (2 * height)])
    if like is not None:
        half = half.to(like)
    return half, 1 - half


def crop_patches(frames: torch.Tensor, centres: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """Eq. 6: the ``patch`` x ``patch`` patch of each frame around its centre, by bilinear interpolation.

    frames (B, C, H, W) float; centres (B, 2) as (x, y) in [0, 1] frame coordinates, (0, 0) the top-left corner of
    the top-left pixel and (1, 1) the bottom-right corner of the bottom-right pixel. Centres are clamped to
    :func:`centre_bounds` so the patch stays inside the frame (the gradient is zero where a centre was clamped:
    :class:`SpatialAVGN` maps pi's output into the bounds instead). Returns (B, C, P, P), differentiable w.r.t.
    ``frames`` and ``centres``.

    ``align_corners=False``: normalised coordinates -1 and 1 are the outer edges of the frame, so the patch's pixel
    (i, j) samples the frame at pixel coordinates (cx W - P / 2 + j, cy H - P / 2 + i) (pixel centres at integers):
    a centre on the pixel grid (cx W - P / 2 an integer) copies pixels exactly, a half-pixel centre averages two
    neighbours. ``align_corners=True`` would map -1 and 1 to the corner pixels' centres and shrink every patch by one
    pixel's span. (AdaFocusV2 crops the same way, from the patch's corner instead of its centre.)"""
    b, _, h, w = frames.shape
    lo, hi = centre_bounds(patch, h, w, like=centres)
    c = torch.clamp(centres, lo, hi)
    zero = torch.zeros_like(c[:, 0])
    theta = torch.stack([torch.stack([zero + patch / w, zero, 2 * c[:, 0] - 1], -1),
                         torch.stack([zero, zero + patch / h, 2 * c[:, 1] - 1], -1)], 1)     # (B, 2, 3)
    grid = F.affine_grid(theta, [b, frames.shape[1], patch, patch], align_corners=False)
    return F.grid_sample(frames, grid.to(frames.dtype), mode="bilinear", padding_mode="border", align_corners=False)


# --- Eq. 4: AESPA ----------------------------------------------------------------------------------------------------

class AESPA(nn.Module):
    """Audio-Enhanced Spatial Patch Attention (Eq. 4, Fig. 5): two transformer stacks TF_A and TF_G side by side on
    [z^A, b] and [z^G, b]; after each layer the shared bottleneck tokens b are the mean of the two stacks' updated
    bottleneck outputs. The visual output, reshaped to the map, is e^GA."""

    def __init__(self, dim: int, layers: int = 2, heads: int = 4, n_bottleneck: int = 4, map_size: int = MAP_SIZE,
                 dropout: float = 0.1):
        super().__init__()
        self.map_size = map_size

        def tf() -> nn.TransformerEncoderLayer:
            return nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout, batch_first=True)
        self.tf_a = nn.ModuleList(tf() for _ in range(layers))
        self.tf_g = nn.ModuleList(tf() for _ in range(layers))
        self.bottleneck = nn.Parameter(torch.zeros(n_bottleneck, dim))
        nn.init.normal_(self.bottleneck, std=0.02)

    def forward(self, z_g: torch.Tensor, z_a: torch.Tensor) -> torch.Tensor:
        """z_g (B, H_G W_G, dim) one frame's map tokens, z_a (B or 1, T, dim) audio tokens of all T steps ->
        e^GA (B, H_G, W_G, dim)."""
        n_b = z_g.shape[0]
        z_a = z_a.expand(n_b, -1, -1)
        b = self.bottleneck.expand(n_b, -1, -1)
        m = b.shape[1]
        for tf_a, tf_g in zip(self.tf_a, self.tf_g):
            out_a, out_g = tf_a(torch.cat([z_a, b], 1)), tf_g(torch.cat([z_g, b], 1))
            z_a, z_g = out_a[:, :-m], out_g[:, :-m]
            b = (out_a[:, -m:] + out_g[:, -m:]) / 2
        return z_g.reshape(n_b, self.map_size, self.map_size, -1)


# --- Eq. 5: the patch network ----------------------------------------------------------------------------------------

class PatchNetwork(nn.Module):
    """pi (Eq. 5), AdaFocusV2's recurrent policy: each step's map (H_G, W_G, D) reduced per position (a 1x1 'conv'
    to ``reduce`` channels), flattened, embedded, a GRU over the glanced steps in order, then (u_x, u_y) in (0, 1)
    by a sigmoid. The output layer starts at zero, so an untrained pi looks at the centre."""

    def __init__(self, in_dim: int, map_size: int = MAP_SIZE, hidden: int = 128, reduce: int = 16):
        super().__init__()
        self.reduce = nn.Sequential(nn.Linear(in_dim, reduce), nn.Tanh())
        self.embed = nn.Sequential(nn.Linear(map_size * map_size * reduce, hidden), nn.Tanh())
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 2)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, maps: torch.Tensor, hidden: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """maps (B, K, H_G, W_G, D) of K steps in processing order, ``hidden`` the GRU state after earlier steps
        (None: none) -> (u (B, K, 2) in (0, 1) as (x, y), the GRU state after the K steps)."""
        x = self.embed(self.reduce(maps).flatten(2))
        out, hidden = self.gru(x, hidden)
        return torch.sigmoid(self.fc(out)), hidden


# --- Eq. 7: the local encoder ----------------------------------------------------------------------------------------

class LocalEncoder(nn.Module):
    """f_L (Eq. 7): a CNN on the P x P patch, heavier than the map's token projections: ``len(widths)`` stages of
    3x3 stride-2 convolution + BN + ReLU (``depth`` - 1 further stride-1 convolutions per stage), global average
    pooling -> e^L (widths[-1])."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), depth: int = 1):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            for i in range(depth):
                layers += [nn.Conv2d(c, w, 3, stride=2 if i == 0 else 1, padding=1, bias=False), nn.BatchNorm2d(w),
                           nn.ReLU(inplace=True)]
                c = w
        self.features = nn.Sequential(*layers)
        self.dim = c

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """patches (B, 3, P, P) normalised -> e^L (B, dim)."""
        return self.features(patches).mean((2, 3))


# --- the model -------------------------------------------------------------------------------------------------------

@dataclass
class SpatialGlance:
    centres: torch.Tensor    # (B, K, 2) patch centres (x, y) in [0, 1] frame coordinates
    local: torch.Tensor      # (B, K, D_L) e^L
    features: torch.Tensor   # (B, K, 2 dim + D_L) [e^G, e^L, e^AT] (Eq. 8's input)
    hidden: torch.Tensor | None   # pi's GRU state after the K steps (None without pi)


class SpatialAVGN(nn.Module):
    """AVGN with both glances: the temporal glance (``temporal``, an :class:`AVTeST` with its psi and auxiliary
    heads) and the spatial glance of ``spatial`` kind (:data:`SPATIAL_VARIANTS`): ``"aespa"`` AESPA + pi,
    ``"pi"`` pi on the global map tokens alone, ``"centre"`` a fixed centre patch, ``"random"`` a uniformly random
    patch per step (seeded by the caller's generator). Heads: ``f_av`` f_C^AV on [e^G, e^L, e^AT] (Eq. 8),
    ``fc_l`` FC^L and ``f_v`` f_C^V on [e^G, e^L] (Eq. 9); FC^G, FC^A, f_C^A are the temporal model's.

    Inputs per video, the T sampled steps in glance order: ``e_g`` (B, T, image_dim) stored ``image``, ``e_a``
    (B, T, audio_dim) stored ``audio``, ``maps`` (B, T, H_G, W_G, D_G) stored ``image_map``, ``frames``
    (B, T, H, W, 3) uint8 stored ``frames``. Standardisation: set ``temporal.norm_g``, ``temporal.norm_a`` and
    ``norm_map`` (rows of D_G) from the training split."""

    def __init__(self, num_classes: int, spatial: str = "aespa", image_dim: int = IMAGE_DIM,
                 audio_dim: int = AUDIO_DIM, map_dim: int = MAP_DIM, map_size: int = MAP_SIZE, patch: int = PATCH,
                 dim: int = 128, layers: int = 2, heads: int = 4, max_len: int = 64, aespa_dim: int = 64,
                 aespa_layers: int = 2, n_bottleneck: int = 4, policy_hidden: int = 128,
                 local_widths: tuple[int, ...] = (32, 64, 128, 256), local_depth: int = 1, seed: int = 0):
        super().__init__()
        if spatial not in SPATIAL_VARIANTS:
            raise ValueError(f"spatial must be one of {SPATIAL_VARIANTS}, not {spatial!r}")
        self.spatial, self.patch, self.map_size, self.seed = spatial, patch, map_size, seed
        self.num_classes = num_classes
        self.temporal = AVTeST(num_classes, image_dim, audio_dim, dim, layers, heads, max_len)
        self.norm_map = Standardize(map_dim)
        if spatial in ("aespa", "pi"):
            self.embed_map = nn.Linear(map_dim, aespa_dim)
            self.pos_map = nn.Parameter(torch.zeros(map_size * map_size, aespa_dim))
            nn.init.normal_(self.pos_map, std=0.02)
            self.policy = PatchNetwork(aespa_dim, map_size, policy_hidden)
        if spatial == "aespa":
            self.embed_audio = nn.Linear(audio_dim, aespa_dim)
            self.pos_audio = nn.Parameter(torch.zeros(max_len, aespa_dim))
            nn.init.normal_(self.pos_audio, std=0.02)
            self.aespa = AESPA(aespa_dim, aespa_layers, heads, n_bottleneck, map_size)
        self.f_l = LocalEncoder(tuple(local_widths), local_depth)
        d_l = self.f_l.dim
        self.f_av = SequenceClassifier(2 * dim + d_l, num_classes)
        self.fc_l = nn.Linear(d_l, num_classes)
        self.f_v = SequenceClassifier(image_dim + d_l, num_classes)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    # pieces, each on K steps of B videos
    def pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (..., H, W, 3) frames -> normalised float (..., 3, H, W); float input is taken as already that."""
        if frames.dtype != torch.uint8:
            return frames
        x = frames.movedim(-1, -3).float().div(255)
        return (x - self.pixel_mean) / self.pixel_std

    def policy_input(self, maps: torch.Tensor, e_a: torch.Tensor) -> torch.Tensor:
        """pi's input: e^GA (AESPA over the map tokens and all T audio tokens) or, for ``"pi"``, the embedded map
        tokens e^G. maps (B, K, H_G, W_G, D_G), e_a (B, T, audio_dim) -> (B, K, H_G, W_G, aespa_dim)."""
        b, k = maps.shape[:2]
        tokens = self.embed_map(self.norm_map(maps.flatten(2, 3))) + self.pos_map        # (B, K, HW, d)
        if self.spatial == "pi":
            return tokens.reshape(b, k, self.map_size, self.map_size, -1)
        audio = self.embed_audio(self.temporal.norm_a(e_a)) + self.pos_audio[: e_a.shape[1]]   # (B, T, d)
        audio = audio.repeat_interleave(k, 0)
        return self.aespa(tokens.flatten(0, 1), audio).reshape(b, k, self.map_size, self.map_size, -1)

    def glance_centres(self, maps: torch.Tensor, e_a: torch.Tensor, frame_hw: tuple[int, int],
                       hidden: torch.Tensor | None = None, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch centres (B, K, 2) of K steps (in processing order) on frames of ``frame_hw``, inside the frame,
        and pi's GRU state after them (None without pi). pi's (0, 1) output is mapped linearly into
        :func:`centre_bounds` (never clamped, so it keeps its gradient)."""
        b, k = maps.shape[:2]
        lo, hi = centre_bounds(self.patch, *frame_hw, like=self.pixel_mean)
        if self.spatial == "centre":
            return torch.full((b, k, 2), 0.5, device=lo.device), None
        if self.spatial == "random":
            u = torch.rand(b, k, 2, generator=generator, device=generator.device if generator else lo.device)
            return lo + (hi - lo) * u.to(lo.device), None
        u, hidden = self.policy(self.policy_input(maps, e_a), hidden)
        return lo + (hi - lo) * u, hidden

    def local_features(self, frames: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """e^L (B, K, D_L): f_L on the patches of frames (B, K, H, W, 3) uint8 (or normalised (B, K, 3, H, W)) at
        ``centres`` (B, K, 2)."""
        x = self.pixels(frames)
        b, k = x.shape[:2]
        patches = crop_patches(x.flatten(0, 1), centres.flatten(0, 1).to(x.dtype), self.patch)
        return self.f_l(patches).reshape(b, k, -1)

    def head_input(self, e_g: torch.Tensor, e_l: torch.Tensor, e_a: torch.Tensor) -> torch.Tensor:
        """Eq. 8's input [e^G, e^L, e^AT] (B, K, 2 dim + D_L): e^G projected as psi's query, e^AT = psi(e^G, e^A)."""
        fused = self.temporal.fused(e_g, e_a)
        dim = self.temporal.dim
        return torch.cat([fused[..., :dim], e_l, fused[..., dim:]], -1)

    def spatial_glance(self, e_g: torch.Tensor, e_a: torch.Tensor, maps: torch.Tensor, frames: torch.Tensor,
                       hidden: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       centres: torch.Tensor | None = None) -> SpatialGlance:
        """The spatial glance on K steps (in processing order) of B videos: e_g (B, K, image_dim), e_a (B, T,
        audio_dim) all T sampled steps, maps (B, K, H_G, W_G, D_G), frames (B, K, H, W, 3); ``centres`` (B, K, 2)
        given skips pi (a caller's own patches)."""
        if centres is None:
            centres, hidden = self.glance_centres(maps, e_a, tuple(frames.shape[-3:-1]) if frames.dtype == torch.uint8
                                                  else tuple(frames.shape[-2:]), hidden, generator)
        e_l = self.local_features(frames, centres)
        return SpatialGlance(centres, e_l, self.head_input(e_g, e_l, e_a), hidden)

    def forward(self, e_g: torch.Tensor, e_a: torch.Tensor, maps: torch.Tensor, frames: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Video logits (B, C) from K chosen steps (max over them, Eq. 8); e_a all T sampled steps."""
        return self.f_av(self.spatial_glance(e_g, e_a, maps, frames, generator=generator).features)


# --- Eq. 8-13: training losses ---------------------------------------------------------------------------------------

def spatial_losses(model: SpatialAVGN, e_g: torch.Tensor, e_a: torch.Tensor, maps: torch.Tensor,
                   frames: torch.Tensor, y: torch.Tensor, t_g: int, k: int, use_mask_loss: bool = True,
                   tau: float = 1.0, generator: torch.Generator | None = None, random_patches: bool = False
                   ) -> dict[str, torch.Tensor]:
    """AVGN's training losses with the spatial glance on a batch of T glance-ordered steps (the spatial glance runs on
    all T, pi's GRU in glance order): L_p (Eq. 8, every prefix), L_V (Eq. 9: FC^G, FC^L, f_C^V on [e^G, e^L]), L_A
    (Eq. 10), L_s (Eq. 11-12, pseudo-labels from f_C^AV with e^L), L_mask, L_ord (Eq. 13). Sum them to train.
    e_g (B, T, image_dim), e_a (B, T, audio_dim), maps (B, T, H_G, W_G, D_G), frames (B, T, H, W, 3) uint8, y (B,).

    ``random_patches`` adds ``"l_rand"``: FC^L's cross-entropy on a uniformly random patch of every step (AdaFocusV2's
    second branch, not in AVGN's loss list): f_L then learns from patches all over the frame, which gives pi a useful
    gradient early (tests/test_avgn_spatial.py trains pi this way)."""
    tm = model.temporal
    b, t, _ = e_g.shape
    visible = torch.zeros(b, t, dtype=torch.bool, device=e_g.device)
    visible[:, :t_g] = True
    g = tm.glance(e_g, e_a, visible)
    sg = model.spatial_glance(e_g, e_a, maps, frames, generator=generator)
    x = sg.features                                                       # (B, T, 2D + D_L)
    steps_y = y.unsqueeze(1).expand(b, t)
    ce = lambda logits: F.cross_entropy(logits.reshape(-1, logits.shape[-1]), steps_y.reshape(-1))  # noqa: E731
    losses = {"p": ce(model.f_av(x, cumulative=True))}
    n_g, n_a = tm.norm_g(e_g), tm.norm_a(e_a)
    losses["v"] = (ce(tm.fc_g(n_g)) + ce(model.fc_l(sg.local))
                   + ce(model.f_v(torch.cat([n_g, sg.local], -1), cumulative=True)))
    losses["a"] = ce(tm.fc_a(n_a)) + ce(tm.f_a(n_a, cumulative=True))
    target = saliency_pseudo_labels(model.f_av.per_step(x)).detach()
    losses["s"] = F.l1_loss(g.saliency, target)
    if use_mask_loss and t_g < t:
        losses["mask"] = F.mse_loss(tm.mask_decoder(g.tf_out[:, t_g:]), g.tokens_v[:, t_g:].detach())
    soft = F.gumbel_softmax(g.saliency_logits, tau=tau, hard=False, dim=1)
    idx = torch.argsort(soft, dim=1, descending=True)[:, :k]
    w = torch.gather(soft, 1, idx)
    picked = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])) * (w / w.detach()).unsqueeze(-1)
    losses["ord"] = F.cross_entropy(model.f_av(picked), y)
    if random_patches:
        lo, hi = centre_bounds(model.patch, *frames.shape[-3:-1], like=model.pixel_mean)
        u = torch.rand(b, t, 2, generator=generator, device=generator.device if generator else lo.device)
        losses["l_rand"] = ce(model.fc_l(model.local_features(frames, lo + (hi - lo) * u.to(lo.device))))
    return losses


# --- inference -------------------------------------------------------------------------------------------------------

HEADS = ("av", "local")
"""Selector heads: ``"av"`` f_C^AV on [e^G, e^L, e^AT] (the method); ``"local"`` FC^L on e^L alone, logits averaged
over the processed steps (Table 6's measure of the patches' own predictive power)."""


class AVGNSpatialSelector:
    """AVGN with both glances, as a selector: the temporal glance over ``t`` sampled steps with T_G visual glances,
    then the spatial glance on the top-k steps by saliency, processed in saliency order (pi's GRU follows it); with
    ``exit_threshold`` tau (FrameExit's gate, the paper's '+' rows) processing stops after the first step whose
    running prediction (max over the processed steps) has max softmax >= tau.

    Reads ``video.arrays``: ``image`` (N, image_dim), ``audio`` (N, audio_dim), ``image_map`` (N, H_G, W_G, D_G),
    ``frames`` (N, H, W, 3) uint8; ``video.attrs["video_id"]`` (when present) seeds the ``"random"`` patches.

    GFLOPs: the temporal glance as :class:`models.avgn.AVGNSelector` counts it (audio of all t steps, the image
    features computed: the T_G glances and each processed step beyond them, AV-TeST), plus, for each processed step,
    one step of the spatial glance and head (AESPA, pi, f_L on P x P, psi, f_C^AV) counted once per t
    (:class:`ShapeCosts`). A step's global map costs nothing beyond its image feature (the same trunk's layer4)."""

    def __init__(self, name: str, model: SpatialAVGN, costs: UnitCosts, k: int, t_g: int | None,
                 exit_threshold: float | None = None, t: int = 16, head: str = "av"):
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, not {head!r}")
        self.name, self.model, self.costs, self.k, self.t_g, self.t = name, model.eval(), costs, k, t_g, t
        self.exit_threshold, self.head = exit_threshold, head
        self.glance_gflops = ShapeCosts(self._count_glance)
        """GFLOPs of AV-TeST over the t sampled steps, counted once."""
        self.step_gflops = ShapeCosts(self._count_step)
        """GFLOPs of one processed step of the spatial glance and the head, by the number of audio steps t."""

    @property
    def glances(self) -> int:
        """T_G: the sampled steps whose visual features are computed before any saliency is known."""
        return self.t if self.t_g is None else min(self.t_g, self.t)

    def _zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(*shape, device=self.model.pixel_mean.device)

    def _count_glance(self) -> float:
        tm = self.model.temporal
        visible = torch.arange(self.t, device=tm.pos.device)[None] < self.glances
        return counted_gflops(tm.glance, self._zeros(1, self.t, tm.norm_g.mean.numel()),
                              self._zeros(1, self.t, tm.norm_a.mean.numel()), visible)

    def _count_step(self, t: int) -> float:
        m = self.model
        p = m.patch                       # the frame's size never enters the count: f_L runs on P x P
        return counted_gflops(self._step, self._zeros(1, 1, m.temporal.norm_g.mean.numel()),
                              self._zeros(1, t, m.temporal.norm_a.mean.numel()),
                              self._zeros(1, 1, m.map_size, m.map_size, m.norm_map.mean.numel()),
                              torch.zeros(1, 1, p, p, 3, dtype=torch.uint8, device=m.pixel_mean.device),
                              None, None, None)

    def _step(self, e_g: torch.Tensor, e_a: torch.Tensor, maps: torch.Tensor, frames: torch.Tensor,
              hidden: torch.Tensor | None, running: torch.Tensor | None, centres: torch.Tensor | None):
        """One processed step: spatial glance + the running prediction. -> (logits (1, C), hidden, running, centres)"""
        m = self.model
        if self.head == "local":
            centres_, hidden = (centres, hidden) if centres is not None else m.glance_centres(
                maps, e_a, tuple(frames.shape[-3:-1]), hidden)
            logits = m.fc_l(m.local_features(frames, centres_))[:, 0]
            running = logits if running is None else running + logits
            return running, hidden, running, centres_
        sg = m.spatial_glance(e_g, e_a, maps, frames, hidden=hidden, centres=centres)
        h = m.f_av.step(sg.features)[:, 0]
        running = h if running is None else torch.maximum(running, h)
        return m.f_av.out(running), sg.hidden, running, sg.centres

    def _random_centres(self, video, n: int, frame_hw: tuple[int, int]) -> torch.Tensor:
        key = str(getattr(video, "video_id", None) or dict(video.attrs).get("video_id", ""))
        gen = torch.Generator().manual_seed(self.model.seed * 1_000_003 + zlib.crc32(key.encode()))
        lo, hi = centre_bounds(self.model.patch, *frame_hw)
        return (lo + (hi - lo) * torch.rand(n, 2, generator=gen)).to(self.model.pixel_mean.device)

    @torch.inference_mode()
    def select(self, video) -> Selection:
        m, dev = self.model, self.model.pixel_mean.device
        image, audio = stored(video, "image").to(dev), stored(video, "audio").to(dev)
        maps = stored(video, "image_map").to(dev)
        frames = torch.from_numpy(np.asarray(video.arrays["frames"], np.uint8)).to(dev)
        steps = sample_steps(len(image), self.t)
        t, t_g = len(steps), self.glances
        visible = (torch.arange(t) < t_g)[None].to(dev)
        e_a = audio[steps][None]
        g = m.temporal.glance(image[steps][None] * visible[..., None], e_a, visible)   # unglanced: never computed
        order = torch.argsort(g.saliency[0].cpu(), descending=True, stable=True)[: min(self.k, t)]
        _, first = np.unique(steps[order].numpy(), return_index=True)
        order = order[np.sort(first)]                          # a short video samples steps twice: keep each once
        chosen = steps[order]
        fixed = self._random_centres(video, len(chosen), tuple(frames.shape[1:3])) if m.spatial == "random" else None
        hidden = running = None
        centres, done = [], 0
        for i, s in enumerate(chosen.tolist()):
            logits, hidden, running, c = self._step(
                image[s][None, None], e_a, maps[s][None, None], frames[s][None, None], hidden, running,
                None if fixed is None else fixed[i][None, None])
            centres.append(c[0, 0])
            done = i + 1
            if self.head == "local":
                logits = running / done                        # FC^L's logits averaged over the processed steps
            if self.exit_threshold is not None and float(F.softmax(logits[0], 0).max()) >= self.exit_threshold:
                break
        processed = order[:done]
        n_visual = t_g + int((processed >= t_g).sum())
        gflops = (t * self.costs.audio + n_visual * self.costs.image + self.glance_gflops()
                  + done * self.step_gflops(t))
        details = {"saliency": {"AV-TeST": (steps.numpy(), g.saliency[0].cpu().numpy())},
                   "patches": {"steps": chosen[:done].numpy(), "centres": torch.stack(centres).cpu().numpy(),
                               "size": m.patch / frames.shape[2]}}
        return Selection(chosen[:done].numpy(), F.softmax(logits[0], 0).cpu().numpy(), gflops, details)
