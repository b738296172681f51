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
INPUTS = ["frames", "mel", "image_map", "clips"]
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
            "image_map": f16(2, 2, 10),
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
    from featurestore.constants import (CLIP_FRAMES, CROP, MAP_DIM, MAP_SIZE, MEL_FRAMES, N_MELS as REAL_MELS,
                                        ROW_WIDTHS)
    from models.widths import AUDIO_DIM, DESCRIPTOR_DIM, FUSED_DIM, IMAGE_DIM

    shapes = {"motion": (ROW_WIDTHS["motion"],), "spectrum": (ROW_WIDTHS["spectrum"],), "image": (IMAGE_DIM,),
              "audio": (AUDIO_DIM,), "fused": (FUSED_DIM,), "r2p1d": (DESCRIPTOR_DIM,), "r2p1d_logits": (400,),
              "frames": (CROP, CROP, 3), "mel": (REAL_MELS, MEL_FRAMES), "clips": (CLIP_FRAMES, CROP, CROP, 3),
              "image_map": (MAP_SIZE, MAP_SIZE, MAP_DIM)}
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


# --- fs export -------------------------------------------------------------------------------------------------------
EXPORTED = ("t", "loudness", "motion", "spectrum", "image", "fused", "r2p1d_logits", "frames", "mel")


@pytest.fixture
def export_store(tmp_path) -> FeatureStore:
    """The interop store plus a train video whose id holds a dot and a space (webdataset keys stop at a dot)."""
    s = write_store(tmp_path / "x.zarr", videos=9)
    writer = FeatureStore(s.path, mode="a")
    writer.write_video("clip.part 1", video_arrays(99, 2), {"label": "a", "split": "train", "n_steps": 2,
                                                            "duration": 1.1, "has_audio": False, "fps": 30})
    return FeatureStore(s.path)


def _expected(store: FeatureStore, split: str, names=EXPORTED) -> dict[str, dict[str, np.ndarray]]:
    return {vid: store.read_video(vid, names).arrays for vid in store.video_ids(split)}


def test_npy_export_reads_back_with_numpy_equal_to_the_store(export_store, tmp_path):
    import pandas as pd

    from pipelines.export import METADATA_COLUMNS, export_split

    done = export_split(export_store, "train", "npy", tmp_path / "npy", EXPORTED)
    want = _expected(export_store, "train")
    assert done.videos == len(want) == 7
    for vid, arrays in want.items():
        for name, data in arrays.items():
            assert _same_bits(np.load(tmp_path / "npy" / name / f"{vid}.npy"), data), (vid, name)
    assert sorted(p.name for p in (tmp_path / "npy").iterdir()) == sorted([*EXPORTED, "metadata.csv", "export.json"])
    meta = pd.read_csv(tmp_path / "npy" / "metadata.csv", keep_default_na=False, dtype={"video_id": str})
    assert list(meta.columns) == list(METADATA_COLUMNS)
    assert meta["video_id"].tolist() == list(want)
    for row in meta.itertuples():
        attrs = export_store.video_attrs(row.video_id)
        assert (row.label, row.split, row.n_steps, row.segments) == (attrs["label"], "train", attrs["n_steps"],
                                                                     attrs.get("segments", ""))
    assert meta.set_index("video_id").loc["v01", "segments"] == "0-2"


def _parquet_rows(column, i: int, n: int, shape: tuple[int, ...]) -> np.ndarray:
    values = column[i].values                       # the video's rows
    while hasattr(values, "flatten"):
        values = values.flatten()                   # through the fixed-size lists of each row dimension
    return values.to_numpy(zero_copy_only=False).reshape((n, *shape))


def test_parquet_export_reads_back_with_pyarrow_equal_to_the_store_in_row_groups(export_store, tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.export import export_split

    export_split(export_store, "train", "parquet", tmp_path / "pq", EXPORTED, row_group_bytes=2000)
    path = tmp_path / "pq" / "train.parquet"
    assert pq.ParquetFile(path).metadata.num_row_groups > 1                 # bounded memory: written a group at a time
    table = pq.read_table(path)
    assert table.schema.field("image").type == pa.list_(pa.list_(pa.float16(), 6))
    assert table.schema.field("mel").type == pa.list_(pa.list_(pa.list_(pa.float16(), 9), N_MELS))
    assert table.schema.field("t").type == pa.list_(pa.float32())
    assert json.loads(table.schema.metadata[b"fs"])["dimension_names"]["image"] == ["step", "image_feature"]
    want = _expected(export_store, "train")
    assert table.column("video_id").to_pylist() == list(want)
    for i, (vid, arrays) in enumerate(want.items()):
        n = table.column("n_steps")[i].as_py()
        assert table.column("label")[i].as_py() == export_store.video_attrs(vid)["label"]
        for name, data in arrays.items():
            col = table.column(name).combine_chunks()
            assert _same_bits(_parquet_rows(col, i, n, data.shape[1:]), data), (vid, name)


def test_webdataset_export_reads_back_with_webdataset_equal_to_the_store(export_store, tmp_path):
    import json
    from urllib.parse import unquote

    import webdataset as wds

    from pipelines.export import export_split

    names = ("t", "image", "mel", "frames")
    export_split(export_store, "train", "webdataset", tmp_path / "wds", names, shard_videos=3)
    shards = sorted(str(p) for p in (tmp_path / "wds").glob("train-*.tar"))
    assert [p.rsplit("/", 1)[1] for p in shards] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    want = _expected(export_store, "train", names)
    seen = []
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False).decode():
        meta = sample["json"]
        vid = meta["video_id"]
        assert unquote(sample["__key__"]) == vid
        assert meta["n_steps"] == export_store.video_attrs(vid)["n_steps"] and meta["split"] == "train"
        for name in names:
            assert _same_bits(sample[f"{name}.npy"], want[vid][name]), (vid, name)
        seen.append(vid)
    assert seen == list(want) and "clip.part 1" in seen
    assert json.loads((tmp_path / "wds" / "export.json").read_text())["dimension_names"]["mel"] == \
        ["step", "mel_band", "mel_frame"]


