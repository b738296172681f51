"""Shared fixtures: small deterministic videos made with ffmpeg's lavfi sources (milliseconds each)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from featurestore.decode import ffmpeg_exe

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = REPO.parent / "shared" / "data" / "real"


def need_real_data(*paths: Path) -> None:
    """Skip when the real videos are absent, except on CI (``CI=true``), which has them: there it is a failure, so
    a moved folder cannot silently turn the real-video tests into skips."""
    missing = [str(p) for p in (paths or (REAL_DATA,)) if not Path(p).exists()]
    if not missing:
        return
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(f"CI=true but the real videos are missing: {', '.join(missing)}", pytrace=False)
    pytest.skip(f"real videos not present: {', '.join(missing)}")


def make_video(path: Path, seconds: float = 2.0, size: str = "160x120", rate: int = 30, audio: bool = True,
               tone_hz: int = 440, vcodec: str = "libx264", extra: list[str] | None = None) -> Path:
    """Encode a test-pattern video (H.264) with an optional sine-tone AAC track."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
           "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate=44100:duration={seconds}",
                "-c:a", "aac", "-b:a", "64k"]
    cmd += ["-c:v", vcodec, "-pix_fmt", "yuv420p", *(extra or []), "-shortest", str(path)]
    subprocess.run(cmd, check=True)
    return path


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """A folder of small videos covering the usual cases, plus broken files."""
    d = tmp_path_factory.mktemp("videos")
    make_video(d / "tone.mp4", seconds=2.0)                       # 60 frames -> 4 steps
    make_video(d / "pal.mp4", seconds=2.0, rate=25, tone_hz=880)  # resampled to 30 fps
    make_video(d / "silent.mp4", seconds=1.5, audio=False)        # no audio stream
    good = (d / "tone.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (d / "empty.mp4").write_bytes(b"")
    return d


@pytest.fixture
def manifest_of(tmp_path):
    """Write a manifest CSV for {video_id: (path, label, split)} and return its path."""
    import pandas as pd

    def _write(rows: dict[str, tuple[str, str, str]], name: str = "manifest.csv") -> Path:
        df = pd.DataFrame([{"video_id": k, "path": str(p), "label": lab, "split": sp}
                           for k, (p, lab, sp) in rows.items()])
        out = tmp_path / name
        df.to_csv(out, index=False)
        return out
    return _write


@pytest.fixture(scope="module")
def client():
    """A local Dask cluster of one in-process worker, one per test module (a module may define its own)."""
    from featurestore.cluster import close_client, make_client

    c = make_client(workers=1, processes=False)
    yield c
    close_client(c)
