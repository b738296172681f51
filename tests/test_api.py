"""The public Python surface (package ``fs``): listing, reading, the Dataset and its collate function, evaluate."""
import numpy as np
import pytest
import torch

import fs
from featurestore.store import StoreError
from models.baselines import HeadSelector
from pipelines.bench import evaluate_methods
from tests.test_bench import fabricate_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return fabricate_store(tmp_path_factory.mktemp("api") / "s.zarr", n_videos=12)


def test_open_store_refuses_a_missing_store_and_reads_fs_store(tmp_path, monkeypatch, store):
    with pytest.raises(StoreError, match="no feature store"):
        fs.open_store(tmp_path / "none.zarr")
    monkeypatch.setenv("FS_STORE", str(store.path))
    assert fs.open_store().path == store.path


def test_splits_and_videos_list_every_complete_video(store):
    # fabricate_store: video v goes to test when v % 4 == 0, labels cycle a, b, c
    assert fs.splits(store) == {"test": 3, "train": 9}
    test = fs.videos(store, "test")
    assert test["video_id"].tolist() == ["v000", "v004", "v008"]
    assert test["label"].tolist() == ["a", "b", "c"]
    assert list(test.columns[:7]) == ["video_id", "label", "split", "n_steps", "duration", "has_audio", "segments"]
    assert len(fs.videos(store)) == 12 and fs.videos(store, "nope").empty


def test_videos_parses_segments(tmp_path):
    s = fs.FeatureStore(tmp_path / "seg.zarr", mode="a")
    s.initialise("seg", ["a"], ["image"], {"models": {}})
    s.write_video("x", {"t": np.zeros(3, np.float32), "image": np.zeros((3, 4), np.float16)},
                  {"label": "a", "split": "test", "n_steps": 3, "duration": 1.6, "has_audio": True,
                   "segments": "0.5-1.25;2-3"})
    assert fs.videos(s)["segments"].tolist() == [[(0.5, 1.25), (2.0, 3.0)]]


def test_read_video_returns_the_stored_arrays(store):
    v = fs.read_video(store, "v004", ["audio", "t"])
    assert sorted(v.arrays) == ["audio", "t"] and v.label == "b" and v.split == "test"
    assert v["audio"].dtype == np.float16 and v["audio"].shape == (v.n_steps, 256)
    with pytest.raises(StoreError, match="not a complete video"):
        fs.read_video(store, "nope")


def test_dataset_items_equal_the_store_bit_for_bit(store):
    ds = fs.VideoDataset(store, "train", ("image", "loudness"))
    assert len(ds) == 9 and ds.classes == ["a", "b", "c"]
    for i in range(len(ds)):
        item = ds[i]
        v = store.read_video(item["video_id"], ["image", "loudness"])
        assert item["image"].dtype == torch.float32
        assert torch.equal(item["image"], torch.from_numpy(v["image"].astype(np.float32)))
        assert torch.equal(item["loudness"], torch.from_numpy(v["loudness"]))
        assert item["label"] == ds.classes.index(v.label) and item["n_steps"] == v.n_steps
    assert ds[-1]["video_id"] == ds.video_ids[-1]
    with pytest.raises(IndexError):
        ds[9]


def test_dataset_refuses_what_the_store_lacks_and_clashing_names(store):
    with pytest.raises(StoreError, match="r2p1d"):
        fs.VideoDataset(store, "train", ("r2p1d",))
    with pytest.raises(ValueError, match="mask"):
        fs.VideoDataset(store, "train", ("image", "mask"))
    with pytest.raises(StoreError, match="no complete val videos"):
        fs.VideoDataset(store, "val", ("image",))


def test_collate_pads_with_zeros_and_masks_real_steps():
    a = {"x": torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), "label": 2, "video_id": "a", "n_steps": 3}
    b = {"x": torch.tensor([[7.0, 8.0]]), "label": 0, "video_id": "b", "n_steps": 1}
    out = fs.collate_videos([a, b])
    assert torch.equal(out["x"], torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                                               [[7.0, 8.0], [0.0, 0.0], [0.0, 0.0]]]))
    assert out["mask"].tolist() == [[True, True, True], [True, False, False]]
    assert out["label"].tolist() == [2, 0] and out["n_steps"].tolist() == [3, 1]
    assert out["video_id"] == ["a", "b"]
    with pytest.raises(ValueError):
        fs.collate_videos([])


