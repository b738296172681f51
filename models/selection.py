"""The one selection interface: given a video's stored arrays and a budget, return chosen steps + prediction.

Every method — the skimmer, the Listen-to-Look baselines, SCSampler variants, AVGN — is a :class:`Selector`, so a
benchmark compares them all in one loop and never special-cases one. ``select(video)`` answers one video;
``select_batch(block)`` (optional) answers a :class:`VideoBlock` of padded videos at once, with GFLOPs counted by
shape (:class:`ShapeCosts`); :func:`select_block` uses it when a selector has it, else loops over ``select``.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Protocol

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


BUDGET = 10   # steps a method may use per video: Listen to Look's T, SCSampler's K


class VideoArrays(Protocol):
    """What a selector may read of a video: its stored arrays (``t``, ``image``, ``audio``, ``fused``, ...)."""

    arrays: Mapping[str, np.ndarray]
    attrs: Mapping


@dataclass
class Selection:
    """A selector's answer for one video."""

    steps: np.ndarray      # chosen step indices, in the order chosen
    scores: np.ndarray     # (C,) video-level class scores (probabilities)
    gflops: float          # what this method actually computed for this video
    details: dict = field(default_factory=dict)
    """Why these steps, for display (``fs show``): the skimmer's ``attention`` (T - 1, N: each skimming step's
    weights over the steps) and, with audio-visual indexing, ``modality`` (T - 1, 2: s^I, s^A); a ranker's
    ``saliency``: {label: (steps, scores)} over the steps it scored."""


@dataclass(frozen=True)
class UnitCosts:
    """The cost description every selector takes: GFLOPs of one unit of each stored computation, counted by the
    caller with FlopCounterMode; a selector adds the FLOPs of its own modules, counted on the call."""

    image: float      # the image ResNet-18 on one first frame
    audio: float      # the audio ResNet-18 on one 1 s log-mel
    fusion: float     # Psi on one image-audio pair
    clip: float       # R(2+1)D-18 on one 16-frame clip
    loudness: float = 0.0   # one step's loudness signal (analytic count, featurestore.cost; 0: not counted)
    motion: float = 0.0     # one step's motion signal (analytic count, featurestore.cost; 0: not counted)
    spectrum: float = 0.0   # one step's spectrum signal (analytic count, featurestore.cost; 0: not counted)

    @property
    def pair(self) -> float:
        """One image-audio pair: both streams and Psi."""
        return self.image + self.audio + self.fusion

    def of(self, descriptor: str) -> float:
        """GFLOPs of one step of a stored descriptor: image, audio, fused (a pair) or r2p1d (a clip); or of a stored
        signal: loudness, motion, spectrum."""
        return {"image": self.image, "audio": self.audio, "fused": self.pair, "r2p1d": self.clip,
                "loudness": self.loudness, "motion": self.motion, "spectrum": self.spectrum}[descriptor]


class Selector(Protocol):
    """``Selector(name, model(s), costs: UnitCosts, **options)``; ``select`` answers for one video."""

    name: str

    def select(self, video: VideoArrays) -> Selection:
        ...


def stored(video: VideoArrays, name: str) -> torch.Tensor:
    """One stored array of ``video`` as a float32 tensor (descriptors are kept as float16)."""
    return torch.from_numpy(np.asarray(video.arrays[name], np.float32))


