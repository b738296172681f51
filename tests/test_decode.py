import numpy as np
import pytest

from featurestore.decode import DecodedVideo, DecodeError, decode_command, probe
from tests.conftest import make_video


def decode_all(path, with_audio=True):
    with DecodedVideo(str(path), with_audio=with_audio) as dec:
        frames = np.concatenate(list(dec.frames()))
        return frames, dec.audio()


def test_frames_are_30fps_112_crops_and_audio_is_16k_mono(video_dir):
    frames, audio = decode_all(video_dir / "tone.mp4")
    assert frames.shape == (60, 112, 112, 3) and frames.dtype == np.uint8
    assert abs(len(audio) - 32000) < 1600
    assert audio.dtype == np.float32 and np.sqrt(np.mean(audio ** 2)) > 0.05


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
