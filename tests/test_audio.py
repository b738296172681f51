import math

import numpy as np
import torch

from featurestore.audio import LogMel, step_windows


def test_one_second_gives_a_40_by_101_log_mel():
    mel = LogMel()(torch.zeros(3, 16000))
    assert mel.shape == (3, 40, 101)


def test_windows_start_at_each_step_and_are_zero_padded_past_the_end():
    audio = np.arange(16000 * 2, dtype=np.float32)  # 2 s
    w = step_windows(audio, np.array([0.0, 16 / 30, 1.5]))
    assert w.shape == (3, 16000)
    assert w[0, 0] == 0 and w[0, -1] == 15999
    assert w[1, 0] == round(16 / 30 * 16000)
    assert w[2, :8000].tolist() == audio[24000:].tolist()
    assert not w[2, 8000:].any()


def test_a_tone_lights_up_the_mel_band_of_its_frequency():
    # HTK mel: m(f) = 2595 log10(1 + f / 700); 42 points evenly spaced from m(0) to m(8000) = 2840.0, 69.27 apart.
    # 300 Hz = 402.0 mel lies between the peaks of filter 4 (251.7 Hz) and filter 5 (312.0 Hz), 80 % up filter 5;
    # 3000 Hz = 1876.4 mel lies 9 % past filter 26's peak (2979.8 Hz) towards filter 27's (3212.8 Hz)
    t = np.arange(16000) / 16000
    lm = LogMel()
    bands = [lm(torch.from_numpy(np.sin(2 * np.pi * f * t).astype(np.float32))[None])[0].mean(1).argmax().item()
             for f in (300, 3000)]
    assert bands == [5, 26]
    low = lm(torch.from_numpy(np.sin(2 * np.pi * 300 * t).astype(np.float32))[None])[0]
    assert low.mean() > np.log(1e-6) + 5   # far above the silence floor


def _hand_log_mel_frames(x, frames, sr=16000, n_fft=400, hop=160, n_mels=40, eps=1e-6):
    """Log-mel of some frames of x, in plain Python: reflect-padded centred frames, periodic Hann window, |DFT|^2
    of bins 0..n_fft/2, HTK triangular filters between 0 Hz and sr / 2 (no normalisation), log(. + eps)."""
    pad = n_fft // 2
    xp = [x[pad - i] for i in range(pad)] + list(x) + [x[len(x) - 2 - i] for i in range(pad)]
    window = [0.5 - 0.5 * math.cos(2 * math.pi * n / n_fft) for n in range(n_fft)]
    cos = [math.cos(2 * math.pi * j / n_fft) for j in range(n_fft)]
    sin = [math.sin(2 * math.pi * j / n_fft) for j in range(n_fft)]
    n_bins = n_fft // 2 + 1
    freqs = [k * (sr / 2) / (n_bins - 1) for k in range(n_bins)]
    mel = lambda f: 2595 * math.log10(1 + f / 700)            # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)                # noqa: E731
    pts = [hz(mel(sr / 2) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    fb = [[max(0.0, min((f - pts[m]) / (pts[m + 1] - pts[m]), (pts[m + 2] - f) / (pts[m + 2] - pts[m + 1])))
           for m in range(n_mels)] for f in freqs]
    out = []
    for t in frames:
        seg = [xp[t * hop + n] * window[n] for n in range(n_fft)]
        power = []
        for k in range(n_bins):
            re = sum(v * cos[(k * n) % n_fft] for n, v in enumerate(seg))
            im = sum(v * sin[(k * n) % n_fft] for n, v in enumerate(seg))
            power.append(re * re + im * im)
        out.append([math.log(sum(power[k] * fb[k][m] for k in range(n_bins)) + eps) for m in range(n_mels)])
    return out


def test_log_mel_matches_an_independent_stft_and_filterbank():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    x = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.25 * np.sin(2 * np.pi * 3000 * t + 1.0) + 0.05 * t
         + 0.01 * rng.standard_normal(16000)).astype(np.float32)
    got = LogMel()(torch.from_numpy(x)[None])[0]
    assert got.shape == (40, 101)
    frames = [0, 1, 50, 99, 100]                               # both padded ends and the middle
    want = _hand_log_mel_frames(x.astype(float).tolist(), frames)
    for j, t_ in enumerate(frames):
        np.testing.assert_allclose(got[:, t_].numpy(), want[j], atol=2e-3, err_msg=f"frame {t_}")