@contextmanager
def attention_as_matmuls() -> Iterator[None]:
    """Attention computed as the plain matmuls of its definition while FLOPs are counted.

    In eval mode without gradients ``nn.TransformerEncoder`` takes a fused fast path
    (``torch._transformer_encoder_layer_fwd``) and ``scaled_dot_product_attention`` a fused kernel (flash, or the
    CPU's), none of which FlopCounterMode sees: a transformer would count 0 GFLOPs, attention's QK^T and AV products
    nothing. The counted cost is a property of the math, not of the kernel, so here the fast path is off and
    attention takes its math backend (QK^T, softmax, AV as bmm), whose matmuls are counted."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def counted(fn: Callable, *args, **kwargs):
    """Run ``fn`` and return (result, GFLOPs it executed), counted by torch's FlopCounterMode (2 FLOPs per MAC),
    attention included (:func:`attention_as_matmuls`)."""
    with attention_as_matmuls(), FlopCounterMode(display=False) as fc:
        out = fn(*args, **kwargs)
    return out, fc.get_total_flops() / 1e9


# --- selection in blocks of videos -----------------------------------------------------------------------------------

NO_STEP = -1   # pads a block's chosen-step rows past each video's own count


@dataclass
class BlockSelection:
    """A selector's answers for a block of B videos: what :class:`Selection` holds, one row per video."""

    steps: np.ndarray      # (B, K) int64 chosen step indices in the order chosen, NO_STEP past each video's count
    scores: np.ndarray     # (B, C) video-level class scores (probabilities)
    gflops: np.ndarray     # (B,) what this method computed for each video

    @property
    def counts(self) -> np.ndarray:
        """Steps chosen per video (B,)."""
        return (self.steps != NO_STEP).sum(1)

    def video(self, i: int) -> Selection:
        """Video ``i``'s answer as a :class:`Selection` (without display details)."""
        return Selection(self.steps[i][self.steps[i] != NO_STEP], self.scores[i], float(self.gflops[i]))

    @classmethod
    def stack(cls, selections: list[Selection]) -> "BlockSelection":
        """Per-video answers as one block."""
        k = max((len(s.steps) for s in selections), default=0)
        steps = np.full((len(selections), k), NO_STEP, np.int64)
        for i, s in enumerate(selections):
            steps[i, :len(s.steps)] = np.asarray(s.steps, np.int64)
        return cls(steps, np.stack([np.asarray(s.scores, np.float64) for s in selections]),
                   np.array([s.gflops for s in selections], np.float64))


class VideoBlock:
    """B videos padded to the longest with a validity mask, on one device: what ``select_batch`` reads.

    ``load(name)`` returns array ``name`` of the block as (B, N, ...) float32 on ``device`` (zeros past each video's
    length); every array is loaded once and shared by all selectors, and :meth:`memo` shares any other work (the
    per-step head's probabilities, interpolated indexing features, a skimmer's run) between the rows that need it.
    ``video(i)`` gives one video as :class:`VideoArrays`, for selectors that only answer one video at a time."""

    def __init__(self, video_ids: list[str], attrs: list[Mapping], lengths: torch.Tensor,
                 load: Callable[[str], torch.Tensor], video: Callable[[int], VideoArrays], device: str = "cpu"):
        self.video_ids, self.attrs, self.device = list(video_ids), list(attrs), device
        self.lengths = torch.as_tensor(lengths, dtype=torch.long).to(device)
        self._load, self._video = load, video
        self._memo: dict = {}

    def __len__(self) -> int:
        return len(self.video_ids)

    @classmethod
    def of(cls, videos: list[VideoArrays], device: str = "cpu") -> "VideoBlock":
        """A block of videos held in memory (each with ``arrays`` of equal step counts and ``attrs``)."""
        videos = list(videos)
        lengths = torch.tensor([len(next(iter(v.arrays.values()))) for v in videos], dtype=torch.long)

        def load(name: str) -> torch.Tensor:
            rows = [np.asarray(v.arrays[name]) for v in videos]
            out = np.zeros((len(rows), int(lengths.max())) + rows[0].shape[1:], np.float32)
            for i, r in enumerate(rows):
                out[i, :len(r)] = r
            return torch.from_numpy(out).to(device)
        ids = [getattr(v, "video_id", None) or v.attrs.get("video_id", str(i)) for i, v in enumerate(videos)]
        return cls(ids, [v.attrs for v in videos], lengths, load, lambda i: videos[i], device)

    @property
    def n(self) -> int:
        """Padded length: the longest video's steps."""
        return int(self.lengths.max()) if len(self) else 0

    @property
    def mask(self) -> torch.Tensor:
        """(B, N) bool: which padded positions are steps of their video."""
        return self.memo("mask", lambda: torch.arange(self.n, device=self.device)[None] < self.lengths[:, None])

    def padded(self, name: str) -> torch.Tensor:
        """Array ``name`` of every video, (B, N, ...) float32 on the block's device, zero past each length."""
        return self.memo(("array", name), lambda: self._load(name))

    def rows(self, name: str) -> torch.Tensor:
        """Array ``name`` of every valid step of the block, video after video: (sum of lengths, ...)."""
        return self.memo(("rows", name), lambda: self.padded(name)[self.mask])

    def memo(self, key, compute: Callable):
        """``compute()`` once per block and ``key``; later calls with the same key share the result."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def video(self, i: int) -> VideoArrays:
        return self._video(i)


def scatter_rows(rows: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Per-step values of the valid steps (M, ...) back into a padded (B, N, ...) tensor, ``fill`` elsewhere."""
    out = rows.new_full(tuple(mask.shape) + tuple(rows.shape[1:]), fill)
    out[mask] = rows
    return out


