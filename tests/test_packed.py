"""Packed training views: equal to the groups, rebuilt when the store changes, read with bounded memory."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from featurestore import packed as packed_mod
from featurestore.packed import open_packed, pack_state
from featurestore.store import FeatureStore
from pipelines.data import SplitData, load_split, resolve_device, step_batches


def _write(store: FeatureStore, i: int, n: int, split: str = "train") -> None:
    rng = np.random.default_rng(i)
    store.write_video(f"v{i:03d}", {"t": np.arange(n, dtype=np.float32) + i,
                                    "image": rng.normal(size=(n, 6)).astype(np.float16),
                                    "fused": rng.normal(size=(n, 4)).astype(np.float16)},
                      {"label": "ab"[i % 2], "split": split, "n_steps": n, "duration": n * 16 / 30,
                       "has_audio": True})


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(packed_mod, "CHUNK_BYTES", 64)      # chunks of a few rows: many blocks on a tiny store
    s = FeatureStore(tmp_path / "s.zarr", mode="a")
    s.initialise("d", ["a", "b"], ["image", "fused"], {})
    for i in range(30):
        _write(s, i, 5 + (7 * i) % 13)
    return FeatureStore(s.path)


def test_packed_rows_equal_every_videos_arrays(store):
    view = open_packed(store, "train", ("t", "image", "fused"))
    assert view.video_ids == store.video_ids("train")
    for name in ("t", "image", "fused"):
        reader = view.reader(name)
        for i, vid in enumerate(view.video_ids):
            np.testing.assert_array_equal(reader.video(i), store.read_video(vid, [name])[name])
    assert view.array("fused").dtype == np.float16


def test_the_view_is_rebuilt_after_the_store_changes_and_extended_for_new_arrays(store):
    open_packed(store, "train", ("fused",))
    assert pack_state(store, "train") == ("current", ["fused"])
    open_packed(store, "train", ("image",))
    assert pack_state(store, "train") == ("current", ["fused", "image"])
    writer = FeatureStore(store.path, mode="a")
    _write(writer, 99, 9)
    assert pack_state(FeatureStore(store.path), "train")[0] == "stale"
    view = open_packed(FeatureStore(store.path), "train", ("fused",))
    assert view.video_ids[-1] == "v099" and view.names == ["fused", "image"]
    np.testing.assert_array_equal(view.reader("image").video(len(view) - 1), writer.read_video("v099")["image"])


def test_a_streamed_split_reads_each_block_about_once_an_epoch_with_a_bounded_cache(store):
    budget = 40 * (6 + 4) * 2                                        # about 40 rows of image + fused
    data = SplitData(store, "train", ("image", "fused"), budget=budget)
    assert not data.fits()
    order = data.order(torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(len(data)))
    assert order.tolist() != sorted(order.tolist())
    image = data.tensors("image")
    reader = data.sources["image"]
    for j in order.tolist():
        np.testing.assert_array_equal(image[j].numpy(), store.read_video(data.video_ids[j])["image"].astype(np.float32))
    blocks = -(-int(data.n_steps.sum()) // reader.block_rows)
    windows = len(np.unique((data.packed.offsets[:-1]) // data.window_rows)) + 1
    assert reader.blocks_read <= blocks + 2 * windows                 # not once per video
    assert data.cache_bytes() <= 4 * budget


def test_a_split_within_the_budget_is_shuffled_as_a_whole(store):
    data = load_split(store, "train", ("fused",))
    assert data.fits()
    gen = torch.Generator().manual_seed(3)
    assert data.order(gen).tolist() == torch.randperm(len(data), generator=torch.Generator().manual_seed(3)).tolist()


def _step_rows(data, store, batch_size: int, seed: int):
    """(rows served, their labels, every step of the split, its labels), rows sorted so that they compare as sets
    (features are continuous random values: a row is its own key)."""
    rows, labels = [], []
    for x, y in step_batches(data, "fused", batch_size)(torch.Generator().manual_seed(seed)):
        assert len(x) == len(y) <= batch_size
        rows.append(x.numpy())
        labels.append(y.numpy())
    got, got_y = np.concatenate(rows), np.concatenate(labels)
    want = np.concatenate([store.read_video(v)["fused"].astype(np.float32) for v in data.video_ids])
    want_y = np.repeat(np.asarray(data.labels), np.asarray(data.n_steps))
    g, w = np.lexsort(got.T[::-1]), np.lexsort(want.T[::-1])
    return got[g], got_y[g], want[w], want_y[w], len(rows)


def test_streamed_step_batches_cover_every_step_once(store):
    data = SplitData(store, "train", ("fused",), budget=30 * 4 * 2)
    assert not data.fits()
    # batches as large as a pool: no single-row remainder to drop, so every step comes exactly once
    got, got_y, want, want_y, _ = _step_rows(data, store, 4 * data.window_rows, seed=1)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_y, want_y)
    # small batches: each row served is a distinct step of the split with its own video's label; only single-row
    # remainders (at most one a batch) are dropped
    got, got_y, want, want_y, batches = _step_rows(data, store, 7, seed=1)
    assert len(np.unique(got, axis=0)) == len(got)
    pos = np.array([np.flatnonzero((want == r).all(1))[0] for r in got])
    np.testing.assert_array_equal(got_y, want_y[pos])
    assert len(want) - batches <= len(got) < len(want) + 1


def test_device_auto_takes_a_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ValueError, match="sees no GPU"):
        resolve_device("cuda")


def test_a_resident_split_holds_float16_rows_and_serves_the_same_tensors(store):
    streamed = SplitData(store, "train", ("t", "image"), budget=40 * 10 * 2)
    resident = SplitData(store, "train", ("t", "image"), device="cpu", resident=True)
    assert resident.sources["image"].data.dtype == torch.float16 and resident.sources["t"].data.dtype == torch.float32
    assert resident.sources["image"].data.shape == (int(streamed.n_steps.sum()), 6)
    for j in range(len(streamed)):
        assert torch.equal(resident.tensors("image")[j], streamed.tensors("image")[j])
        assert torch.equal(resident.tensors("t")[j], streamed.tensors("t")[j])
    assert resident.fits()


@pytest.mark.parametrize("resident", [False, True])
def test_a_padded_batch_equals_the_videos_padded_one_by_one(store, resident):
    from pipelines.data import pad

    data = SplitData(store, "train", ("image",), resident=resident, budget=40 * 6 * 2)
    idx = [4, 0, 7, 2]
    got, mask = data.padded("image", idx)
    want, want_mask = pad([data.tensors("image")[j] for j in idx])
    assert got.dtype == torch.float32 and torch.equal(got, want) and torch.equal(mask, want_mask)


def test_a_stale_view_of_a_read_only_store_is_a_clear_error(store, monkeypatch):
    from featurestore.store import StoreError

    monkeypatch.setattr(packed_mod.os, "access", lambda path, mode: False)
    with pytest.raises(StoreError, match="read-only here: run fs pack"):
        open_packed(store, "train", ("fused",))


def test_fs_pack_draws_one_progress_bar_a_split(store, monkeypatch):
    import tqdm as tqdm_mod
    from click.testing import CliRunner

    from cli.main import main

    for i in range(30, 36):
        _write(FeatureStore(store.path, mode="a"), i, 6, split="test")
    made = []

    class Counted(tqdm_mod.tqdm):
        def __init__(self, *args, **kwargs):
            made.append(kwargs.get("desc"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr("featurestore.progress.tqdm", Counted)       # every bar is made by fs's one progress style
    res = CliRunner().invoke(main, ["pack", str(store.path), "--arrays", "image,fused"])
    assert res.exit_code == 0, res.output
    assert made == ["pack train", "pack test"]
