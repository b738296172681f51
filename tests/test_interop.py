"""Interop: every array fs writes names its dimensions, so that xarray opens a video group and a packed view with the
store's values bit for bit; a store written before the names keeps reading and verifying."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from featurestore import store as store_mod
from featurestore.constants import DIMENSION_NAMES, OFFSET_DIM, ROW_DIM, STEP_DIM, dimension_names
from featurestore.packed import open_packed
from featurestore.store import FeatureStore, verify

SIGNALS = ["loudness", "motion", "spectrum"]
DESCRIPTORS = ["image", "audio", "fused", "r2p1d"]
INPUTS = ["frames", "mel", "clips"]
N_MELS = 5


def video_arrays(i: int, n: int) -> dict[str, np.ndarray]:
    """Every kind of array a video can hold, small, with widths that differ where the real ones may."""
    rng = np.random.default_rng(i)

    def f16(*shape):
        return rng.normal(size=(n, *shape)).astype(np.float16)

    return {"t": (np.arange(n) * 16 / 30).astype(np.float32), "loudness": rng.normal(size=n).astype(np.float32),
            "motion": f16(12), "spectrum": f16(N_MELS), "image": f16(6), "audio": f16(5), "fused": f16(4),
            "r2p1d": f16(7), "r2p1d_logits": f16(3),
            "frames": rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8), "mel": f16(N_MELS, 9),
            "clips": rng.integers(0, 256, size=(n, 4, 8, 8, 3), dtype=np.uint8)}


def write_store(path, videos: int = 6) -> FeatureStore:
    s = FeatureStore(path, mode="a")
    s.initialise("d", ["a", "b"], DESCRIPTORS, {}, inputs=INPUTS, signals=SIGNALS)
    for i in range(videos):
        n = 3 + i % 4
        s.write_video(f"v{i:02d}", video_arrays(i, n),
                      {"label": "ab"[i % 2], "split": "train" if i % 3 else "test", "n_steps": n,
                       "duration": n * 16 / 30, "has_audio": True, "segments": f"0-{i + 1}"})
    return FeatureStore(path)


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    return write_store(tmp_path / "s.zarr")


def test_every_stored_array_has_a_dimension_name_for_each_dimension():
    arrays = video_arrays(0, 3)
    assert set(DIMENSION_NAMES) == set(arrays)
    for name, data in arrays.items():
        names = dimension_names(name, data.ndim)
        assert len(names) == data.ndim and names[0] == STEP_DIM
    dims = {d for name, data in arrays.items() for d in dimension_names(name, data.ndim)} | {ROW_DIM, OFFSET_DIM}
    assert not dims & (set(arrays) | {"offsets"})            # xarray would read such an array as a coordinate
    assert dimension_names("image", 2, ROW_DIM) == ("row", "image_feature")
    assert dimension_names("other", 3) == ("step", "other_dim1", "other_dim2")      # not listed: its own names
    assert dimension_names("image", 3) == ("step", "image_dim1", "image_dim2")      # another rank: likewise


def test_a_dimension_shared_by_two_arrays_has_one_size_in_real_stores():
    from featurestore.constants import CLIP_FRAMES, CROP, MEL_FRAMES, N_MELS as REAL_MELS, ROW_WIDTHS
    from models.widths import AUDIO_DIM, DESCRIPTOR_DIM, FUSED_DIM, IMAGE_DIM

    shapes = {"motion": (ROW_WIDTHS["motion"],), "spectrum": (ROW_WIDTHS["spectrum"],), "image": (IMAGE_DIM,),
              "audio": (AUDIO_DIM,), "fused": (FUSED_DIM,), "r2p1d": (DESCRIPTOR_DIM,), "r2p1d_logits": (400,),
              "frames": (CROP, CROP, 3), "mel": (REAL_MELS, MEL_FRAMES), "clips": (CLIP_FRAMES, CROP, CROP, 3)}
    sizes: dict[str, set[int]] = {}
    for name, shape in shapes.items():
        for dim, size in zip(dimension_names(name, 1 + len(shape))[1:], shape):
            sizes.setdefault(dim, set()).add(size)
    assert {d: s for d, s in sizes.items() if len(s) > 1} == {}


def test_the_groups_written_carry_the_names(store):
    group = zarr.open_group(str(store.path / "videos" / "v00"), mode="r")
    for name in video_arrays(0, 3):
        assert group[name].metadata.dimension_names == dimension_names(name, group[name].ndim)


def _open(path) -> xr.Dataset:
    return xr.open_zarr(str(path), zarr_format=3, consolidated=False)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_xarray_opens_a_video_group_equal_to_the_store(store):
    for vid in store.video_ids():
        ds = _open(store.path / "videos" / vid)
        video = store.read_video(vid)
        assert set(ds.data_vars) == set(video.arrays)
        for name, data in video.arrays.items():
            var = ds[name]
            assert var.dims == dimension_names(name, data.ndim)
            assert _same_bits(var.values, data), (vid, name)
        assert ds.sizes[STEP_DIM] == video.n_steps
        assert ds.attrs["label"] == video.label and ds.attrs["split"] == video.split


def test_xarray_opens_a_packed_view_equal_to_the_store(store):
    names = ("t", "loudness", "spectrum", "image", "audio", "fused", "mel")
    view = open_packed(store, "train", names)
    ds = _open(view.path)
    assert ds["offsets"].dims == (OFFSET_DIM,)
    offsets = ds["offsets"].values
    assert _same_bits(offsets, view.offsets)
    assert list(ds.attrs["video_ids"]) == store.video_ids("train")
    for name in names:
        assert ds[name].dims[0] == ROW_DIM
        for i, vid in enumerate(view.video_ids):
            rows = ds[name].isel({ROW_DIM: slice(int(offsets[i]), int(offsets[i + 1]))}).values
            assert _same_bits(rows, store.read_video(vid, [name])[name]), (vid, name)


def test_a_store_written_without_dimension_names_keeps_reading_and_verifying(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "dimension_names", lambda name, ndim, first=STEP_DIM: None)
    old = write_store(tmp_path / "old.zarr")
    monkeypatch.undo()
    group = zarr.open_group(str(old.path / "videos" / "v01"), mode="r")
    assert group["image"].metadata.dimension_names is None               # written as before the names
    with pytest.raises(Exception):
        _open(old.path / "videos" / "v01")                                # what xarray did with every group
    problems, _ = verify(old)
    assert problems == []
    new = write_store(tmp_path / "new.zarr")
    for vid in old.video_ids():
        a, b = old.read_video(vid), new.read_video(vid)
        assert set(a.arrays) == set(b.arrays)
        assert all(_same_bits(a[n], b[n]) for n in a.arrays)
    view = open_packed(old, "train", ("image", "mel"))                    # the packed view of an old store: named
    assert _same_bits(view.reader("mel").video(0), old.read_video(view.video_ids[0], ["mel"])["mel"])
    assert _open(view.path)["image"].dims == (ROW_DIM, "image_feature")
