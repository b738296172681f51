import cmath
import subprocess

import numpy as np
import pytest

from featurestore.decode import DecodedVideo, DecodeError, decode_command, ffmpeg_exe, probe
from tests.conftest import make_video


def decode_all(path, with_audio=True):
    with DecodedVideo(str(path), with_audio=with_audio) as dec:
        frames = np.concatenate(list(dec.frames()))
        return frames, dec.audio()


def test_frames_are_30fps_112_crops_and_audio_is_16k_mono(video_dir):
    frames, audio = decode_all(video_dir / "tone.mp4")
    assert frames.shape == (60, 112, 112, 3) and frames.dtype == np.uint8
    # 2 s at 16 kHz; AAC pads its last frame (1024 samples at 44.1 kHz = 371.5 at 16 kHz), nothing more
    assert 32000 <= len(audio) < 32000 + 372
    # lavfi's sine has amplitude 1/8: RMS 0.125 / sqrt(2) = 0.0884
    assert audio.dtype == np.float32 and np.sqrt(np.mean(audio[:32000] ** 2)) == pytest.approx(0.0884, rel=0.05)


def test_a_440_hz_tone_survives_the_resample_to_16k_at_its_bin(video_dir):
    # the fixture's tone is encoded at 44.1 kHz; over one second at 16 kHz a DFT bin is 1 Hz wide
    _, audio = decode_all(video_dir / "tone.mp4")
    x = audio[:16000].astype(float)
    power = lambda f: abs(sum(x[n] * cmath.exp(-2j * cmath.pi * f * n / 16000) for n in range(0, 16000)))  # noqa
    peak = power(440)
    assert peak > 0.9 * 16000 * 0.125 / 2                    # a sine of amplitude A gives A N / 2 at its bin
    assert all(power(f) < peak / 20 for f in (420, 430, 450, 460, 880))


def test_other_frame_rates_are_resampled_to_30fps(video_dir):
    frames, _ = decode_all(video_dir / "pal.mp4")
    assert len(frames) == 60


def test_one_command_reads_the_file_once_for_both_streams(video_dir):
    cmd = decode_command(str(video_dir / "tone.mp4"), audio_fd=5)
    assert cmd.count("-i") == 1
    assert "pipe:1" in cmd and "pipe:5" in cmd


def test_portrait_odd_sized_video_is_scaled_on_its_short_side(tmp_path):
    path = make_video(tmp_path / "portrait.mp4", seconds=1.0, size="121x215")
    frames, _ = decode_all(path)
    assert frames.shape[1:] == (112, 112, 3)


def ramp_video(path, width, height, along):
    """Two lossless grey frames whose value rises by one level per two pixels along ``along`` (x or y)."""
    x = np.arange(width)[None, :].repeat(height, 0) if along == "x" else np.arange(height)[:, None].repeat(width, 1)
    frame = (x // 2 if max(width, height) > 256 else x).astype(np.uint8)
    raw = np.stack([frame, frame]).tobytes()
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "gray",
                    "-s", f"{width}x{height}", "-r", "30", "-i", "pipe:0", "-c:v", "libx264", "-qp", "0",
                    "-pix_fmt", "yuv444p", str(path)], input=raw, check=True)
    return path


@pytest.mark.parametrize("width, height, along", [(256, 128, "x"), (128, 256, "y"), (512, 256, "x")])
def test_the_crop_is_the_centre_of_the_scaled_frame(tmp_path, width, height, along):
    # short side scaled to 128; the long side becomes 256 and the 112 crop starts (256 - 112) / 2 = 72 in. The ramp
    # is one level per pixel of the scaled frame, so crop column (or row) j shows level 72 + j
    frames, _ = decode_all(ramp_video(tmp_path / "r.mp4", width, height, along), with_audio=False)
    profile = frames[0, :, :, 0].astype(float).mean(0 if along == "x" else 1)
    np.testing.assert_allclose(profile[4:-4], 72 + np.arange(112)[4:-4], atol=1.5)
    across = frames[0, :, :, 0].astype(float).mean(1 if along == "x" else 0)
    assert np.ptp(across) <= 1                                    # constant the other way


def test_probe_reports_missing_audio(video_dir):
    assert probe(str(video_dir / "tone.mp4")).has_audio
    assert not probe(str(video_dir / "silent.mp4")).has_audio


@pytest.mark.parametrize("name", ["empty.mp4", "truncated.mp4"])
def test_broken_files_raise_a_one_line_decode_error(video_dir, name):
    with pytest.raises(DecodeError) as e:
        info = probe(str(video_dir / name))
        decode_all(video_dir / name, with_audio=info.has_audio)
    assert "\n" not in str(e.value)


def test_a_failing_hwaccel_falls_back_once_and_is_then_skipped(monkeypatch):
    import featurestore.decode as decode
    from featurestore.decode import DecodeError, decode_with_fallback, hwaccel_failure

    monkeypatch.setattr(decode, "_HWACCEL_FAILED", {})
    calls = []

    def fake(hw):
        calls.append(hw)
        if hw == "nvdec-test":
            raise DecodeError("ffmpeg exited 1: no device")
        return "frames"
    assert decode_with_fallback(fake, "") == ("frames", "software")
    with pytest.raises(DecodeError):                       # output already consumed: no silent second decode
        decode_with_fallback(fake, "nvdec-test", can_retry=lambda: False)
    assert hwaccel_failure("nvdec-test") == ""
    calls.clear()
    assert decode_with_fallback(fake, "nvdec-test") == ("frames", "software")
    assert calls == ["nvdec-test", ""]
    assert hwaccel_failure("nvdec-test") == "--hwaccel nvdec-test failed (ffmpeg exited 1: no device); decoding in " \
                                            "software from now on"
    calls.clear()
    assert decode_with_fallback(fake, "nvdec-test") == ("frames", "software")
    assert calls == [""]                                   # given up for this process: no failing start per file
