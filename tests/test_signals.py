"""The signal-energy arrays (``loudness``, ``motion``, ``spectrum``): hand-computed values, chunking-independence,
extraction from the single decode, and stores built before them."""
import subprocess

import numpy as np
import pandas as pd
import pytest

from featurestore.config import ExtractConfig
from featurestore.constants import LOG_EPS, LOUDNESS_FLOOR_DB, MOTION_DIM, MOTION_GRID, N_MELS, SAMPLE_RATE
from featurestore.decode import ffmpeg_exe
from featurestore.extract import run_extraction
from featurestore.extractor import Extractor
from featurestore.audio import LogMel
from featurestore.signals import MotionGrid, loudness_db, mel_spectrum, silent_spectrum
from featurestore.store import FeatureStore, verify

CONFIG = ExtractConfig(descriptors=("image", "audio", "fused"), batch_size=4, student_weights="random", threads=2)


def test_loudness_is_the_rms_level_in_dbfs_with_a_floor():
    t = np.arange(16000) / 16000
    windows = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), np.zeros(16000), np.full(16000, 0.1)]).astype(np.float32)
    got = loudness_db(windows)
    assert got.dtype == np.float32 and got.shape == (3,)
    np.testing.assert_allclose(got, [20 * np.log10(0.5 / np.sqrt(2)), LOUDNESS_FLOOR_DB, -20.0], atol=1e-3)


def test_spectrum_is_each_bands_mean_log_mel_over_the_window():
    mel = np.arange(2 * N_MELS * 3, dtype=np.float32).reshape(2, N_MELS, 3)
    got = mel_spectrum(mel)
    assert got.dtype == np.float16 and got.shape == (2, N_MELS)
    np.testing.assert_array_equal(got, mel[:, :, 1].astype(np.float16))      # the middle of 3 evenly spaced values
    silent = silent_spectrum(3)
    assert silent.shape == (3, N_MELS) and silent.dtype == np.float16
    np.testing.assert_allclose(silent.astype(np.float32), np.log(1e-6), rtol=1e-3)


def loudest_band(hz: float) -> int:
    """The mel band a pure tone of ``hz`` is loudest in, by the front end itself (a reference, not the signal)."""
    import torch
    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    return int(LogMel()(0.5 * torch.sin(2 * np.pi * hz * t)[None]).mean(-1).argmax())


def test_motion_is_the_mean_frame_difference_per_channel_and_cell_of_each_step():
    frames = np.zeros((20, 112, 112, 3), np.uint8)
    cell = 112 // MOTION_GRID
    frames[1::2, :cell, :cell, 0] = 255          # the top-left cell's red channel flips every frame
    frames[17:, -cell:, -cell:, 2] = 51          # from frame 17 on, the bottom-right cell's blue is 51
    grid = MotionGrid()
    grid.add(frames)
    got = grid.array(3).astype(np.float32).reshape(3, 3, MOTION_GRID, MOTION_GRID)
    assert got.shape == (3, 3, MOTION_GRID, MOTION_GRID)
    # step 0: frames 1..15 each differ by 255 from the previous in that cell (15 differences, every one a flip)
    assert got[0, 0, 0, 0] == 1.0 and np.count_nonzero(got[0]) == 1
    # step 1: frames 16..19: four differences, all flips; frame 17's blue change is one of the four: 0.2 / 4
    assert got[1, 0, 0, 0] == 1.0
    np.testing.assert_allclose(got[1, 2, -1, -1], 0.2 / 4, rtol=1e-3)
    assert np.count_nonzero(got[1]) == 2 and not got[2].any()        # a step without frames is zero
    assert grid.array(3).dtype == np.float16 and grid.array(3).shape == (3, MOTION_DIM)


def test_motion_does_not_depend_on_how_the_decoder_chunks_the_frames():
    frames = np.random.default_rng(0).integers(0, 256, (50, 112, 112, 3), dtype=np.uint8)
    whole, pieces = MotionGrid(), MotionGrid()
    whole.add(frames)
    for a, b in ((0, 1), (1, 17), (17, 18), (18, 50)):
        list(pieces.watch(iter([frames[a:b]])))
    np.testing.assert_array_equal(whole.array(4), pieces.array(4))


def lavfi_video(path, video: str, audio: str, seconds: float = 4.0):
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", video,
                    "-f", "lavfi", "-i", audio, "-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "96k", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def loud_then_moving(tmp_path_factory):
    """4 s: a still frame the first 2 s then a moving test pattern; a tone the first 2 s then near silence."""
    d = tmp_path_factory.mktemp("signal-videos")
    return lavfi_video(d / "v.mp4", "color=c=gray:s=160x120:r=30:d=2[a];testsrc2=s=160x120:r=30:d=2[b];"
                                    "[a][b]concat=n=2:v=1:a=0[out0]",
                       "aevalsrc=if(lt(t\\,2)\\,0.5\\,0.005)*sin(2*PI*440*t):s=44100:d=4")


