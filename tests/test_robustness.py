"""Crash safety, concurrent writers, verification and bad inputs."""
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import zarr
from click.testing import CliRunner

from cli.main import main
from featurestore.decode import ffmpeg_exe
from featurestore.config import ExtractConfig
from featurestore.extract import run_extraction
from featurestore.store import FeatureStore, StoreError, verify
from pipelines.data import load_split
from tests.conftest import REAL_DATA, make_video, need_real_data

LIGHT = ExtractConfig(descriptors=("image", "audio", "fused"), student_weights="random", batch_size=4)


def ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *map(str, args)], check=True)


def run(store_path, rows, client):
    df = pd.DataFrame([{"video_id": k, "path": str(p), "label": "a", "split": "train"} for k, p in rows.items()])
    store = FeatureStore(store_path, mode="a")
    return run_extraction(df, store, LIGHT, client, "t", ["a"], progress=False), store


def test_a_second_writer_is_refused_with_one_line(tmp_path, video_dir, client):
    store = FeatureStore(tmp_path / "s.zarr", mode="a")
    with store.writer_lock("fs extract"):
        with pytest.raises(StoreError, match=r"being written by fs extract \(pid \d+"):
            run(tmp_path / "s.zarr", {"tone": video_dir / "tone.mp4"}, client)
    summary, _ = run(tmp_path / "s.zarr", {"tone": video_dir / "tone.mp4"}, client)   # lock released
    assert summary.stored == 1


def test_verify_finds_corruption_and_trainers_refuse_it(tmp_path, video_dir, client):
    _, store = run(tmp_path / "s.zarr", {"tone": video_dir / "tone.mp4", "pal": video_dir / "pal.mp4"}, client)
    assert verify(store)[0] == []
    arr = zarr.open_array(str(tmp_path / "s.zarr" / "videos" / "pal" / "fused"), mode="r+")
    bad = arr[...]
    bad[1, 3] = np.nan
    arr[...] = bad
    problems, _ = verify(FeatureStore(tmp_path / "s.zarr"))
    assert problems == ["pal: array fused holds non-finite values"]
    res = CliRunner().invoke(main, ["verify", str(tmp_path / "s.zarr")])
    assert res.exit_code != 0 and "pal: array fused holds non-finite values" in res.output
    with pytest.raises(StoreError, match="non-finite"):
        load_split(FeatureStore(tmp_path / "s.zarr"), "train", ("fused",))


def bad_inputs(d):
    """(file, expect) pairs: expect 'stored' or the failure stage."""
    cases = {}
    good = make_video(d / "src.mp4", seconds=1.5)
    shutil.copy(good, d / "really an mp4.mkv")
    cases["wrong_extension"] = (d / "really an mp4.mkv", "stored")
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=2", "-c:a", "aac", d / "audio_only.mp4")
    cases["audio_only"] = (d / "audio_only.mp4", "probe")
    make_video(d / "one_frame.mp4", seconds=1 / 30, audio=False)
    cases["one_frame"] = (d / "one_frame.mp4", "stored")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30:duration=2", "-vf", "setpts='PTS*(1+0.5*mod(N,3))'",
           "-fps_mode", "vfr", "-c:v", "libx264", d / "vfr.mp4")
    cases["variable_frame_rate"] = (d / "vfr.mp4", "stored")
    make_video(d / "uhd.mp4", seconds=0.5, size="3840x2160", audio=False, extra=["-preset", "ultrafast"])
    cases["4k"] = (d / "uhd.mp4", "stored")
    make_video(d / "odd.mp4", seconds=1.0, size="161x99")
    cases["odd_dimensions"] = (d / "odd.mp4", "stored")
    ffmpeg("-i", good, "-c", "copy", "-metadata:s:v:0", "rotate=90", d / "rotated.mp4")
    cases["rotated"] = (d / "rotated.mp4", "stored")
    shutil.copy(good, d / "vidéo à l'été 日本.mp4")
    cases["non_ascii_spaces"] = (d / "vidéo à l'été 日本.mp4", "stored")
    (d / "zero.mp4").write_bytes(b"")
    cases["zero_byte"] = (d / "zero.mp4", "probe")
    (d / "trunc.mp4").write_bytes(good.read_bytes()[:2000])
    cases["truncated"] = (d / "trunc.mp4", "probe|decode")
    shutil.copy(good, d / "vanishing.mp4")
    cases["disappears_mid_run"] = (d / "vanishing.mp4", "probe")
    return cases


