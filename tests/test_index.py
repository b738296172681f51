"""The store index: listings read one table, never a group; crash-safe appends; rebuilt from the groups."""
from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from featurestore.index import INDEX_FILE
from featurestore.store import FeatureStore, verify


def _arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"t": np.arange(n, dtype=np.float32), "fused": rng.normal(size=(n, 8)).astype(np.float16)}


def _store(tmp_path, videos: int = 5) -> FeatureStore:
    s = FeatureStore(tmp_path / "s.zarr", mode="a")
    s.initialise("d", ["a", "b"], ["fused"], {})
    for i in range(videos):
        s.write_video(f"v{i}", _arrays(3 + i, i), {"label": "ab"[i % 2], "split": "train" if i % 3 else "test",
                                                   "n_steps": 3 + i, "duration": 1.0 + i, "has_audio": True,
                                                   "provenance": {"models": {}}})
    return s


def test_listings_read_the_index_without_opening_a_group(tmp_path, monkeypatch):
    _store(tmp_path)
    s = FeatureStore(tmp_path / "s.zarr")

    def refuse(*a, **k):
        raise AssertionError("a listing opened a video group")
    monkeypatch.setattr(zarr, "open_group", refuse)
    assert s.video_ids() == [f"v{i}" for i in range(5)]
    assert s.video_ids("test") == ["v0", "v3"]
    assert s.video_attrs("v4")["n_steps"] == 7 and "provenance" not in s.video_attrs("v4")
    info = s.info()
    assert info["videos"] == 5 and info["per_split"] == {"test": 2, "train": 3} and info["steps"] == 3 + 4 + 5 + 6 + 7
    assert info["bytes"] > 0


def test_an_unfinished_write_never_reaches_the_index(tmp_path):
    s = _store(tmp_path, 2)
    with pytest.raises(ValueError):
        s.write_video("bad", {"t": np.zeros(3, np.float32), "fused": np.zeros((4, 8), np.float16)},
                      {"label": "a", "split": "train", "n_steps": 3, "duration": 1.0, "has_audio": True})
    lines = (s.path / INDEX_FILE).read_text().splitlines()
    assert [json.loads(x)["video_id"] for x in lines] == ["v0", "v1"]
    assert "bad" not in FeatureStore(s.path).video_ids()


def test_a_crash_between_publishing_and_indexing_or_mid_append_is_recovered(tmp_path):
    s = _store(tmp_path, 3)
    path = s.path / INDEX_FILE
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])     # v1 torn mid-line, v2's line lost
    reader = FeatureStore(s.path)
    assert reader.video_ids() == ["v0", "v1", "v2"]                      # read from their groups meanwhile
    assert path.read_text().count("\n") == 1                              # a reader does not write
    writer = FeatureStore(s.path, mode="a")
    assert writer.video_ids() == ["v0", "v1", "v2"]
    writer.write_video("v9", _arrays(2), {"label": "a", "split": "train", "n_steps": 2, "duration": 1.0,
                                          "has_audio": True})
    ids = [json.loads(x)["video_id"] for x in path.read_text().splitlines() if x.startswith("{") and x.endswith("}")]
    assert sorted(set(ids)) == ["v0", "v1", "v2", "v9"]                   # re-indexed, the torn line left alone


def test_refresh_supersedes_the_entry_and_reindex_rebuilds_the_same_table(tmp_path):
    s = _store(tmp_path, 3)
    before = s.entries()["v1"]["tag"]
    s.replace_video("v1", _arrays(4, 7), {**s.group_attrs("v1"), "note": "refreshed"})
    s = FeatureStore(s.path)
    assert s.entries()["v1"]["tag"] != before and s.video_attrs("v1")["note"] == "refreshed"
    listed = s.entries()
    (s.path / INDEX_FILE).unlink()
    assert FeatureStore(s.path, mode="a").reindex() == 3
    assert FeatureStore(s.path).entries() == listed


def test_verify_reports_an_index_that_disagrees_with_the_groups(tmp_path):
    s = _store(tmp_path, 2)
    path = s.path / INDEX_FILE
    path.write_text(path.read_text().replace('"label": "b"', '"label": "a"'))
    problems, _ = verify(FeatureStore(s.path))
    assert problems == ["v1: index says label='a', the group 'b' (fs verify --reindex rebuilds the index)"]
    problems, notes = verify(FeatureStore(s.path), reindex=True)
    assert problems == [] and notes[0] == "index rebuilt from 2 complete groups"


def test_superseded_lines_are_compacted_away_and_appends_do_not_reread_the_table(tmp_path, monkeypatch):
    from featurestore.index import StoreIndex

    index = StoreIndex(tmp_path)
    reads = []
    original = StoreIndex._lines
    monkeypatch.setattr(StoreIndex, "_lines", lambda self: reads.append(1) or original(self))
    pad = "x" * 400
    for rnd in range(12):                                     # 12 x 500 lines of the same 50 videos, ~2.7 MB
        index.append([{"video_id": f"v{i % 50}", "tag": f"{rnd}-{i}", "pad": pad} for i in range(500)])
    lines = index.path.read_text().splitlines()
    assert len(reads) <= 3                                    # only where the size crossed a power of two
    assert len(lines) < 6000                                  # compacted at least once
    entries = index.entries()
    assert sorted(entries) == sorted(f"v{i}" for i in range(50))
    assert entries["v49"]["tag"] == "11-499"                  # the last line of each video survives


def test_fs_verify_reindex_and_fs_pack_from_the_command_line(tmp_path):
    from click.testing import CliRunner

    from cli.main import main

    s = _store(tmp_path, 4)
    (s.path / INDEX_FILE).unlink()
    out = CliRunner().invoke(main, ["verify", str(s.path), "--reindex"])
    assert out.exit_code == 0, out.output
    assert "index rebuilt from 4 complete groups" in out.output and (s.path / INDEX_FILE).is_file()
    out = CliRunner().invoke(main, ["pack", str(s.path), "--arrays", "t,fused"])
    assert out.exit_code == 0, out.output
    assert "train  built" in out.output and "test   built" in out.output
    again = CliRunner().invoke(main, ["pack", str(s.path), "--arrays", "t,fused"])
    assert "train  current" in again.output
    bad = CliRunner().invoke(main, ["pack", str(s.path), "--arrays", "r2p1d"])
    assert bad.exit_code != 0 and "has no r2p1d descriptors" in bad.output
