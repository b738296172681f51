"""Extraction values (issue 17, value 1), on generated videos through one small threaded cluster and one run:
each stored descriptor is the student / teacher applied to the decoded step inputs (recomputed here from a decode
of our own) within one float16 step; a 440 Hz tone lands in its mel band; a flash and a click at a known time land
in the same step, the click at the right 10 ms frame of that step's log-mel."""
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from featurestore.audio import LogMel, step_windows
from featurestore.cluster import close_client, make_client
from featurestore.config import ExtractConfig
from featurestore.decode import DecodedVideo, ffmpeg_exe
from featurestore.extract import run_extraction
from featurestore.store import FeatureStore
from featurestore.weights import load_student, load_teacher, state_hash
from tests.conftest import make_video

FLASH = (16, 32)        # frames lit: exactly step 1 (frames 16..31) at 30 fps
CLICK = 0.6             # seconds: inside step 1's window [16/30, 16/30 + 1) and step 0's [0, 1)


def sync_video(path, seconds=1.2, rate=44100):
    """Black 160x120 frames, white over FLASH; silence with a 2 ms click at CLICK (AAC, like the fixtures)."""
    n = int(seconds * 30)
    frames = np.zeros((n, 120, 160), np.uint8)
    frames[FLASH[0]:FLASH[1]] = 255
    audio = np.zeros(int(seconds * rate), np.float32)
    start = int(CLICK * rate)
    audio[start:start + int(0.002 * rate)] = 0.8
    (path.parent / "v.raw").write_bytes(frames.tobytes())
    (path.parent / "a.raw").write_bytes(audio.tobytes())
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "rawvideo", "-pix_fmt", "gray", "-s", "160x120", "-r", "30", "-i", str(path.parent / "v.raw"),
                    "-f", "f32le", "-ar", str(rate), "-ac", "1", "-i", str(path.parent / "a.raw"),
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    d = tmp_path_factory.mktemp("values")
    videos = {"sync": sync_video(d / "sync.mp4"), "tone": make_video(d / "tone.mp4", seconds=1.2, tone_hz=440)}
    df = pd.DataFrame([{"video_id": k, "path": str(p), "label": "a", "split": "train"} for k, p in videos.items()])
    config = ExtractConfig(batch_size=4, student_weights="random", teacher_weights="random", threads=2,
                           keep_inputs=True, keep_clips=True)
    client = make_client(workers=1, processes=False)
    try:
        run_extraction(df, FeatureStore(d / "s.zarr", mode="a"), config, client, "values", ["a"], progress=False)
    finally:
        close_client(client)
    return FeatureStore(d / "s.zarr"), videos


def decoded(path):
    with DecodedVideo(str(path), with_audio=True) as dec:
        return np.concatenate(list(dec.frames())), dec.audio()


def within_a_float16_step(stored, exact):
    """|stored - exact| within one float16 spacing at |exact| (plus a hair for batched vs unbatched maths)."""
    exact = np.asarray(exact, np.float32)
    step = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float32)
    err = np.abs(stored.astype(np.float32) - exact)
    assert (err <= step + 1e-4 + 1e-4 * np.abs(exact)).all(), float((err - step).max())


def test_stored_descriptors_are_the_models_on_the_decoded_step_inputs(extracted):
    store, videos = extracted
    v = store.read_video("tone")
    frames, audio = decoded(videos["tone"])
    n = v.n_steps
    assert n == 3 and len(frames) == 36                       # 1.2 s at 30 fps: steps at frames 0, 16, 32
    student, rec = load_student("random", 0)
    teacher, trec = load_teacher("random", 0)
    prov = store.attrs["provenance"]["models"]
    assert prov["student"]["sha256"] == rec["sha256"] == state_hash(student)
    assert prov["teacher"]["sha256"] == trec["sha256"]
    first = frames[np.arange(n) * 16]                          # each step's first frame
    assert np.array_equal(v["frames"], first)
    mel = LogMel()(torch.from_numpy(step_windows(audio, np.arange(n) * 16 / 30)))
    np.testing.assert_allclose(v["mel"].astype(np.float32), mel.numpy(), atol=0.02, rtol=2e-3)   # stored in float16
    with torch.inference_mode():
        z_i, z_a, fused, _ = student.eval()(torch.from_numpy(first), mel)
        clip = np.minimum(16 * 2 + np.arange(16) * 2, len(frames) - 1)       # the last step's clip: frames 32..62,
        z_v, logits = teacher.eval()(torch.from_numpy(frames[clip][None]))   # past the end repeating the last
    within_a_float16_step(v["image"], z_i.numpy())
    within_a_float16_step(v["audio"], z_a.numpy())
    within_a_float16_step(v["fused"], fused.numpy())
    assert np.array_equal(v["clips"][2], frames[clip])
    within_a_float16_step(v["r2p1d"][2:], z_v.numpy())
    within_a_float16_step(v["r2p1d_logits"][2:], logits.numpy())


def test_a_440_hz_tone_lands_in_its_mel_band(extracted):
    store, _ = extracted
    # m(440) = 2595 log10(1 + 440/700) = 549.2 mel; filter 7 peaks at 8 x 69.27 = 554.2 mel (444.7 Hz)
    bands = store.read_video("tone")["mel"].astype(np.float32).mean(2).argmax(1)
    assert bands.tolist() == [7, 7, 7]


def test_a_flash_and_a_click_land_in_the_same_step(extracted):
    store, _ = extracted
    v = store.read_video("sync")
    brightness = v["frames"].astype(float).mean((1, 2, 3))
    assert brightness[1] > 200 and brightness[0] < 30 and brightness[2] < 30        # the flash: step 1 only
    loudness = v["mel"].astype(np.float32).mean(1)                                    # (steps, 101 frames)
    # step 1's window starts at 16/30 s: the click at 0.6 s is (0.6 - 0.5333) x 100 = 6.7 frames in; step 0 sees it
    # 60 frames in; step 2's window (from 1.0667 s) never hears it
    assert abs(int(loudness[1].argmax()) - 6.7) <= 1.5
    assert abs(int(loudness[0].argmax()) - 60) <= 1.5
    assert loudness[2].max() < loudness[1].max() - 5
