"""What a step is: the step count of a video, the step times, and the stream of (first frame, teacher clip) per step
cut from decoded frame chunks (the geometry lives in :mod:`featurestore.constants`)."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from featurestore.constants import CLIP_FRAMES, CLIP_SPAN, CLIP_STRIDE, CROP, FPS, STEP_FRAMES


def step_times(n_steps: int) -> np.ndarray:
    """The start time in seconds of each of ``n_steps`` steps (float32), stored as the array ``t``."""
    return (np.arange(n_steps, dtype=np.float32) * STEP_FRAMES / FPS).astype(np.float32)


def n_steps_for(n_frames: int) -> int:
    """N = ceil(frames / 16): a step starts every 16 frames while frames remain."""
    return -(-n_frames // STEP_FRAMES)


def iter_steps(chunks: Iterator[np.ndarray]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Turn a stream of frame chunks into (step index, first frame, 16-frame clip) with at most ~2 chunks held.

    A step is emitted as soon as the frames its clip needs have arrived; at the end of the stream the remaining
    steps are emitted with indices past the last frame clamped to it (the last frame repeated).
    """
    buf = np.empty((0, CROP, CROP, 3), np.uint8)
    buf_start = 0                      # global index of buf[0]
    k = 0
    offsets = np.arange(CLIP_FRAMES) * CLIP_STRIDE
    for chunk in chunks:
        buf = np.concatenate([buf, chunk]) if len(buf) else chunk
        while STEP_FRAMES * k + CLIP_SPAN <= buf_start + len(buf):
            s = STEP_FRAMES * k - buf_start
            yield k, buf[s], buf[s + offsets]
            k += 1
        drop = STEP_FRAMES * k - buf_start
        if drop > 0:
            buf, buf_start = buf[drop:], buf_start + drop
    end = buf_start + len(buf)
    while STEP_FRAMES * k < end:
        idx = np.minimum(STEP_FRAMES * k + offsets, end - 1) - buf_start
        yield k, buf[STEP_FRAMES * k - buf_start], buf[idx]
        k += 1