def masked_top(rank: torch.Tensor, mask: torch.Tensor, k: int, descending: bool = True) -> torch.Tensor:
    """Each video's ``k`` best steps by ``rank`` (B, N) among its valid ones, in rank order (ties: the earlier step
    first, as a stable sort); NO_STEP where a video has fewer than ``k`` steps. (B, min(k, N)) int64."""
    fill = float("-inf") if descending else float("inf")
    order = torch.sort(rank.masked_fill(~mask, fill), dim=1, descending=descending, stable=True).indices[:, :k]
    valid = torch.arange(order.shape[1], device=order.device)[None] < mask.sum(1, keepdim=True)
    return order.masked_fill(~valid, NO_STEP)


def mean_at(values: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, N, C) over each video's chosen ``steps`` (B, K), NO_STEP ignored. (B, C)"""
    valid = steps != NO_STEP
    got = torch.gather(values, 1, steps.clamp(min=0).unsqueeze(-1).expand(-1, -1, values.shape[-1]))
    w = valid.unsqueeze(-1).to(values.dtype)
    return (got * w).sum(1) / w.sum(1).clamp(min=1)


def select_block(selector: Selector, block: VideoBlock) -> BlockSelection:
    """``selector``'s answers for a block: its own ``select_batch`` when it has one, else ``select`` on each video
    (a user-written selector with only ``select`` still runs in the bench)."""
    batch = getattr(selector, "select_batch", None)
    if batch is not None:
        return batch(block)
    return BlockSelection.stack([selector.select(block.video(i)) for i in range(len(block))])


class ShapeCosts:
    """GFLOPs of a computation that depend only on its input shapes (an integer key: a step or row count N), never
    on the values: ``count(key)`` runs it under FlopCounterMode once per distinct key and the answer is cached.

    With ``affine_from`` = a, keys below a are counted one by one and keys from a on follow the line through the
    counts at a and 2a: for computations whose counted operations (matmuls, convolutions) grow linearly in N once
    N >= a (a head on N rows; a skimmer's keys and attention over N steps; a top-k that reads min(k, N) rows, from
    a = k). Tests compare the line with fresh counts at random N."""

    def __init__(self, count: Callable[..., float], affine_from: int | None = None):
        self.count, self.affine_from = count, affine_from
        self.cache: dict = {}

    def _exact(self, key: int | None) -> float:
        if key not in self.cache:
            self.cache[key] = float(self.count() if key is None else self.count(key))
        return self.cache[key]

    def __call__(self, key: int | None = None) -> float:
        """GFLOPs at ``key`` (None: a computation of one fixed shape, ``count()`` without arguments)."""
        a = self.affine_from
        if a is None or key is None or key < a:
            return self._exact(key)
        low, high = self._exact(a), self._exact(2 * a)
        return low + (key - a) * (high - low) / a

    def each(self, keys: np.ndarray | torch.Tensor) -> np.ndarray:
        """GFLOPs of every key of an integer array (one count per distinct value at most)."""
        keys = np.asarray(keys.cpu() if isinstance(keys, torch.Tensor) else keys, np.int64)
        uniq, inverse = np.unique(keys, return_inverse=True)
        return np.array([self(int(k)) for k in uniq], np.float64)[inverse.reshape(keys.shape)]


def counted_gflops(fn: Callable, *args, **kwargs) -> float:
    """GFLOPs of ``fn(*args, **kwargs)`` counted with FlopCounterMode, in inference mode."""
    with torch.inference_mode():
        return counted(fn, *args, **kwargs)[1]


def to_device(selector: Selector, device: str) -> Selector:
    """Move every module a selector holds (directly, or in a dict, list or tuple attribute) to ``device``."""
    def move(value):
        if isinstance(value, torch.nn.Module):
            value.to(device)
        elif isinstance(value, dict):
            for v in value.values():
                move(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                move(v)
    for value in vars(selector).values():
        move(value)
    return selector
