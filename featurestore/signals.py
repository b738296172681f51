"""Signal energy per step, from the single decode and no model: the free previews every learned one must beat.

* ``loudness``: the RMS level (dBFS) of the step's audio window, the same window the log-mel reads.
* ``motion``: the mean absolute difference between consecutive frames, per RGB channel and per cell of a coarse
  ``MOTION_GRID`` x ``MOTION_GRID`` grid, averaged over the step's frames. SCSampler's cheap visual sampler reads
  compressed-video motion vectors and RGB residuals; ffmpeg's rawvideo pipe does not carry codec motion vectors
  (``-flags2 +export_mvs`` exposes them only as side data, or drawn into the picture by ``codecview``), so fs uses
  the uncompressed analogue of the RGB residual: differences of the frames already decoded.
* ``spectrum``: the step's log-mel (the one the audio stream reads) averaged over its MEL_FRAMES frames: one level per
  mel band, the input of SCSampler's cheap audio sampler (a light net on the spectrogram, not the audio ResNet-18).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from featurestore.constants import CROP, LOG_EPS, LOUDNESS_FLOOR_DB, MOTION_GRID, SPECTRUM_DIM, STEP_FRAMES


def loudness_db(windows: np.ndarray) -> np.ndarray:
    """(N, L) audio windows -> (N,) float32 RMS level in dBFS, floored at ``LOUDNESS_FLOOR_DB``."""
    if windows.size == 0:
        return np.full(len(windows), LOUDNESS_FLOOR_DB, np.float32)
    rms = np.sqrt(np.mean(np.square(windows, dtype=np.float64), axis=1))
    floor = 10.0 ** (LOUDNESS_FLOOR_DB / 20.0)
    return (20.0 * np.log10(np.maximum(rms, floor))).astype(np.float32)


def mel_spectrum(mel: np.ndarray) -> np.ndarray:
    """(N, N_MELS, MEL_FRAMES) log-mels -> (N, SPECTRUM_DIM) float16: each band's mean log level over the window."""
    return np.asarray(mel, np.float32).mean(axis=-1).astype(np.float16)


def silent_spectrum(n_steps: int) -> np.ndarray:
    """The ``spectrum`` of a video without audio: every band at log(LOG_EPS), the log-mel of silence."""
    return np.full((n_steps, SPECTRUM_DIM), np.log(LOG_EPS), np.float16)


class MotionGrid:
    """Accumulates the ``motion`` array while frame chunks stream past (wrap the decoder's chunk iterator with
    :meth:`watch`). Frame i >= 1 contributes |f_i - f_(i-1)| to step i // STEP_FRAMES; each step's row is the mean
    of its differences (a video's first frame has none; a one-frame video is all zero)."""

    def __init__(self, grid: int = MOTION_GRID, size: int = CROP):
        if size % grid:
            raise ValueError(f"the crop ({size}) must divide into the motion grid ({grid})")
        self.grid, self.cell = grid, size // grid
        self.sums: list[np.ndarray] = []     # per step: (3, grid, grid) float64 sum of cell means
        self.counts: list[int] = []
        self._last: np.ndarray | None = None
        self._frames = 0

    def watch(self, chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """Pass ``chunks`` ((n, H, W, 3) uint8) through unchanged, accumulating their frame differences."""
        for chunk in chunks:
            self.add(chunk)
            yield chunk

    def add(self, chunk: np.ndarray) -> None:
        """Accumulate one chunk of frames ((n, H, W, 3) uint8)."""
        if len(chunk) == 0:
            return
        frames = chunk.astype(np.int16)
        prev = frames[:-1] if self._last is None else np.concatenate([self._last[None], frames[:-1]])
        first = self._frames + (1 if self._last is None else 0)      # global index of the first difference's frame
        cur = frames[1:] if self._last is None else frames
        self._last, self._frames = frames[-1], self._frames + len(frames)
        if len(cur) == 0:
            return
        n, g, c = len(cur), self.grid, self.cell
        diff = np.abs(cur - prev).astype(np.float32)                                     # (n, H, W, 3)
        cells = diff.reshape(n, g, c, g, c, 3).mean(axis=(2, 4), dtype=np.float64) / 255.0   # (n, g, g, 3)
        cells = cells.transpose(0, 3, 1, 2)                                               # (n, 3, g, g)
        steps = (first + np.arange(n)) // STEP_FRAMES
        for s in np.unique(steps):
            while len(self.sums) <= s:
                self.sums.append(np.zeros((3, g, g)))
                self.counts.append(0)
            rows = steps == s
            self.sums[s] += cells[rows].sum(axis=0)
            self.counts[s] += int(rows.sum())

    def array(self, n_steps: int) -> np.ndarray:
        """(n_steps, MOTION_DIM) float16: each step's mean difference per channel and cell (zero without any)."""
        out = np.zeros((n_steps, 3 * self.grid * self.grid), np.float32)
        for s in range(min(n_steps, len(self.sums))):
            if self.counts[s]:
                out[s] = (self.sums[s] / self.counts[s]).reshape(-1)
        return out.astype(np.float16)