def test_the_default_arrays_leave_out_the_kept_inputs(export_store, tmp_path):
    from pipelines.export import export_split

    done = export_split(export_store, "test", "npy", tmp_path / "d")
    assert done.arrays == ("t", "loudness", "motion", "spectrum", "image", "audio", "fused", "r2p1d", "r2p1d_logits")


@pytest.mark.parametrize("ask, message", [
    (dict(split="val"), "no complete 'val' videos (its splits: test, train)"),
    (dict(arrays=("image", "nope")), "has no nope array"),
    (dict(fmt="hdf5"), "unknown export format 'hdf5'"),
])
def test_an_export_the_store_cannot_give_is_refused(export_store, tmp_path, ask, message):
    from pipelines.export import ExportError, export_split

    kw = {"split": "train", "fmt": "npy", "arrays": ("image",), **ask}
    with pytest.raises(ExportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        export_split(export_store, kw["split"], kw["fmt"], tmp_path / "o", kw["arrays"])
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


def test_an_array_the_store_does_not_hold_is_refused(tmp_path):
    from pipelines.export import ExportError, export_split

    s = FeatureStore(tmp_path / "small.zarr", mode="a")
    s.initialise("d", ["a"], ["image"], {})
    s.write_video("v", {"t": np.zeros(2, np.float32), "image": np.ones((2, 3), np.float16)},
                  {"label": "a", "split": "train", "n_steps": 2, "duration": 1.0, "has_audio": True})
    with pytest.raises(ExportError, match="has no frames, r2p1d arrays .its videos hold t, image."):
        export_split(FeatureStore(s.path), "train", "npy", tmp_path / "o", ("frames", "image", "r2p1d"))


def test_a_non_empty_out_folder_is_replaced_only_when_it_is_an_earlier_export_and_overwrite_is_asked(
        export_store, tmp_path):
    from pipelines.export import ExportError, export_split

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_split(export_store, "test", "npy", mine, ("image",))
    with pytest.raises(ExportError, match="is not an fs export"):
        export_split(export_store, "test", "npy", mine, ("image",), overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "out"
    out.mkdir()                                                       # an empty folder is fine
    export_split(export_store, "test", "npy", out, ("image",))
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_split(export_store, "test", "parquet", out, ("image",))
    export_split(export_store, "test", "parquet", out, ("image",), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "test.parquet"]      # the npy export is gone


def test_a_failed_export_leaves_nothing_behind(export_store, tmp_path, monkeypatch):
    from pipelines import export as export_mod

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(export_mod, "_npy_bytes", broken)
    with pytest.raises(OSError):
        export_mod.export_split(export_store, "train", "webdataset", tmp_path / "w", ("image",))
    assert list(tmp_path.glob("*w*")) == [] and list(tmp_path.glob(".w*")) == []


def test_fs_export_cli(export_store, tmp_path):
    from click.testing import CliRunner

    from cli.main import main

    runner = CliRunner()
    res = runner.invoke(main, ["export", "test", "--format", "npy", "--arrays", "image,fused", "--out",
                               str(tmp_path / "e"), "--store", str(export_store.path)])
    assert res.exit_code == 0, res.output
    assert "exported 3 test videos (image, fused) as npy" in res.output
    assert _same_bits(np.load(tmp_path / "e" / "fused" / "v00.npy"), export_store.read_video("v00")["fused"])
    res = runner.invoke(main, ["export", "test", "--format", "npy", "--out", str(tmp_path / "e"), "--store",
                               str(export_store.path)])
    assert res.exit_code == 1 and "exists and is not empty" in res.output
    res = runner.invoke(main, ["export", "train", "--format", "csv", "--out", str(tmp_path / "f"), "--store",
                               str(export_store.path)])
    assert res.exit_code == 2 and "'csv' is not one of 'npy', 'parquet', 'webdataset'" in res.output
    res = runner.invoke(main, ["export", "train", "--format", "npy", "--arrays", "mel,nope", "--out",
                               str(tmp_path / "f"), "--store", str(export_store.path)])
    assert res.exit_code == 1 and "has no nope array" in res.output and not (tmp_path / "f").exists()
