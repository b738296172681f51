"""The real videos in ../shared/data/real/ (skipped when absent, failing on CI): real codecs, real audio."""
import numpy as np
import pandas as pd
import pytest
import torch

from featurestore.audio import LogMel, step_windows
from featurestore.constants import LOG_EPS
from featurestore.cluster import close_client, make_client
from featurestore.decode import DecodedVideo, probe
from featurestore.config import ExtractConfig
from featurestore.extract import run_extraction
from featurestore.store import FeatureStore
from tests.conftest import REAL_DATA, need_real_data

WITH_AUDIO = REAL_DATA / "v_ZNVhz7ctTq0.mp4"
NO_AUDIO = REAL_DATA / "mmaction2-demo-no-audio.mp4"


@pytest.fixture(autouse=True)
def _real_videos():
    need_real_data(WITH_AUDIO, NO_AUDIO)           # a skip locally, a failure on CI


def test_real_video_with_audio_gives_27_steps_and_non_silent_log_mels(tmp_path):
    with DecodedVideo(str(WITH_AUDIO), with_audio=True) as dec:
        n_frames = sum(len(c) for c in dec.frames())
        audio = dec.audio()
    assert n_frames == 420
    assert abs(len(audio) - 14 * 16000) < 1600
    t = np.arange(27) * 16 / 30
    mel = LogMel()(torch.from_numpy(step_windows(audio, t)))
    assert mel.shape == (27, 40, 101)
    silence = np.log(LOG_EPS)
    assert (mel.mean(dim=(1, 2)) > silence + 3).float().mean() > 0.9


def test_real_videos_through_the_extractor(tmp_path):
    df = pd.DataFrame([{"video_id": "with_audio", "path": str(WITH_AUDIO), "label": "a", "split": "test"},
                       {"video_id": "no_audio", "path": str(NO_AUDIO), "label": "b", "split": "test"}])
    client = make_client(workers=1, processes=False)
    try:
        store = FeatureStore(tmp_path / "s.zarr", mode="a")
        config = ExtractConfig(descriptors=("image", "audio", "fused"), student_weights="random")
        run_extraction(df, store, config, client, "real", ["a", "b"], progress=False)
    finally:
        close_client(client)
    v = store.read_video("with_audio")
    assert v.n_steps == 27 and v.attrs["has_audio"] is True and v.attrs["audio_rms"] > 1e-3
    assert v["audio"].any()
    w = store.read_video("no_audio")
    assert not probe(str(NO_AUDIO)).has_audio
    assert w.attrs["has_audio"] is False and w.n_steps == 19 and not w["audio"].any()   # 300 frames at 30 fps
