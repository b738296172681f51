"""Extraction keeps AVGN's spatial-glance inputs only when asked: ``--spatial-map`` writes each step's global feature
map e^G (``image_map``, the student image trunk's layer4) from the pass that computes the ``image`` descriptor."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from click.testing import CliRunner
from torch import nn

from cli.main import main
from featurestore.config import ExtractConfig
from featurestore.constants import MAP_DIM, MAP_SIZE
from featurestore.extract import run_extraction
from featurestore.packed import pack_state
from featurestore.store import FeatureStore, StoreError, require_spatial, verify
from featurestore.weights import load_student
from pipelines.data import load_split
from pipelines.export import default_arrays

U16 = float(np.finfo(np.float16).eps) / 2        # float16 unit roundoff, 2^-11: |fl(x) - x| <= U16 |x| (normal x)
TINY16 = float(np.finfo(np.float16).smallest_subnormal) / 2    # ... and the absolute error below the normal range
EPS32 = float(np.finfo(np.float32).eps)
STEPS = {"tone": 4, "pal": 4, "silent": 3}


def _extract(path, video_dir, client, config, videos=("tone", "pal", "silent")) -> FeatureStore:
    df = pd.DataFrame([{"video_id": v, "path": str(video_dir / f"{v}.mp4"), "label": "ab"[i % 2],
                        "split": "train" if v != "silent" else "test", "segments": ""} for i, v in enumerate(videos)])
    store = FeatureStore(path, mode="a")
    summary = run_extraction(df, store, config, client, "t", ["a", "b"], progress=False)
    assert summary.failed == 0
    return FeatureStore(path)


@pytest.fixture(scope="module")
def spatial_store(tmp_path_factory, video_dir, client) -> FeatureStore:
    config = ExtractConfig(descriptors=("image", "audio", "fused"), student_weights="random", spatial_map=True,
                           batch_size=3)       # batches of 3 rows cut across the videos' 4-step requests
    return _extract(tmp_path_factory.mktemp("spatial") / "s.zarr", video_dir, client, config)


@pytest.fixture(scope="module")
def plain_store(tmp_path_factory, video_dir, client) -> FeatureStore:
    config = ExtractConfig(descriptors=("image",), student_weights="random", keep_inputs=True)
    return _extract(tmp_path_factory.mktemp("plain") / "s.zarr", video_dir, client, config, ("tone", "silent"))


def layer4(net: nn.Module, frames: np.ndarray) -> np.ndarray:
    """The image ResNet-18's layer4 output on uint8 frames, channels last, through torchvision's own children (not
    through the code under test)."""
    image = net.image_net
    body = nn.Sequential(*list(image.trunk.children())[:-2])         # conv1 ... layer4, without avgpool and fc
    with torch.inference_mode():
        return body(image.preprocess(torch.from_numpy(frames))).permute(0, 2, 3, 1).numpy()


def descriptor_bound(net: nn.Module, image_map: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(proj(mean of the stored map over its cells), the largest difference from the stored ``image`` that float16
    rounding of both allows). Each map value is stored within U16 of its float32 value, so the mean within U16 of
    the mean of |e^G| and proj's output within U16 * |W| @ mean|e^G|; the stored descriptor is within U16 |z| of
    its own; float32 sums in another order add a few EPS32 of |W| @ mean|e^G| + |b|."""
    proj = net.image_net.proj
    w, b = proj.weight.detach().numpy().astype(np.float64), proj.bias.detach().numpy().astype(np.float64)
    m = image_map.astype(np.float64)
    got = m.mean((1, 2)) @ w.T + b
    scale = np.abs(m).mean((1, 2)) @ np.abs(w).T
    tol = ((U16 * (1 + U16) + 1024 * EPS32) * scale + 1024 * EPS32 * np.abs(b)
           + U16 / (1 - U16) * np.abs(image.astype(np.float64)) + TINY16 * (np.abs(w).sum(1) + 1))
    return got, tol


def test_spatial_map_implies_keep_inputs_and_is_recorded_as_a_kept_input(spatial_store):
    config = ExtractConfig(descriptors=("r2p1d",), spatial_map=True)
    assert config.keep_inputs and config.needs_student     # the map comes from the student's image trunk
    assert config.inputs == ("frames", "mel", "image_map")
    assert spatial_store.attrs["inputs"] == ["frames", "mel", "image_map"]
    assert spatial_store.attrs["provenance"]["arrays"]["image_map"] == "student"
    assert ExtractConfig().inputs == () and not ExtractConfig(keep_inputs=True).spatial_map


def test_image_map_has_its_shape_dtype_and_dimension_names(spatial_store):
    for vid, n in STEPS.items():
        v = spatial_store.read_video(vid)
        assert v["image_map"].shape == (n, MAP_SIZE, MAP_SIZE, MAP_DIM) == (n, 4, 4, 512)
        assert v["image_map"].dtype == np.float16
        assert np.isfinite(v["image_map"].astype(np.float32)).all() and v["image_map"].any()
        group = zarr.open_group(str(spatial_store.path / "videos" / vid), mode="r")
        assert group["image_map"].metadata.dimension_names == ("step", "map_y", "map_x", "map_feature")


def test_image_map_is_layer4_of_the_stored_frame(spatial_store):
    net, _ = load_student("random", seed=0)       # the extraction's weights (random, seed 0)
    net.eval()
    for vid in STEPS:
        v = spatial_store.read_video(vid)
        want = layer4(net, v["frames"])
        stored = v["image_map"].astype(np.float32)
        np.testing.assert_array_less(np.abs(stored - want), U16 * np.abs(want) * 1.01 + TINY16 + 1e-5 * np.abs(
            want).max())
        assert not np.allclose(stored[:-1], want[1:], rtol=1e-2)    # a step's map, not its neighbour's


