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
    t = np.arange(16000) / 16000
    low, high = (torch.from_numpy(np.sin(2 * np.pi * f * t).astype(np.float32))[None] for f in (300, 3000))
    lm = LogMel()
    band_low = lm(low)[0].mean(1).argmax().item()
    band_high = lm(high)[0].mean(1).argmax().item()
    assert band_low < band_high
    assert lm(low)[0].mean() > np.log(1e-6) + 5   # far above the silence floor
