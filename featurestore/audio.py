"""Audio front end: 1 s windows from each step's start, turned into 40x101 log-mel spectrograms (torchaudio)."""
from __future__ import annotations

import numpy as np
import torch
import torchaudio

from featurestore.constants import HOP, LOG_EPS, N_FFT, N_MELS, SAMPLE_RATE, WINDOW_SECONDS


def step_windows(audio: np.ndarray, starts_s: np.ndarray, sample_rate: int = SAMPLE_RATE,
                 seconds: float = WINDOW_SECONDS) -> np.ndarray:
    """Cut a ``seconds``-long window from each start time; windows past the end are zero-padded. (N, L) float32."""
    length = int(round(seconds * sample_rate))
    padded = np.zeros(int(round(float(starts_s.max(initial=0)) * sample_rate)) + length, np.float32)
    padded[: min(len(audio), len(padded))] = audio[: len(padded)]
    idx = np.round(starts_s * sample_rate).astype(np.int64)[:, None] + np.arange(length)[None, :]
    return padded[idx]


class LogMel(torch.nn.Module):
    """Log-mel spectrogram with the papers' settings: 16 kHz, Hann 400, hop 160, 40 mels -> (40, 101) per second."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, hop: int = HOP, n_mels: int = N_MELS):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, win_length=n_fft, hop_length=hop, n_mels=n_mels,
            window_fn=torch.hann_window, power=2.0)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(N, L) waveforms -> (N, n_mels, frames) log-mel."""
        return torch.log(self.mel(waveforms) + LOG_EPS)
