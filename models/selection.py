"""The one selection interface: given a video's stored arrays and a budget, return chosen steps + prediction.

Every method — the skimmer, the Listen-to-Look baselines, SCSampler variants, AVGN — is a :class:`Selector`, so a
benchmark compares them all in one loop and never special-cases one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

import numpy as np
import torch
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

    @property
    def pair(self) -> float:
        """One image-audio pair: both streams and Psi."""
        return self.image + self.audio + self.fusion

    def of(self, descriptor: str) -> float:
        """GFLOPs of one step of a stored descriptor: image, audio, fused (a pair) or r2p1d (a clip)."""
        return {"image": self.image, "audio": self.audio, "fused": self.pair, "r2p1d": self.clip}[descriptor]


class Selector(Protocol):
    """``Selector(name, model(s), costs: UnitCosts, **options)``; ``select`` answers for one video."""

    name: str

    def select(self, video: VideoArrays) -> Selection:
        ...


def stored(video: VideoArrays, name: str) -> torch.Tensor:
    """One stored array of ``video`` as a float32 tensor (descriptors are kept as float16)."""
    return torch.from_numpy(np.asarray(video.arrays[name], np.float32))


def counted(fn: Callable, *args, **kwargs):
    """Run ``fn`` and return (result, GFLOPs it executed), counted by torch's FlopCounterMode (2 FLOPs per MAC)."""
    with FlopCounterMode(display=False) as fc:
        out = fn(*args, **kwargs)
    return out, fc.get_total_flops() / 1e9
