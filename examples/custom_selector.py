"""A selector written outside fs: the K steps whose stored ``audio`` descriptor has the largest L2 norm, recognised
by the bench's per-step head on the fused descriptor, averaged over them.

Run it beside the built-in rows, from the repository root (the folder that holds ``examples/``)::

    fs bench --methods UNIFORM,examples.custom_selector:build

A builder takes the bench's :class:`~pipelines.methods.BenchContext` and returns a list of selectors; a selector has
a ``name`` and ``select(video) -> Selection`` (``select_batch(block)`` is optional: the bench falls back to
``select`` video by video). GFLOPs are honest: the audio descriptor of every step (needed to rank them), then for the
K chosen steps the image descriptor and the fusion Psi (their audio is computed already), and the head on K rows.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.selection import BUDGET, Selection, UnitCosts, VideoArrays, counted, stored
from pipelines.methods import BenchContext


class AudioNormSelector:
    """Top-``k`` steps by ||audio descriptor||_2 (ties: the earlier step), in that order."""

    def __init__(self, name: str, head: nn.Module, costs: UnitCosts, k: int = BUDGET):
        self.name, self.head, self.costs, self.k = name, head, costs, k

    @torch.inference_mode()
    def select(self, video: VideoArrays) -> Selection:
        norms = stored(video, "audio").norm(dim=1)
        steps = torch.argsort(norms, descending=True, stable=True)[: self.k].numpy()
        z = stored(video, "fused")[steps].to(next(self.head.parameters()).device)   # the bench may hold it on a GPU
        probs, head_gflops = counted(lambda: F.softmax(self.head(z), dim=1))
        gflops = len(norms) * self.costs.audio + len(steps) * (self.costs.image + self.costs.fusion) + head_gflops
        return Selection(steps, probs.mean(0).cpu().numpy(), gflops,
                         {"saliency": {"audio norm": (range(len(norms)), norms.numpy())}})


def build(ctx: BenchContext) -> list[AudioNormSelector]:
    """The builder ``fs bench`` calls: one row, AUDIO-NORM, on the bench's fused per-step head (UNIFORM's)."""
    return [AudioNormSelector("AUDIO-NORM", ctx.head("fused"), ctx.costs)]