def test_mean_of_the_map_through_proj_is_the_stored_image_descriptor(spatial_store):
    net, _ = load_student("random", seed=0)
    for vid in STEPS:
        v = spatial_store.read_video(vid)
        got, tol = descriptor_bound(net, v["image_map"], v["image"])
        err = np.abs(got - v["image"].astype(np.float64))
        assert (err <= tol).all(), (vid, float((err - tol).max()))
    tone = spatial_store.read_video("tone")            # the bound is tight enough to tell the steps apart
    got, tol = descriptor_bound(net, tone["image_map"][::-1], tone["image"])
    assert (np.abs(got - tone["image"].astype(np.float64)) > tol).any()


def test_a_store_without_the_flag_has_no_map_and_is_refused_with_the_command_to_run(plain_store, spatial_store):
    assert "image_map" not in plain_store.read_video("tone").arrays
    assert plain_store.attrs["inputs"] == ["frames", "mel"]
    with pytest.raises(StoreError, match="no image_map arrays .*fs extract --keep-inputs --spatial-map"):
        require_spatial(plain_store)
    with pytest.raises(StoreError, match="fs extract --keep-inputs --spatial-map"):    # what a trainer asks
        load_split(plain_store, "train", ("image", "image_map"))
    require_spatial(spatial_store)


def test_a_store_with_the_map_verifies_and_a_video_missing_it_does_not(spatial_store, tmp_path):
    problems, _ = verify(spatial_store)
    assert problems == []
    path = tmp_path / "s.zarr"
    shutil.copytree(spatial_store.path, path)
    shutil.rmtree(path / "videos" / "tone" / "image_map")
    problems, _ = verify(FeatureStore(path))
    assert any("tone" in p and "image_map" in p for p in problems), problems


def test_image_map_is_read_from_the_groups_never_packed_nor_exported_by_default(spatial_store, tmp_path):
    path = tmp_path / "s.zarr"
    shutil.copytree(spatial_store.path, path)
    store = FeatureStore(path, mode="a")
    split = load_split(store, "train", ("image", "image_map"))
    state, packed = pack_state(store, "train")
    assert state == "current" and "image" in packed and "image_map" not in packed
    for i, vid in enumerate(split.video_ids):
        assert np.array_equal(split.videos[i]["image_map"], store.read_video(vid)["image_map"])
    assert "image_map" not in default_arrays(store) and "image" in default_arrays(store)


def test_fs_info_lists_the_map_among_the_kept_inputs(spatial_store):
    info = json.loads(CliRunner().invoke(main, ["info", str(spatial_store.path), "--json"]).output)
    assert info["inputs"] == ["frames", "mel", "image_map"]


def test_refresh_recomputes_the_map_with_the_new_student(spatial_store, tmp_path):
    path = tmp_path / "s.zarr"
    shutil.copytree(spatial_store.path, path)
    new, _ = load_student("random", seed=7)
    torch.save({"state_dict": new.state_dict()}, tmp_path / "student.pt")
    res = CliRunner().invoke(main, ["refresh", "--store", str(path), "--student", str(tmp_path / "student.pt")])
    assert res.exit_code == 0, res.output
    store = FeatureStore(path)
    new.eval()
    for vid in STEPS:
        old, now = spatial_store.read_video(vid), store.read_video(vid)
        assert np.array_equal(now["frames"], old["frames"])
        assert not np.array_equal(now["image_map"], old["image_map"])
        want = layer4(new, now["frames"])
        np.testing.assert_array_less(np.abs(now["image_map"].astype(np.float32) - want),
                                     U16 * np.abs(want) * 1.01 + TINY16 + 1e-5 * np.abs(want).max())
        got, tol = descriptor_bound(new, now["image_map"], now["image"])
        assert (np.abs(got - now["image"].astype(np.float64)) <= tol).all(), vid
    assert verify(store)[0] == []


def test_the_extract_command_takes_the_flag(tmp_path, video_dir, manifest_of):
    m = manifest_of({"silent": (video_dir / "silent.mp4", "a", "train")})
    store = str(tmp_path / "s.zarr")
    res = CliRunner().invoke(main, ["extract", "--manifest", str(m), "--store", store, "--descriptors", "image",
                                    "--weights", "random", "--spatial-map"])
    assert res.exit_code == 0, res.output
    assert "inputs kept: frames, mel, image_map" in res.output       # --spatial-map implies --keep-inputs
    assert FeatureStore(store).read_video("silent")["image_map"].shape == (3, 4, 4, 512)


def test_the_map_costs_no_flops_beyond_the_image_descriptor():
    from models.imgaud import ImageNet
    from models.selection import counted_gflops

    torch.manual_seed(0)
    net = ImageNet().eval()
    frames = torch.randint(0, 256, (2, 112, 112, 3), dtype=torch.uint8)
    alone = counted_gflops(net, frames)
    both = counted_gflops(net.global_map, frames)
    assert alone > 1.0 and both == alone         # ResNet-18 on two 112x112 frames: ~1.2 GFLOPs, map included
    e_g, z_i = net.global_map(frames)
    with torch.inference_mode():
        assert torch.equal(z_i, net(frames)) and e_g.shape == (2, 4, 4, 512)