def test_a_dataloader_batch_matches_the_items(store):
    ds = fs.VideoDataset(store, "train", ("audio",))
    sampler = fs.WindowSampler(ds, seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=fs.collate_videos)
    seen = []
    for batch in loader:
        for j, vid in enumerate(batch["video_id"]):
            item = ds[ds.video_ids.index(vid)]
            n = item["n_steps"]
            assert torch.equal(batch["audio"][j, :n], item["audio"])
            assert not batch["audio"][j, n:].any() and int(batch["mask"][j].sum()) == n
            seen.append(vid)
    assert sorted(seen) == sorted(ds.video_ids)


def test_window_sampler_is_a_new_permutation_each_epoch_and_seeded(store):
    ds = fs.VideoDataset(store, "train", ("audio",))
    s = fs.WindowSampler(ds, seed=5)
    first, second = list(s), list(s)
    assert sorted(first) == sorted(second) == list(range(len(ds)))
    assert first != second
    assert list(fs.WindowSampler(ds, seed=5)) == first


def test_window_sampler_keeps_within_the_read_cache_of_a_small_budget(store):
    row = 2 * 256                                   # audio float16 rows
    ds = fs.VideoDataset(store, "train", ("audio",), budget=45 * row)
    assert not ds.data.fits()                       # 9 videos of 12-40 steps overflow a 45-row cache
    window = ds.data.window_rows
    starts = ds.data.packed.offsets[:-1]
    order = list(fs.WindowSampler(ds, seed=1))
    assert sorted(order) == list(range(len(ds)))
    windows = ds.data.windows(torch.Generator().manual_seed(1))     # the sampler's first epoch: seed + 0
    assert len(windows) > 1 and [i for w in windows for i in w.tolist()] == order
    for w in windows:                               # the order walks window by window, each within the cache
        ids = sorted(w.tolist())
        assert starts[ids[-1]] - starts[ids[0]] < window, (ids, window)


class FirstSteps:
    """A user selector written outside fs, with only ``select``: FRONT's choice, one video at a time."""

    def __init__(self, head, costs):
        self.name, self.inner = "FIRST-3", HeadSelector("inner", head, costs, rule="front")

    def select(self, video):
        return self.inner.select(video)


def test_evaluate_returns_the_bench_rows_and_runs_a_user_selector(store, tmp_path):
    table = fs.evaluate(store, ["UNIFORM", "FRONT"], runs=tmp_path)
    assert table["method"].tolist() == ["UNIFORM", "FRONT"]
    assert table["role"].tolist() == ["baseline", "baseline"]
    assert {"top1", "top1_lo", "top1_hi", "train_top1", "mAP", "gflops_per_video", "segment_hit"} <= set(table)
    ctx = fs.BenchContext(store, tmp_path)
    mine = FirstSteps(ctx.head("fused"), ctx.costs)
    both = fs.evaluate(store, "FRONT", selectors=[mine], runs=tmp_path, intervals=False)
    assert both["method"].tolist() == ["FRONT", "FIRST-3"] and both["role"].tolist() == ["baseline", "plugin"]
    # the same choice through the user's select() loop as through FRONT's batched path: the same row
    for col in ("top1", "train_top1", "mAP", "gflops_per_video", "steps_per_video"):
        assert both[col][1] == pytest.approx(both[col][0], rel=1e-6), col


def test_evaluate_refuses_non_selectors_and_nothing_to_do(store, tmp_path):
    with pytest.raises(TypeError, match="not a selector"):
        fs.evaluate(store, (), selectors=[object()], runs=tmp_path)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_methods(store, (), (), tmp_path)
    with pytest.raises(ValueError, match="unknown method"):
        fs.evaluate(store, ["NOPE"], runs=tmp_path)


def test_worker_processes_read_the_same_batches(store):
    ds = fs.VideoDataset(store, "test", ("fused",))
    plain = list(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=fs.collate_videos))
    forked = list(torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=fs.collate_videos))
    assert [b["video_id"] for b in plain] == [b["video_id"] for b in forked]
    assert all(torch.equal(a["fused"], b["fused"]) and torch.equal(a["mask"], b["mask"])
               for a, b in zip(plain, forked))