def test_extraction_stores_loudness_and_motion_from_the_single_decode(tmp_path, loud_then_moving, client):
    df = pd.DataFrame([{"video_id": "v", "path": str(loud_then_moving), "label": "c0", "split": "test"}])
    store = FeatureStore(tmp_path / "s.zarr", mode="a")
    run_extraction(df, store, CONFIG, client, "t", ["c0"], progress=False)
    assert store.attrs["signals"] == ["loudness", "motion", "spectrum"]
    v = store.read_video("v")
    n = v.n_steps
    assert v["loudness"].shape == (n,) and v["loudness"].dtype == np.float32
    assert v["motion"].shape == (n, MOTION_DIM) and v["motion"].dtype == np.float16
    t = v["t"]
    loud, quiet = v["loudness"][t + 1 <= 1.9], v["loudness"][t >= 2.1]
    assert loud.min() > quiet.max() + 20                      # the tone is 40 dB above what follows
    still, moving = v["motion"][t + 16 / 30 <= 1.9].astype(float), v["motion"][t >= 2.1].astype(float)
    assert still.mean() < 0.1 * moving.mean()
    assert v["spectrum"].shape == (n, N_MELS) and v["spectrum"].dtype == np.float16
    band = loudest_band(440.0)
    assert 0 < band < N_MELS - 1
    tone = v["spectrum"][t + 1 <= 1.9].astype(np.float32)
    assert (tone.argmax(axis=1) == band).all()                # the 440 Hz tone's band is the loudest in the loud half
    assert tone[:, band].min() > v["spectrum"][t >= 2.1][:, band].astype(np.float32).max() + 2   # and louder than after
    assert verify(store)[0] == []


def test_spectrum_without_a_student_and_of_a_video_without_audio(tmp_path, loud_then_moving):
    """The log-mel is computed for the spectrum when no student is loaded; a video without audio is silence."""
    mute = tmp_path / "mute.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=s=160x120:r=30:d=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(mute)], check=True)
    ex = Extractor(ExtractConfig(**{**CONFIG.__dict__, "descriptors": ("image",)}))
    ex.student, ex.models = None, {}              # the extractor of a store without student descriptors
    ex.batcher = ex._make_batcher()
    arrays, attrs = ex.extract(str(loud_then_moving), [""])
    assert set(arrays) == {"t", "loudness", "motion", "spectrum"}
    t, spectrum = arrays["t"], arrays["spectrum"].astype(np.float32)
    assert (spectrum[t + 1 <= 1.9].argmax(axis=1) == loudest_band(440.0)).all()
    arrays, attrs = ex.extract(str(mute), [""])
    assert not attrs["has_audio"]
    np.testing.assert_array_equal(arrays["spectrum"], np.full((attrs["n_steps"], N_MELS), np.log(LOG_EPS), np.float16))


def test_a_store_built_before_the_signals_keeps_working_and_appends_without_them(tmp_path, video_dir, client):
    df = pd.DataFrame([{"video_id": n.split(".")[0], "path": str(video_dir / n), "label": "c0", "split": "test"}
                       for n in ("tone.mp4", "pal.mp4")])
    store = FeatureStore(tmp_path / "old.zarr", mode="a")
    old = ExtractConfig(**{**CONFIG.__dict__, "signals": ()})
    run_extraction(df.iloc[:1], store, old, client, "t", ["c0"], progress=False)
    store.root.attrs.pop("signals")                           # as fs wrote stores before the signal arrays
    assert "signals" not in FeatureStore(store.path).attrs
    run_extraction(df, FeatureStore(store.path, mode="a"), CONFIG, client, "t", ["c0"], progress=False)
    store = FeatureStore(store.path)
    assert "loudness" not in store.read_video("pal").arrays   # new videos match the old ones
    assert verify(store)[0] == []


def test_a_store_with_the_first_signals_appends_without_the_spectrum(tmp_path, video_dir, client):
    df = pd.DataFrame([{"video_id": n.split(".")[0], "path": str(video_dir / n), "label": "c0", "split": "test"}
                       for n in ("tone.mp4", "pal.mp4")])
    store = FeatureStore(tmp_path / "old.zarr", mode="a")
    old = ExtractConfig(**{**CONFIG.__dict__, "signals": ("loudness", "motion")})   # as fs wrote them before spectrum
    run_extraction(df.iloc[:1], store, old, client, "t", ["c0"], progress=False)
    run_extraction(df, FeatureStore(store.path, mode="a"), CONFIG, client, "t", ["c0"], progress=False)
    store = FeatureStore(store.path)
    assert store.attrs["signals"] == ["loudness", "motion"]
    pal = store.read_video("pal").arrays
    assert "loudness" in pal and "motion" in pal and "spectrum" not in pal
    assert verify(store)[0] == []
