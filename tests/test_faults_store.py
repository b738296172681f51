"""Faults of the store on disk (issue 23, items 1, 2 and 4): a missing or damaged chunk is never read as data but
is one line naming the video and the array, from ``fs verify`` (which lists every problem) and from every reader;
chunks are fsynced before a video or a packed view is published; a packed view rebuilt under a reader never
changes what that reader reads."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from cli.main import main
from featurestore import packed as packed_mod
from featurestore import store as store_mod
from featurestore.packed import open_packed, pack_state, pack_store
from featurestore.store import FeatureStore, StoreError
from pipelines.data import SplitData

REPO = Path(__file__).resolve().parent.parent


def _write(store: FeatureStore, vid: str, seed: int, n: int, split: str = "train", has_audio: bool = True) -> None:
    rng = np.random.default_rng(seed)
    audio = rng.normal(size=(n, 4)).astype(np.float16) if has_audio else np.zeros((n, 4), np.float16)
    store.write_video(vid, {"t": np.arange(n, dtype=np.float32) + 1,
                            "image": rng.normal(size=(n, 6)).astype(np.float16), "audio": audio,
                            "fused": rng.normal(size=(n, 4)).astype(np.float16)},
                      {"label": "ab"[seed % 2], "split": split, "n_steps": n, "duration": n * 16 / 30,
                       "has_audio": has_audio})


def _store(path: Path, n_videos: int = 6) -> FeatureStore:
    s = FeatureStore(path, mode="a")
    s.initialise("d", ["a", "b"], ["image", "audio", "fused"], {})
    for i in range(n_videos):
        _write(s, f"v{i:03d}", i, 5 + (7 * i) % 13)
    return FeatureStore(path)


def _one_line(e: pytest.ExceptionInfo, *words: str) -> str:
    text = str(e.value)
    assert "\n" not in text and all(w in text for w in words), text
    return text


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, env=env,
                          timeout=300)


# --- item 1: a deleted chunk --------------------------------------------------------------------------------------
def test_a_deleted_chunk_is_listed_by_verify_and_refused_by_every_reader(tmp_path):
    store = _store(tmp_path / "s.zarr")
    (store.path / "videos" / "v002" / "fused" / "c" / "0" / "0").unlink()

    result = CliRunner().invoke(main, ["verify", str(store.path)])
    assert result.exit_code != 0, result.output
    assert "problem: v002: array fused is missing chunk c/0/0 on disk" in result.output
    with pytest.raises(StoreError) as e:
        store.read_video("v002")
    _one_line(e, "v002", "array fused", "missing chunk c/0/0")
    with pytest.raises(StoreError) as e:                          # what trainers and the bench read: the packed view
        SplitData(FeatureStore(store.path), "train", ("fused",))
    _one_line(e, "v002", "array fused", "missing chunk c/0/0")
    np.testing.assert_array_equal(store.read_video("v001")["fused"].shape, (5 + 7, 4))   # the others still read


def test_new_float_arrays_fill_with_nan_and_old_all_zero_arrays_still_read(tmp_path, monkeypatch):
    store = _store(tmp_path / "s.zarr", 1)
    for name in ("t", "image", "audio", "fused"):
        assert np.isnan(zarr.open_array(str(store.path / "videos" / "v000" / name), mode="r").fill_value), name
    old = FeatureStore(tmp_path / "old.zarr", mode="a")             # an older store: zarr skipped all-fill chunks
    old.initialise("d", ["a", "b"], ["image", "audio", "fused"], {})
    monkeypatch.setattr(store_mod, "array_options", lambda dtype: {})
    _write(old, "silent", 1, 4, has_audio=False)
    _write(old, "loud", 2, 4)
    assert not (old.path / "videos" / "silent" / "audio" / "c").exists()
    assert not store_mod.verify(FeatureStore(old.path))[0]
    assert not FeatureStore(old.path).read_video("silent")["audio"].any()
    (old.path / "videos" / "loud" / "audio" / "c" / "0" / "0").unlink()
    assert store_mod.verify(FeatureStore(old.path))[0] == ["loud: array audio is missing chunk c/0/0 on disk"]


# --- item 2: empty and corrupted chunks, fsync ----------------------------------------------------------------------
def test_empty_and_corrupted_chunks_of_two_videos_are_all_listed_each_naming_video_and_array(tmp_path):
    store = _store(tmp_path / "s.zarr")
    (store.path / "videos" / "v001" / "image" / "c" / "0" / "0").write_bytes(b"")
    (store.path / "videos" / "v003" / "fused" / "c" / "0" / "0").write_bytes(np.random.default_rng(0).bytes(200))

    run = _cli("verify", str(store.path))
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert "problem: v001: array image chunk c/0/0 is empty (0 bytes) on disk" in out
    assert "problem: v003: array fused chunk c/0/0 cannot be decoded" in out
    assert "Traceback" not in out and "2 problem(s)" in out
    with pytest.raises(StoreError) as e:
        store.read_video("v001")
    _one_line(e, "v001", "array image", "empty")
    with pytest.raises(StoreError) as e:
        store.read_video("v003", ["fused"])
    _one_line(e, "v003", "array fused", "chunk c/0/0 cannot be decoded")
    run = _cli("pack", str(store.path), "--arrays", "fused")
    err = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    assert run.returncode != 0 and "Traceback" not in run.stderr and len(err) == 1, run.stderr
    assert "v003: array fused chunk c/0/0 cannot be decoded" in err[0]


def test_chunks_are_fsynced_before_the_video_or_the_packed_view_is_published(tmp_path, monkeypatch):
    store = FeatureStore(tmp_path / "s.zarr", mode="a")
    store.initialise("d", ["a", "b"], ["image", "audio", "fused"], {})
    events = []
    fsync, rename, replace = os.fsync, os.rename, os.replace

    def record_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("rename", str(a), str(b))), rename(a, b))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a), str(b))), replace(a, b))[1])
    _write(store, "v000", 0, 7)
    published = store.path / "videos" / "v000"
    at = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(published))
    tag = Path(events[at][1]).name
    before = {e[1] for e in events[:at] if e[0] == "fsync"}
    files = [p for p in published.rglob("*")]
    assert any(p.parts[-3:] == ("c", "0", "0") for p in files)
    for p in files + [published]:
        assert str(store.path / "partial" / tag / p.relative_to(published)) in before, p
    assert ("fsync", str(store.path / "videos")) in events[at:]

    events.clear()
    view = open_packed(store, "train", ("image",))
    at = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2].endswith("train.json"))
    before = {e[1] for e in events[:at] if e[0] == "fsync"}
    chunks = [p for p in (view.path / "image").rglob("*") if p.is_file()]
    assert chunks and all(str(p) in before for p in chunks)


# --- item 4: a packed view rebuilt under a reader -------------------------------------------------------------------
@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(packed_mod, "CHUNK_BYTES", 64)          # chunks of a few rows: many blocks on a tiny store
    monkeypatch.setattr(packed_mod, "BLOCK_CHUNKS", 1)


def test_a_reader_keeps_the_view_it_opened_while_the_view_is_rebuilt(tmp_path, small_chunks):
    store = _store(tmp_path / "s.zarr", 20)
    data = SplitData(store, "train", ("image",), budget=2 * 6 * 2)      # a cache of a few rows: blocks are re-read
    own = list(data.video_ids)
    image = data.tensors("image")
    np.testing.assert_array_equal(image[0].numpy(), store.read_video(own[0])["image"].astype(np.float32))

    writer = FeatureStore(store.path, mode="a")
    _write(writer, "a000", 99, 9)                                      # sorts first: every row of the view moves
    assert pack_store(writer, ("image",), ("train",)) == {"train": "built"}
    assert SplitData(FeatureStore(store.path), "train", ("image",)).video_ids == ["a000"] + own

    assert data.video_ids == own
    for j in reversed(range(len(own))):
        np.testing.assert_array_equal(image[j].numpy(), store.read_video(own[j])["image"].astype(np.float32))

    versions = lambda: sorted(p.name for p in (store.path / "packed").iterdir() if p.name.startswith("train-"))
    assert len(versions()) == 2                                        # the first reader's version is kept ...
    del data, image
    gc.collect()
    pack_store(writer, ("image",), ("train",))
    assert len(versions()) == 1                                        # ... and removed once no reader holds it
    info = FeatureStore(store.path).info()
    view = open_packed(FeatureStore(store.path), "train", ("image",))
    assert info["packed_bytes"] == store_mod.directory_bytes(store.path / "packed")[0]
    assert info["packed_bytes"] < 2 * store_mod.directory_bytes(view.path)[0]


def test_a_packed_view_of_the_older_layout_is_rebuilt_or_read_where_read_only(tmp_path, small_chunks, monkeypatch):
    store = _store(tmp_path / "s.zarr", 8)
    view = open_packed(store, "train", ("image",))
    path = view.path
    view.close()
    root = store.path / "packed"
    os.rename(path, root / "train")                                   # the layout before pointers: packed/<split>/
    (root / "train.json").unlink()
    with monkeypatch.context() as m:                                  # read-only: the old view is read as it is
        m.setattr(packed_mod.os, "access", lambda path, mode: False)
        old = open_packed(FeatureStore(store.path), "train", ("image",))
        assert old.path == root / "train"
        np.testing.assert_array_equal(old.reader("image").video(3), store.read_video("v003")["image"])
    assert pack_state(FeatureStore(store.path), "train")[0] == "stale"
    new = open_packed(FeatureStore(store.path), "train", ("image",))
    assert new.path != root / "train" and not (root / "train").exists()
    for i, vid in enumerate(new.video_ids):
        np.testing.assert_array_equal(new.reader("image").video(i), store.read_video(vid)["image"])


def test_a_damaged_packed_view_is_one_line_naming_the_split_and_array(tmp_path, small_chunks):
    store = _store(tmp_path / "s.zarr", 8)
    view = open_packed(store, "train", ("image",))
    (view.path / "image" / "c" / "2" / "0").unlink()
    del view
    with pytest.raises(StoreError) as e:
        SplitData(FeatureStore(store.path), "train", ("image",))
    _one_line(e, "packed view of train", "array image", "missing chunk c/2/0")
    result = CliRunner().invoke(main, ["verify", str(store.path)])
    assert result.exit_code != 0
    assert "problem: packed view of train: array image is missing chunk c/2/0" in result.output


def test_a_packed_view_with_damaged_metadata_is_listed_by_verify_and_rebuilt_by_fs_pack(tmp_path):
    store = _store(tmp_path / "s.zarr", 8)
    view = open_packed(store, "train", ("image",))
    damaged = view.path
    view.close()
    (damaged / "zarr.json").write_text("garbage")                 # bit rot, or a torn write of an older fs

    run = _cli("verify", str(store.path))
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "Traceback" not in out, out
    assert f"problem: packed view of train: its metadata cannot be read (JSONDecodeError) (fs pack {store.path} " \
           f"rebuilds it)" in out
    run = _cli("pack", str(store.path), "--arrays", "image")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    data = SplitData(FeatureStore(store.path), "train", ("image",))
    assert not damaged.exists()
    image = data.tensors("image")
    for j, vid in enumerate(data.video_ids):
        np.testing.assert_array_equal(image[j].numpy(), store.read_video(vid)["image"].astype(np.float32))


def test_a_video_whose_group_metadata_is_damaged_is_one_line_naming_it_from_readers(tmp_path):
    store = _store(tmp_path / "s.zarr")
    (store.path / "videos" / "v002" / "zarr.json").write_text("{bad")
    with pytest.raises(StoreError) as e:
        store.read_video("v002")
    _one_line(e, "v002: group unreadable (JSONDecodeError")
    with pytest.raises(StoreError) as e:                          # the trainers' packed view is built from it
        SplitData(FeatureStore(store.path), "train", ("fused",))
    _one_line(e, "v002: group unreadable")
    assert store.read_video("v001")["fused"].shape == (5 + 7, 4)


def test_a_damaged_packed_chunk_tries_only_the_chunks_of_the_failed_read(tmp_path, small_chunks, monkeypatch):
    """On the error path each chunk is decoded alone to name the bad ones: only those of the rows that failed, not
    every chunk of the packed array (thousands, gigabytes, on a large store)."""
    store = _store(tmp_path / "s.zarr", 8)
    view = open_packed(store, "train", ("image",))
    arr = view.array("image")
    per_chunk, n_chunks = int(arr.chunks[0]), arr.cdata_shape[0]
    assert n_chunks > 4
    (view.path / "image" / "c" / "2" / "0").write_bytes(np.random.default_rng(0).bytes(50))
    tried = []
    real = zarr.Array.get_block_selection
    monkeypatch.setattr(zarr.Array, "get_block_selection",
                        lambda self, coords, *a, **k: (tried.append(tuple(coords)), real(self, coords, *a, **k))[1])
    with pytest.raises(StoreError) as e:
        view.read("image", 2 * per_chunk, 3 * per_chunk)
    _one_line(e, "packed view of train", "array image", "chunk c/2/0 cannot be decoded")
    assert tried == [(2, 0)]


def test_a_packed_array_with_damaged_metadata_is_one_line_naming_the_split_and_array(tmp_path):
    store = _store(tmp_path / "s.zarr", 8)
    view = open_packed(store, "train", ("image", "fused"))
    (view.path / "fused" / "zarr.json").write_bytes(b"")
    view.close()
    with pytest.raises(StoreError) as e:
        SplitData(FeatureStore(store.path), "train", ("fused",))
    _one_line(e, "packed view of train", "array fused has unreadable metadata (JSONDecodeError)", "fs pack")
