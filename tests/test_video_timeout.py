"""A hung decoder costs its video, never the run: ffmpeg is killed at the video's time limit (--video-timeout) and
the video gets a failures row at stage `timeout`."""
import os
import shutil
import time

import pandas as pd
import pytest
from click.testing import CliRunner

from featurestore.cluster import close_client, make_client
from featurestore.config import ExtractConfig
from featurestore.decode import DecodedVideo, DecodeTimeout, ffmpeg_exe, probe
from featurestore.extract import run_extraction
from featurestore.store import FeatureStore

LIGHT = dict(descriptors=("image", "audio", "fused"), student_weights="random", batch_size=4)


def fake_ffmpeg(tmp_path, hang_on: str = "hang") -> tuple[str, "os.PathLike"]:
    """An ffmpeg that hangs (sleep 1000, after writing its pid) when asked to decode a file whose name contains
    ``hang_on`` to the frame pipe, and is the real ffmpeg for everything else (encoding, -version, probing)."""
    pidfile = tmp_path / "hung.pid"
    script = tmp_path / "bin" / "ffmpeg"
    script.parent.mkdir()
    script.write_text(f"""#!/bin/bash
case " $* " in
  *" pipe:1 "*)
    for a in "$@"; do
      case "$a" in *{hang_on}*) echo $$ > '{pidfile}'; exec sleep 1000;; esac
    done;;
esac
exec '{ffmpeg_exe()}' "$@"
""")
    script.chmod(0o755)
    return str(script), pidfile


def assert_killed(pidfile) -> None:
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)          # killed and reaped: no hung ffmpeg (nor zombie) is left behind


def hang_manifest(tmp_path, video_dir) -> pd.DataFrame:
    shutil.copy(video_dir / "tone.mp4", tmp_path / "hang.mp4")
    return pd.DataFrame([{"video_id": vid, "path": str(p), "label": "a", "split": "train", "segments": ""}
                         for vid, p in (("hang", tmp_path / "hang.mp4"), ("tone", video_dir / "tone.mp4"))])


def test_a_hung_decode_is_killed_its_video_fails_at_stage_timeout_and_the_worker_goes_on(tmp_path, video_dir,
                                                                                        monkeypatch):
    exe, pidfile = fake_ffmpeg(tmp_path)
    monkeypatch.setenv("FS_FFMPEG", exe)           # threads of this process: the workers see it
    df = hang_manifest(tmp_path, video_dir)
    client = make_client(workers=1, processes=False, threads_per_worker=1)   # one video at a time: hang, then tone
    try:
        store = FeatureStore(tmp_path / "s.zarr", mode="a")
        t0 = time.perf_counter()
        summary = run_extraction(df, store, ExtractConfig(**LIGHT, video_timeout=2), client, "t", ["a"],
                                 progress=False)
        wall = time.perf_counter() - t0
    finally:
        close_client(client)
    assert summary.stored == 1 and summary.failed == 1 and store.video_ids() == ["tone"]
    fail = store.failures().set_index("video_id").loc["hang"]
    assert fail["stage"] == "timeout"
    assert fail["error"].startswith("timeout: ffmpeg (pid ") and "decoding hang.mp4" in fail["error"]
    assert "limit of 2 s (--video-timeout)" in fail["error"] and fail["error"].endswith("killed it")
    assert_killed(pidfile)
    assert wall < 60


def test_fs_extract_video_timeout_reaches_worker_processes(tmp_path, video_dir, monkeypatch):
    from cli.main import main

    exe, pidfile = fake_ffmpeg(tmp_path)
    monkeypatch.setenv("FS_FFMPEG", exe)           # worker processes inherit the environment
    hang_manifest(tmp_path, video_dir).to_csv(tmp_path / "m.csv", index=False)
    res = CliRunner().invoke(main, ["extract", "--manifest", str(tmp_path / "m.csv"), "--store", str(tmp_path / "s.zarr"),
                                    "--descriptors", "image,audio,fused", "--weights", "random", "--video-timeout", "2"])
    assert res.exit_code == 0, res.output
    store = FeatureStore(tmp_path / "s.zarr")
    assert store.video_ids() == ["tone"]
    assert store.failures().set_index("video_id").loc["hang", "stage"] == "timeout"
    assert_killed(pidfile)


def test_video_timeout_option_is_checked():
    from cli.main import main

    res = CliRunner().invoke(main, ["extract", "--video-timeout", "-1"])
    assert res.exit_code != 0 and "--video-timeout" in res.output
    with pytest.raises(ValueError, match="--video-timeout"):
        ExtractConfig(video_timeout=-1)


def test_the_default_limit_grows_with_the_duration_and_0_disables_it():
    assert ExtractConfig().video_time_limit(10.0) == 60
    assert ExtractConfig().video_time_limit(3600.0) == 4 * 3600
    assert ExtractConfig().video_time_limit(None) == 600
    assert ExtractConfig(video_timeout=0).video_time_limit(3600.0) == 0
    assert ExtractConfig(video_timeout=2.5).video_time_limit(3600.0) == 2.5


def test_time_the_reader_spends_elsewhere_does_not_count(video_dir):
    """ffmpeg blocked on a full pipe while the models are behind is not hung: only waits for it count."""
    with DecodedVideo(str(video_dir / "tone.mp4"), with_audio=True, timeout=2.0) as dec:
        chunks = []
        for chunk in dec.frames(chunk=8):
            chunks.append(chunk)
            time.sleep(0.35)                          # 8 chunks (ffmpeg blocks on the full pipe meanwhile):
                                                      # 2.8 s of "model" time, past the 2 s limit
        assert sum(map(len, chunks)) == 60 and len(dec.audio()) > 0
        assert dec.used_seconds() < 2.0


def test_a_probe_that_hangs_is_killed(tmp_path, video_dir, monkeypatch):
    pidfile = tmp_path / "probe.pid"
    fake = tmp_path / "ffprobe"
    fake.write_text(f"#!/bin/bash\necho $$ > '{pidfile}'\nexec sleep 1000\n")
    fake.chmod(0o755)
    monkeypatch.setenv("FS_FFPROBE", str(fake))
    t0 = time.perf_counter()
    with pytest.raises(DecodeTimeout, match=r"probing tone.mp4 gave no answer in 1 s \(--video-timeout\): killed ffprobe"):
        probe(str(video_dir / "tone.mp4"), timeout=1)
    assert time.perf_counter() - t0 < 10
    assert_killed(pidfile)
