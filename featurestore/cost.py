"""Compute costs counted, not guessed: torch's FlopCounterMode on the real modules (2 FLOPs per multiply-add).

Papers quote multiply-adds as "GFLOPs" (torchvision lists R(2+1)D-18 as 40.5 GMACs); fs reports FLOPs, twice that.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from featurestore.constants import (CLIP_FRAMES, CROP, FEATURE_DIMS, MEL_FRAMES, MOTION_DIM, N_MELS, SAMPLE_RATE,
                                    STEP_FRAMES, WINDOW_SECONDS)
from models.imgaud import imgaud2vid_student
from models.selection import UnitCosts, counted
from models.teacher import r2plus1d_teacher


def count_gflops(module: torch.nn.Module, *inputs: torch.Tensor) -> float:
    """GFLOPs of one forward pass of ``module`` on ``inputs`` (the selectors' own counter)."""
    with torch.inference_mode():
        return counted(module, *inputs)[1]


def loudness_gflops() -> float:
    """GFLOPs of one step's ``loudness`` (no torch module: counted by hand, from the constants). Over the S =
    SAMPLE_RATE x WINDOW_SECONDS samples of the step's audio window: S squares, the mean (S - 1 additions and one
    division), one square root, and 20 log10 (a logarithm and a multiplication): 2 S + 3 FLOPs. The floor at
    LOUDNESS_FLOOR_DB is a comparison, not counted."""
    samples = int(SAMPLE_RATE * WINDOW_SECONDS)
    return (2 * samples + 3) / 1e9


def motion_gflops() -> float:
    """GFLOPs of one step's ``motion`` (no torch module: counted by hand, from the constants). For each of the
    step's STEP_FRAMES frame-to-frame differences, over the P = CROP x CROP x 3 values of the crop: P subtractions,
    P absolute values and P additions into the value's grid cell; then one division per cell (MOTION_DIM) for the mean
    over the cell's pixels and the step's differences (the uint8 -> [0, 1] scale folds into it): 3 P STEP_FRAMES +
    MOTION_DIM FLOPs. Decoding the frames is not counted: every method pays it alike (the image stream reads them)."""
    values = CROP * CROP * 3
    return (3 * values * STEP_FRAMES + MOTION_DIM) / 1e9


@lru_cache(maxsize=None)
def unit_gflops() -> UnitCosts:
    """GFLOPs per unit of stored work: one image, one 1 s spectrogram, one Psi, one clip (and one pair), and one step
    of each signal (analytic counts: :func:`loudness_gflops`, :func:`motion_gflops`)."""
    student = imgaud2vid_student(400).eval()
    return UnitCosts(
        image=count_gflops(student.image_net, torch.zeros(1, 3, CROP, CROP)),
        audio=count_gflops(student.audio_net, torch.zeros(1, N_MELS, MEL_FRAMES)),
        fusion=count_gflops(student.fusion, torch.zeros(1, FEATURE_DIMS["image"]),
                            torch.zeros(1, FEATURE_DIMS["audio"])),
        clip=count_gflops(r2plus1d_teacher(400).eval(), torch.zeros(1, 3, CLIP_FRAMES, CROP, CROP)),
        loudness=loudness_gflops(), motion=motion_gflops())
