from pathlib import Path

import pytest

from manifests.datasets import dataset_manifest
from manifests.schema import ManifestError, parse_segments, read_manifest


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "m.csv"
    p.write_text(text)
    return p


@pytest.fixture
def files(tmp_path):
    for n in ("a.mp4", "b.mp4"):
        (tmp_path / n).write_bytes(b"x")
    return tmp_path


def test_valid_manifest_resolves_relative_paths(files):
    df = read_manifest(write(files, "video_id,path,label,split,segments\na,a.mp4,run,train,1-2;3.5-4\n"
                                    "b,b.mp4,jump,test,\n"))
    assert df["path"].tolist() == [str(files / "a.mp4"), str(files / "b.mp4")]
    assert parse_segments(df["segments"][0]) == [(1.0, 2.0), (3.5, 4.0)]


@pytest.mark.parametrize("text, expected", [
    ("video_id,path,split\na,a.mp4,train\n", "missing column(s) label"),
    ("video_id,path,label,split\na,a.mp4,run,train\na,b.mp4,run,test\n", "line 3 (video_id 'a'): duplicate"),
    ("video_id,path,label,split\na,a.mp4,run,train\nb,gone.mp4,run,test\n", "line 3 (video_id 'b'): file not found"),
    ("video_id,path,label,split\na,a.mp4,run,train\nb,b.mp4,run,dev\n", "line 3 (video_id 'b'): unknown split 'dev'"),
    ("video_id,path,label,split\na,a.mp4,,train\n", "line 2 (video_id 'a'): empty label"),
    ("video_id,path,label,split,duration\na,a.mp4,run,train,long\n", "line 2 (video_id 'a'): duration"),
    ("video_id,path,label,split,segments\na,a.mp4,run,train,5-2\n", "line 2 (video_id 'a'): segment"),
    ("video_id,path,label,split\nx/y,a.mp4,run,train\n", "line 2 (video_id 'x/y'): video_id may not"),
])
def test_bad_manifest_is_one_line_naming_the_row(files, text, expected):
    with pytest.raises(ManifestError) as e:
        read_manifest(write(files, text))
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_dataset_says_how_to_provide_it(tmp_path):
    with pytest.raises(ManifestError, match="no manifest for dataset 'nosuch'.*fs manifest nosuch"):
        dataset_manifest("nosuch", tmp_path)


def test_synthetic_lives_in_the_data_root(tmp_path):
    csv, base = dataset_manifest("synthetic", tmp_path)
    assert csv == tmp_path / "synthetic" / "manifest.csv" and base == tmp_path / "synthetic"
