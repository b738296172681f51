"""Compute costs counted, not guessed: torch's FlopCounterMode on the real modules (2 FLOPs per multiply-add).

Papers quote multiply-adds as "GFLOPs" (torchvision lists R(2+1)D-18 as 40.5 GMACs); fs reports FLOPs, twice that.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from featurestore.constants import CLIP_FRAMES, CROP, FEATURE_DIMS, MEL_FRAMES, N_MELS
from models.imgaud import imgaud2vid_student
from models.selection import UnitCosts, counted
from models.teacher import r2plus1d_teacher


def count_gflops(module: torch.nn.Module, *inputs: torch.Tensor) -> float:
    """GFLOPs of one forward pass of ``module`` on ``inputs`` (the selectors' own counter)."""
    with torch.inference_mode():
        return counted(module, *inputs)[1]


@lru_cache(maxsize=None)
def unit_gflops() -> UnitCosts:
    """GFLOPs per unit of stored work: one image, one 1 s spectrogram, one Psi, one clip (and one pair)."""
    student = imgaud2vid_student(400).eval()
    return UnitCosts(
        image=count_gflops(student.image_net, torch.zeros(1, 3, CROP, CROP)),
        audio=count_gflops(student.audio_net, torch.zeros(1, N_MELS, MEL_FRAMES)),
        fusion=count_gflops(student.fusion, torch.zeros(1, FEATURE_DIMS["image"]),
                            torch.zeros(1, FEATURE_DIMS["audio"])),
        clip=count_gflops(r2plus1d_teacher(400).eval(), torch.zeros(1, 3, CLIP_FRAMES, CROP, CROP)))