def test_bad_inputs_end_stored_or_as_a_failure_row_with_the_reason(tmp_path, client):
    cases = bad_inputs(tmp_path)
    df = pd.DataFrame([{"video_id": k, "path": str(p), "label": "a", "split": "train"} for k, (p, _) in cases.items()])
    os.remove(tmp_path / "vanishing.mp4")          # listed in a valid manifest, gone by the time it is extracted
    store = FeatureStore(tmp_path / "s.zarr", mode="a")
    summary = run_extraction(df, store, LIGHT, client, "t", ["a"], progress=False)
    fails = store.failures().set_index("video_id")
    for vid, (_, expect) in cases.items():
        if expect == "stored":
            assert store.has_video(vid), (vid, fails.loc[vid].to_dict() if vid in fails.index else None)
        else:
            assert fails.loc[vid, "stage"] in expect.split("|") and fails.loc[vid, "error"], vid
    assert summary.stored + summary.failed == len(cases)
    assert store.read_video("one_frame").attrs["short"] is True and store.read_video("one_frame").n_steps == 1
    assert store.read_video("4k")["image"].shape[1] == 256
    assert "no video stream" in fails.loc["audio_only", "error"]
    assert "not found" in fails.loc["disappears_mid_run", "error"]
    assert verify(store)[0] == []


def test_real_videos_run_through_the_same_suite(tmp_path, client):
    need_real_data(REAL_DATA)
    rows = {p.stem: p for p in sorted(REAL_DATA.glob("*.mp4"))}
    assert len(rows) >= 2, f"no real videos in {REAL_DATA}"
    summary, store = run(tmp_path / "s.zarr", rows, client)
    assert summary.stored == len(rows) and verify(store)[0] == []


def test_kill_9_at_three_random_points_then_rerun_equals_a_clean_run(tmp_path, video_dir):
    for i in range(6):
        shutil.copy(video_dir / ("tone.mp4" if i % 2 else "pal.mp4"), tmp_path / f"v{i}.mp4")
    pd.DataFrame([{"video_id": f"v{i}", "path": str(tmp_path / f"v{i}.mp4"), "label": "a", "split": "train"}
                  for i in range(6)]).to_csv(tmp_path / "m.csv", index=False)
    cmd = [sys.executable, "-m", "cli.main", "extract", "--manifest", str(tmp_path / "m.csv"),
           "--descriptors", "image,audio,fused", "--weights", "random"]
    rng = random.Random(7)
    crash_dir = tmp_path / "crash.zarr"
    stored_at_kill = []
    for target in sorted(rng.sample(range(1, 6), 3)):          # kill once 1..5 videos are in, a random delay later
        proc = subprocess.Popen(cmd + ["--store", str(crash_dir)], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and \
                (not (crash_dir / "videos").is_dir() or len(os.listdir(crash_dir / "videos")) < target):
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.4))
        os.killpg(proc.pid, signal.SIGKILL)        # the client, the scheduler and every worker at once
        proc.wait()
        stored_at_kill.append(len(FeatureStore(crash_dir).video_ids()))
    assert min(stored_at_kill) < 6                  # at least one kill landed mid-run
    subprocess.run(cmd + ["--store", str(tmp_path / "crash.zarr")], check=True, capture_output=True)
    subprocess.run(cmd + ["--store", str(tmp_path / "clean.zarr")], check=True, capture_output=True)
    crash, clean = FeatureStore(tmp_path / "crash.zarr"), FeatureStore(tmp_path / "clean.zarr")
    assert crash.video_ids() == clean.video_ids() == [f"v{i}" for i in range(6)]
    assert crash.partial_ids() == [] and len(crash.failures()) == 0
    for vid in clean.video_ids():
        a, b = crash.read_video(vid), clean.read_video(vid)
        assert a.arrays.keys() == b.arrays.keys()
        for k in a.arrays:
            assert np.array_equal(a[k], b[k]), (vid, k)
    assert verify(crash)[0] == []
