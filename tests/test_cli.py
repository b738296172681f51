"""The `fs` command as a user runs it (real Dask worker processes for extraction)."""
import json

from click.testing import CliRunner

from cli.main import main


VERBS = ("bench", "bench-extract", "export", "extract", "info", "manifest", "pack", "refresh", "show", "synth", "train-avgn",
         "train-distill", "train-head", "train-sampler", "train-skim", "train-teacher", "verify")


def test_help_lists_every_verb():
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0
    listed = res.output.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in listed if line.startswith("  ") and line.split()] == list(VERBS)
    for verb in VERBS:                 # each verb's own help runs and names it
        sub = CliRunner().invoke(main, [verb, "--help"])
        assert sub.exit_code == 0 and f"Usage: main {verb} " in sub.output, verb


def test_bad_manifest_is_one_line_not_a_traceback(tmp_path):
    (tmp_path / "m.csv").write_text("video_id,path,label,split\na,nowhere.mp4,run,train\n")
    res = CliRunner().invoke(main, ["extract", "--manifest", str(tmp_path / "m.csv"), "--store",
                                    str(tmp_path / "s.zarr")])
    assert res.exit_code != 0
    assert "line 2 (video_id 'a'): file not found" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_unknown_dataset_is_one_line(tmp_path):
    res = CliRunner().invoke(main, ["extract", "--dataset", "minisports1m", "--store", str(tmp_path / "s.zarr")])
    assert res.exit_code != 0 and "no manifest for dataset 'minisports1m'" in res.output


def test_gpus_without_cuda_is_a_clear_error(tmp_path, video_dir, manifest_of):
    import pytest
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA devices")
    m = manifest_of({"tone": (video_dir / "tone.mp4", "a", "train")})
    res = CliRunner().invoke(main, ["extract", "--manifest", str(m), "--store", str(tmp_path / "s.zarr"),
                                    "--gpus", "8", "--weights", "random", "--teacher-weights", "random"])
    assert res.exit_code != 0 and "--gpus 8 asked but torch sees 0 CUDA device(s)" in res.output


def test_extract_then_info_on_a_process_cluster(tmp_path, video_dir, manifest_of):
    m = manifest_of({"tone": (video_dir / "tone.mp4", "a", "train"),
                     "empty": (video_dir / "empty.mp4", "b", "test")})
    store = str(tmp_path / "s.zarr")
    res = CliRunner().invoke(main, ["extract", "--manifest", str(m), "--store", store, "--descriptors",
                                    "image,audio,fused", "--weights", "random"])
    assert res.exit_code == 0, res.output
    assert "stored 1, failed 1" in res.output
    info = json.loads(CliRunner().invoke(main, ["info", store, "--json"]).output)
    assert info["videos"] == 1 and info["failures"] == 1 and info["steps"] == 4
    assert info["descriptors"] == ["image", "audio", "fused"] and info["signals"] == ["loudness", "motion", "spectrum"]
    out = CliRunner().invoke(main, ["info", store, "--failures"]).output
    assert "empty file" in out and "signals      loudness, motion, spectrum" in out


def test_hwaccel_this_ffmpeg_lacks_warns_and_decodes_in_software(tmp_path, video_dir, manifest_of):
    import pytest
    m = manifest_of({"tone": (video_dir / "tone.mp4", "a", "train")})
    store = str(tmp_path / "s.zarr")
    with pytest.warns(UserWarning, match="--hwaccel nosuch: this ffmpeg offers .*; decoding in software"):
        res = CliRunner().invoke(main, ["extract", "--manifest", str(m), "--store", store, "--descriptors", "image",
                                        "--weights", "random", "--hwaccel", "nosuch", "--in-flight", "2",
                                        "--decode-threads", "1"])
    assert res.exit_code == 0, res.output
    assert "stored 1, failed 0" in res.output


def test_negative_in_flight_is_one_line(tmp_path, video_dir, manifest_of):
    m = manifest_of({"tone": (video_dir / "tone.mp4", "a", "train")})
    res = CliRunner().invoke(main, ["extract", "--manifest", str(m), "--store", str(tmp_path / "s.zarr"),
                                    "--in-flight", "-1"])
    assert res.exit_code != 0 and "--in-flight must be at least 1 (or 0 for the default), got -1" in res.output
