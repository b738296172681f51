"""Compute costs counted, not guessed: torch's FlopCounterMode on the real modules (2 FLOPs per multiply-add).

Papers quote multiply-adds as "GFLOPs" (torchvision lists R(2+1)D-18 as 40.5 GMACs); fs reports FLOPs, twice that.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from featurestore.constants import (CLIP_FRAMES, CROP, FEATURE_DIMS, MEL_FRAMES, MOTION_DIM, N_FFT, N_MELS,
                                    SAMPLE_RATE, STEP_FRAMES, WINDOW_SECONDS)
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


def spectrum_gflops() -> float:
    """GFLOPs of one step's ``spectrum`` (no torch module: counted by hand, from the constants). The step's log-mel
    over its MEL_FRAMES frames of N_FFT samples (B = N_FFT // 2 + 1 frequency bins): per frame N_FFT window
    multiplications, a real FFT counted as 2.5 N log2 N FLOPs with N = N_FFT (the split-radix count; torch runs an
    FFT, so the DFT is not counted as a B x N_FFT matmul), and the power of each bin (two squares and an addition:
    3 B); then the mel projection, a (MEL_FRAMES x B) @ (B x N_MELS) matmul (2 FLOPs a multiply-add), the log
    (+ LOG_EPS and a logarithm: 2 a value), and the mean over time (MEL_FRAMES - 1 additions and a division a band:
    MEL_FRAMES a band). Shared with the audio stream when it runs (the same log-mel), but counted here in full: the
    spectrum's samplers are meant to run without it."""
    bins = N_FFT // 2 + 1
    stft = MEL_FRAMES * (N_FFT + 2.5 * N_FFT * math.log2(N_FFT) + 3 * bins)
    mel = 2 * MEL_FRAMES * bins * N_MELS
    return (stft + mel + 2 * N_MELS * MEL_FRAMES + N_MELS * MEL_FRAMES) / 1e9


@lru_cache(maxsize=None)
def unit_gflops() -> UnitCosts:
    """GFLOPs per unit of stored work: one image, one 1 s spectrogram, one Psi, one clip (and one pair), and one step
    of each signal (analytic counts: :func:`loudness_gflops`, :func:`motion_gflops`, :func:`spectrum_gflops`)."""
    student = imgaud2vid_student(400).eval()
    return UnitCosts(
        image=count_gflops(student.image_net, torch.zeros(1, 3, CROP, CROP)),
        audio=count_gflops(student.audio_net, torch.zeros(1, N_MELS, MEL_FRAMES)),
        fusion=count_gflops(student.fusion, torch.zeros(1, FEATURE_DIMS["image"]),
                            torch.zeros(1, FEATURE_DIMS["audio"])),
        clip=count_gflops(r2plus1d_teacher(400).eval(), torch.zeros(1, 3, CLIP_FRAMES, CROP, CROP)),
        loudness=loudness_gflops(), motion=motion_gflops(), spectrum=spectrum_gflops())
