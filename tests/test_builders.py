"""Manifest builders on small hand-made annotation files in each official format, with generated videos."""
import json
import subprocess

import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import main
from featurestore.decode import ffmpeg_exe
from manifests.schema import read_manifest
from manifests.builders import (AnnotationError, DurationCache, VideoIndex, build_activitynet, build_kinetics_sounds,
                                build_minisports1m)


def tiny_video(path, seconds: float):
    """A 32x32, 1 fps H.264 video: long durations encode in milliseconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"color=c=red:s=32x32:r=1:d={seconds}", "-c:v", "libx264", str(path)], check=True)
    return path


YT = ["aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc", "ddddddddddd", "eeeeeeeeeee", "fffffffffff", "ggggggggggg"]


def test_minisports1m_keeps_single_label_2_to_5_minute_videos_and_draws_per_class(tmp_path):
    root = tmp_path / "videos"
    for vid in YT[:3]:
        tiny_video(root / f"{vid}.mp4", 150)              # class 0, 2.5 min: kept
    tiny_video(root / "sub" / f"{YT[3]}.mkv", 60)         # too short
    tiny_video(root / f"{YT[4]}.mp4", 150)                # multi-label
    lines = [f"https://www.youtube.com/watch?v={v} 0" for v in YT[:4]] + [
        f"https://www.youtube.com/watch?v={YT[4]} 0,1", "garbage line", f"https://www.youtube.com/watch?v={YT[5]} 999",
        f"https://www.youtube.com/watch?v={YT[6]} 2"]    # not on disk
    (tmp_path / "train_partition.txt").write_text("\n".join(lines) + "\n")
    cache = DurationCache(tmp_path / "durations.csv")
    rep = build_minisports1m(tmp_path / "train_partition.txt", VideoIndex(root), seed=0, durations=cache,
                             per_class=(2, 1))
    assert sorted(rep.rows["video_id"]) == sorted(YT[:3])
    assert rep.rows["split"].value_counts().to_dict() == {"train": 2, "test": 1}
    assert set(rep.rows["label"]) == {"boomerang"}                # index 0 of sports1m-labels.txt
    assert [m["video_id"] for m in rep.missing] == [YT[6]]
    assert rep.malformed == ["train_partition.txt:6: expected 'URL label,label', got 'garbage line'",
                             "train_partition.txt:7: label index out of 0..486: 999"]
    assert "boxing" in rep.short_classes and "boomerang" not in rep.short_classes
    assert (tmp_path / "durations.csv").is_file()
    again = build_minisports1m(tmp_path / "train_partition.txt", VideoIndex(root), seed=0,
                               durations=DurationCache(tmp_path / "durations.csv", prober=lambda p: 1 / 0),
                               per_class=(2, 1))                  # cached: nothing is probed again
    assert again.rows.equals(rep.rows)


def test_activitynet_validation_is_test_and_segments_are_kept(tmp_path):
    root = tmp_path / "v"
    tiny_video(root / "v_abc.mp4", 5)
    tiny_video(root / "def.mkv", 5)
    tiny_video(root / "hidden.mp4", 5)
    db = {"database": {
        "abc": {"subset": "training", "duration": 120.5, "annotations": [
            {"label": "Surfing", "segment": [10.0, 20.5]}, {"label": "Surfing", "segment": [1.0, 3.0]}]},
        "def": {"subset": "validation", "duration": 60, "annotations": [{"label": "Cooking", "segment": [0, 9]}]},
        "hidden": {"subset": "testing", "duration": 60, "annotations": []},
        "gone": {"subset": "training", "duration": 60, "annotations": [{"label": "Cooking", "segment": [0, 9]}]},
        "broken": {"subset": "training", "annotations": [{"label": "Cooking"}]}}}
    (tmp_path / "anet.json").write_text(json.dumps(db))
    rep = build_activitynet(tmp_path / "anet.json", VideoIndex(root))
    rows = rep.rows.set_index("video_id")
    assert rows.loc["abc", "split"] == "train" and rows.loc["def", "split"] == "test"
    assert rows.loc["abc", "segments"] == "1.00-3.00;10.00-20.50"
    assert "hidden" not in rows.index
    assert [m["video_id"] for m in rep.missing] == ["gone"] and len(rep.malformed) == 1
    with pytest.raises(AnnotationError, match="database"):
        (tmp_path / "bad.json").write_text("[]")
        build_activitynet(tmp_path / "bad.json", VideoIndex(root))


def test_kinetics_sounds_keeps_its_31_classes(tmp_path):
    root = tmp_path / "k"
    tiny_video(root / f"{YT[0]}_000010_000020.mp4", 3)
    tiny_video(root / f"{YT[1]}_000000_000010.mp4", 3)
    pd.DataFrame([
        {"label": "playing drums", "youtube_id": YT[0], "time_start": 10, "time_end": 20, "split": "train"},
        {"label": "abseiling", "youtube_id": YT[1], "time_start": 0, "time_end": 10, "split": "train"},
        {"label": "singing", "youtube_id": YT[2], "time_start": 0, "time_end": 10, "split": "val"},
        {"label": "singing", "youtube_id": "short", "time_start": 0, "time_end": 10, "split": "val"},
    ]).to_csv(tmp_path / "kinetics_400_train.csv", index=False)
    rep = build_kinetics_sounds(tmp_path / "kinetics_400_train.csv", VideoIndex(root))
    assert rep.rows[["video_id", "label", "split"]].values.tolist() == [[YT[0], "playing drums", "train"]]
    assert [m["video_id"] for m in rep.missing] == [YT[2]] and len(rep.malformed) == 1


def test_ucf101_split1_and_the_cli_writes_manifest_and_missing_list(tmp_path):
    ann = tmp_path / "ucfTrainTestlist"
    ann.mkdir()
    (ann / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\nnot a line\n")
    (ann / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
                                         "Archery/v_Archery_g08_c01.avi 2\nJuggling/v_Juggling_g01_c01.avi 9\n")
    (ann / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\n")
    data_root = tmp_path / "data"
    for name in ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "Archery/v_Archery_g01_c01.avi"):
        tiny_video(data_root / "UCF-101" / name, 2)
    out = tmp_path / "ucf101.csv"
    res = CliRunner().invoke(main, ["manifest", "ucf101", "--annotations", str(ann), "--video-root",
                                    str(data_root / "UCF-101"), "--out", str(out), "--data-root", str(data_root)])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert df[["video_id", "label", "split"]].values.tolist() == [
        ["v_ApplyEyeMakeup_g08_c01", "ApplyEyeMakeup", "train"], ["v_Archery_g01_c01", "Archery", "test"]]
    assert df["path"][0] == "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"     # relative to the data root
    missing = pd.read_csv(tmp_path / "ucf101.missing.csv")
    assert missing["video_id"].tolist() == ["v_Archery_g08_c01"]
    assert "2 malformed lines" in res.output
    assert len(read_manifest(out, base=data_root)) == 2          # a valid fs manifest


def test_missing_annotation_file_is_one_line(tmp_path):
    (tmp_path / "v").mkdir()
    res = CliRunner().invoke(main, ["manifest", "ucf101", "--annotations", str(tmp_path), "--video-root",
                                    str(tmp_path / "v")])
    assert res.exit_code != 0 and "classInd.txt" in res.output
