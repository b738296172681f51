"""Issue 23, items 7-11: bad input is caught early, with one line (paths that look like options, labels outside the
class list, ids a store cannot hold, segments that are not finite or lie past the video, FIFOs and devices, control
characters, read-only stores, and stores created for refused manifests)."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import main
from featurestore.decode import DecodedVideo, DecodeError, frames_at, probe
from featurestore.store import FeatureStore, VideoFeatures
from featurestore.text import printable
from manifests.datasets import load_dataset
from manifests.schema import MAX_ID_BYTES, ManifestError, read_manifest
from tests.conftest import make_video

ESC = "\x1b"
FAST = ["--descriptors", "image", "--weights", "random", "--workers", "1"]


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def one_line_error(res) -> str:
    """The output of a refused CLI run: exit status 1, one line, no traceback, no raw escape character."""
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output and ESC not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    return res.output


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """One 1 s video with audio (30 frames)."""
    return make_video(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=1.0)


# --- 7: a path starting with "-" is a file, never an option -------------------------------------------------------

@pytest.mark.parametrize("name", ["-report.mp4", "-report"])
def test_a_path_that_looks_like_an_option_is_probed_and_decoded_as_a_file(tmp_path, monkeypatch, clip, name):
    from manifests.builders import _probe_duration

    shutil.copy(clip, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    assert probe(name).duration == pytest.approx(1.0, abs=0.05)
    assert _probe_duration(Path(name)) == pytest.approx(1.0, abs=0.05)      # fs manifest's durations
    with DecodedVideo(name, with_audio=True) as video:
        assert sum(len(chunk) for chunk in video.frames()) == 30
        assert len(video.audio()) > 0
    assert frames_at(name, [0.5]).shape == (1, 112, 112, 3)
    assert sorted(os.listdir(tmp_path)) == [name], "ffmpeg or ffprobe wrote a report file"


def test_fs_extract_of_a_manifest_path_starting_with_dash_stores_it_and_writes_no_report(tmp_path, monkeypatch, clip):
    shutil.copy(clip, tmp_path / "-report.mp4")
    write_csv(tmp_path / "m.csv", [{"video_id": "v", "path": "-report.mp4", "label": "a", "split": "train"}])
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["extract", "--manifest", "m.csv", "--store", "s.zarr", *FAST])
    assert res.exit_code == 0, res.output
    assert "stored 1, failed 0" in res.output
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".log")]
    assert FeatureStore(tmp_path / "s.zarr").read_video("v").attrs["path"] == str(tmp_path / "-report.mp4")


# --- 8: labels outside the dataset's classes ----------------------------------------------------------------------

def synthetic_root(tmp_path: Path, labels: list[str]) -> Path:
    """A data root whose synthetic dataset lists classes c0, c1 and has one (placeholder) video per label."""
    d = tmp_path / "root" / "synthetic"
    d.mkdir(parents=True)
    (d / "classes.txt").write_text("c0\nc1\n")
    rows = []
    for i, label in enumerate(labels):
        (d / f"v{i}.mp4").write_bytes(b"x")
        rows.append({"video_id": f"v{i}", "path": f"v{i}.mp4", "label": label, "split": "train"})
    write_csv(d / "manifest.csv", rows)
    return tmp_path / "root"


def test_a_label_missing_from_the_class_list_is_refused_when_the_manifest_is_read(tmp_path):
    root = synthetic_root(tmp_path, ["c0", "c1", "zzz"])
    with pytest.raises(ManifestError) as e:
        load_dataset("synthetic", root=root)
    assert str(e.value) == ("manifest.csv line 4 (video_id 'v2'): label 'zzz' is not among the dataset's 2 classes "
                            "(c0, c1)")
    assert load_dataset("synthetic", root=synthetic_root(tmp_path / "ok", ["c1", "c0"])).classes == ["c0", "c1"]


def test_fs_extract_refuses_the_label_in_one_line_and_creates_no_store(tmp_path):
    root = synthetic_root(tmp_path, ["c0", "zzz"])
    res = CliRunner().invoke(main, ["extract", "--dataset", "synthetic", "--data-root", str(root),
                                    "--store", str(tmp_path / "s.zarr"), *FAST])
    assert "label 'zzz' is not among the dataset's 2 classes" in one_line_error(res)
    assert not (tmp_path / "s.zarr").exists()


def tiny_store(path: Path, videos: dict[str, str], classes=("c0", "c1")) -> FeatureStore:
    """A store of image descriptors: {video_id: label}, 3 steps each, all in train."""
    store = FeatureStore(path, mode="a")
    store.initialise("tiny", list(classes), ["image"], {"models": {}})
    for vid, label in videos.items():
        store.write_video(vid, {"t": np.arange(3, dtype=np.float32), "image": np.ones((3, 256), np.float16)},
                          {"label": label, "split": "train", "n_steps": 3, "duration": 2.0, "has_audio": True,
                           "path": f"{vid}.mp4"})
    return store


def test_fs_verify_reports_a_stored_video_whose_label_is_not_a_class_of_the_store(tmp_path):
    tiny_store(tmp_path / "s.zarr", {"good": "c0", "bad": "zzz"})
    res = CliRunner().invoke(main, ["verify", str(tmp_path / "s.zarr")])
    assert res.exit_code == 1
    problems = [line for line in res.output.splitlines() if line.startswith("problem:")]
    assert problems == ["problem: bad: label 'zzz' is not among the store's 2 classes"]


# --- 9: ids a store cannot hold --------------------------------------------------------------------------------------

@pytest.mark.parametrize("video_id, rule", [
    ("x" * 250, "video_id is 250 bytes long in UTF-8, at most 200"),
    ("é" * 101, "video_id is 202 bytes long in UTF-8, at most 200"),      # 101 characters, 202 bytes
    ("zarr.json", "is a name zarr uses for its metadata"),
    ("ZARR.JSON", "is a name zarr uses for its metadata"),               # one file on a case-insensitive disk
    (".zgroup", "may not contain '/' or start with '.' or '__'"),
    ("..", "may not contain '/' or start with '.' or '__'"),
    ("v\\", "may not contain '\\' (zarr reads it as '/')"),          # once failed at write, left partial/v/
    ("a\tb", "video_id holds control characters"),
    ("a\u202eb", "video_id holds control characters"),                   # a right-to-left override
])
def test_an_id_a_store_cannot_hold_is_refused_when_the_manifest_is_read(tmp_path, video_id, rule):
    (tmp_path / "a.mp4").write_bytes(b"x")
    m = write_csv(tmp_path / "m.csv", [{"video_id": "ok", "path": "a.mp4", "label": "c", "split": "train"},
                                       {"video_id": video_id, "path": "a.mp4", "label": "c", "split": "train"}])
    with pytest.raises(ManifestError) as e:
        read_manifest(m)
    msg = str(e.value)
    assert msg.startswith("m.csv line 3 (video_id '") and rule in msg
    assert msg.isprintable() and len(msg) < 200, msg                   # escaped and shortened


def test_the_longest_id_accepted_fits_the_store_with_its_partial_and_old_tags(tmp_path):
    vid = "é" * (MAX_ID_BYTES // 2)                  # MAX_ID_BYTES bytes: the longest a manifest may hold
    (tmp_path / "a.mp4").write_bytes(b"x")
    m = write_csv(tmp_path / "m.csv", [{"video_id": vid, "path": "a.mp4", "label": "c0", "split": "train"},
                                       {"video_id": "-leading-dash", "path": "a.mp4", "label": "c0", "split": "train"}])
    assert read_manifest(m)["video_id"].tolist() == [vid, "-leading-dash"]
    store = tiny_store(tmp_path / "s.zarr", {vid: "c0"})
    store.replace_video(vid, {"t": np.arange(3, dtype=np.float32), "image": np.zeros((3, 256), np.float16)},
                        {"label": "c0", "split": "train", "n_steps": 3, "duration": 2.0, "path": "a.mp4"})
    assert store.read_video(vid)["image"].sum() == 0


def test_fs_extract_refuses_the_id_zarr_json_before_decoding_and_leaves_no_partial(tmp_path, clip):
    m = write_csv(tmp_path / "m.csv", [{"video_id": "zarr.json", "path": str(clip), "label": "a", "split": "train"}])
    res = CliRunner().invoke(main, ["extract", "--manifest", str(m), "--store", str(tmp_path / "s.zarr"), *FAST])
    assert "line 2 (video_id 'zarr.json'): video_id 'zarr.json' is a name zarr uses" in one_line_error(res)
    assert not (tmp_path / "s.zarr").exists()


# --- 10: segments ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("segments, why", [
    ("1-inf", "segment '1-inf' is not start-end in seconds"),
    ("-1-2", "segment '-1-2' needs 0 <= start < end"),
    ("0-1;nan-3", "segment 'nan-3' is not start-end in seconds"),
    ("1e999-1e9999", "segment '1e999-1e9999' needs 0 <= start < end"),
    ("3-3", "segment '3-3' needs 0 <= start < end"),
])
def test_a_segment_that_is_not_finite_and_ordered_is_refused_naming_the_video(tmp_path, segments, why):
    (tmp_path / "a.mp4").write_bytes(b"x")
    m = write_csv(tmp_path / "m.csv", [{"video_id": "v", "path": "a.mp4", "label": "c", "split": "train",
                                        "segments": segments}])
    with pytest.raises(ManifestError) as e:
        read_manifest(m)
    assert str(e.value).startswith(f"m.csv line 2 (video_id 'v'): {why}")
    assert "could not convert" not in str(e.value)


def test_segments_past_the_video_are_cut_to_its_end_or_dropped_with_a_note(tmp_path, clip, caplog):
    from featurestore.cluster import close_client, make_client
    from featurestore.config import ExtractConfig
    from featurestore.extract import run_extraction

    long_clip = make_video(tmp_path / "two.mp4", seconds=2.0)          # 60 frames: decoded duration 2 s
    broken = tmp_path / "bad.mp4"
    broken.write_bytes(long_clip.read_bytes()[:300])
    df = pd.DataFrame([{"video_id": "cut", "path": str(long_clip), "label": "c0", "split": "train",
                        "segments": "0.5-1;1.2-2.3;1.5-9;5-7"},
                       {"video_id": f"gone{ESC}[2J", "path": str(broken), "label": "c0", "split": "train",
                        "segments": ""}])                            # an id with a terminal escape, through the API
    client = make_client(workers=1, processes=False)
    try:
        summary = run_extraction(df, FeatureStore(tmp_path / "s.zarr", mode="a"),
                                 ExtractConfig(descriptors=("image",), student_weights="random", threads=1), client,
                                 "t", ["c0"], progress=False)
    finally:
        close_client(client)
    assert (summary.stored, summary.failed) == (1, 1)
    attrs = FeatureStore(tmp_path / "s.zarr").read_video("cut").attrs
    assert attrs["segments"] == "0.5-1;1.2-2;1.5-2"
    assert attrs["manifest_segments"] == "0.5-1;1.2-2.3;1.5-9;5-7"
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "featurestore.extract")   # logged warnings
    assert "note: cut: segment 1.5-9 ends after the video's end (2 s): cut to 1.5-2" in text
    assert "note: cut: segment 5-7 starts after the video's end (2 s): dropped" in text
    assert "1.2-2.3" not in text                    # an end within one step (16/30 s) of the video's is cut quietly
    assert "failed gone\\x1b[2J (probe): ffprobe: " in text and ESC not in text


def test_fs_manifest_activitynet_drops_a_segment_that_never_ends(tmp_path):
    import json

    from manifests.builders import VideoIndex, build_activitynet

    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "abc.mp4").write_bytes(b"x")
    (tmp_path / "a.json").write_text(json.dumps({"database": {"abc": {"subset": "training", "duration": 30,
        "annotations": [{"label": "Surfing", "segment": [1.0, float("inf")]},
                        {"label": "Surfing", "segment": [2.0, 3.0]}]}}}))      # json writes Infinity
    rows = build_activitynet(tmp_path / "a.json", VideoIndex(tmp_path / "v")).rows
    assert rows["segments"].tolist() == ["2.00-3.00"]


def test_a_stored_segment_starting_after_the_video_does_not_count_as_annotated():
    from pipelines.data import action_mask

    t = np.array([0.0, 0.5, 1.0, 1.5], np.float32)
    after = VideoFeatures("v", {"segments": "5-7", "duration": 2.0}, {"t": t})
    assert action_mask(after) is None                 # not an annotated video whose steps all miss the action
    partly = VideoFeatures("v", {"segments": "1-9;5-7", "duration": 2.0}, {"t": t})
    assert action_mask(partly).tolist() == [False, False, True, True]


# --- 11: FIFOs and devices, control characters, read-only stores, refused manifests -------------------------------

def test_a_fifo_or_a_device_is_not_a_regular_file_and_is_never_opened(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)                        # opening it for reading would block: only its status may be read
    for path, kind in ((str(fifo), "a FIFO"), ("/dev/zero", "a character device"), (str(tmp_path), "a directory")):
        with pytest.raises(DecodeError) as e:
            probe(path)
        assert str(e.value) == f"not a regular file ({kind}): {path}"
    m = write_csv(tmp_path / "m.csv", [{"video_id": "v", "path": "pipe.mp4", "label": "c", "split": "train"}])
    with pytest.raises(ManifestError, match=r"line 2 \(video_id 'v'\): not a regular file \(a FIFO\)"):
        read_manifest(m)


def test_printable_escapes_what_a_terminal_would_act_on():
    assert printable(f"a{ESC}[31mred\n\u202eb\x00") == "a\\x1b[31mred\\n\\u202eb\\x00"
    assert printable("plain id é-1 ok") == "plain id é-1 ok"
    assert printable("x" * 100, limit=21) == "x" * 9 + "..." + "x" * 9


@pytest.mark.parametrize("column", ["video_id", "label"])
def test_an_id_or_label_with_a_terminal_escape_is_refused_and_printed_escaped(tmp_path, clip, column):
    row = {"video_id": "v", "path": str(clip), "label": "a", "split": "train"}
    row[column] = f"x{ESC}[2Jy"
    m = write_csv(tmp_path / "m.csv", [row])
    res = CliRunner().invoke(main, ["extract", "--manifest", str(m), "--store", str(tmp_path / "s.zarr"), *FAST])
    assert "x\\x1b[2Jy" in one_line_error(res) and "control characters" in res.output


def test_fs_info_and_verify_print_stored_control_characters_escaped(tmp_path):
    store = tiny_store(tmp_path / "s.zarr", {f"v{ESC}]0;pwned{chr(7)}": f"c{ESC}[2J"})   # written by the API
    store.record_failure(f"f{ESC}[31m", "f.mp4", "probe", f"ffprobe: f{ESC}[31m.mp4: Invalid data")
    info = CliRunner().invoke(main, ["info", str(tmp_path / "s.zarr"), "--failures"])
    assert info.exit_code == 0 and ESC not in info.output and "f\\x1b[31m" in info.output
    verify = CliRunner().invoke(main, ["verify", str(tmp_path / "s.zarr")])
    assert verify.exit_code == 1 and ESC not in verify.output and "\x07" not in verify.output
    assert "v\\x1b]0;pwned\\x07" in verify.output


@contextlib.contextmanager
def read_only(*dirs: Path):
    """Make ``dirs`` unwritable: chmod for a user, the immutable attribute (chattr +i) for root, whom modes do not
    stop. Skips when neither works on this file system."""
    root = os.geteuid() == 0
    for d in dirs:
        if root:
            if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(d)],
                                                                capture_output=True).returncode != 0:
                pytest.skip("running as root on a file system without chattr +i: cannot make a store read-only")
        else:
            d.chmod(0o555)
    try:
        with pytest.raises(OSError):
            (dirs[0] / "probe").touch()
        yield
    finally:
        for d in dirs:
            if root:
                subprocess.run(["chattr", "-i", str(d)], capture_output=True)
            else:
                d.chmod(0o755)


def test_fs_extract_into_a_read_only_store_is_one_line(tmp_path, clip):
    s = tmp_path / "s.zarr"
    FeatureStore(s, mode="a")
    m = write_csv(tmp_path / "m.csv", [{"video_id": "v", "path": str(clip), "label": "a", "split": "train"}])
    with read_only(s, s / "partial", s / "videos"):
        res = CliRunner().invoke(main, ["extract", "--manifest", str(m), "--store", str(s), *FAST])
    assert f"cannot write to store {s}" in one_line_error(res)


@pytest.mark.parametrize("row", [{"segments": "1-inf"}, {"video_id": "x" * 250}, {"split": "dev"}])
def test_a_refused_manifest_creates_no_store(tmp_path, clip, row):
    m = write_csv(tmp_path / "m.csv", [{"video_id": "v", "path": str(clip), "label": "a", "split": "train", **row}])
    res = CliRunner().invoke(main, ["extract", "--manifest", str(m), "--store", str(tmp_path / "s.zarr"), *FAST])
    assert "line 2" in one_line_error(res)
    assert not (tmp_path / "s.zarr").exists()
