"""fs train-avgn --spatial from the store alone, and the bench's AVGN-SPATIAL rows (Table 6's variants, f_L alone,
early exit) read from its checkpoints."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import main
from featurestore.constants import MAP_DIM, MAP_SIZE
from featurestore.store import FeatureStore, StoreError
from models.avgn_spatial import AVGNSpatialSelector
from pipelines.methods import AVGN_EXITS, AVGN_SPATIAL_GRID, BenchContext, build_rows
from pipelines.train_avgn import SPATIAL_CHECKPOINTS, load_avgn_spatial, train_avgn_spatial
from tests.test_bench import CLASSES, fabricate_store

FRAME = 32          # small frames keep the test fast; the patch P = 16 is smaller than them


def spatial_store(path, n_videos=12):
    """The fabricated store of test_bench plus each step's frame (FRAME x FRAME RGB, the class's colour in one
    corner at the salient steps' neighbourhood, noise elsewhere) and a random global map, with the root attributes
    of a store extracted with --spatial-map."""
    base = fabricate_store(path, n_videos=n_videos)
    store = FeatureStore(path, mode="a")
    store.root.attrs["inputs"] = ["frames", "mel", "image_map"]
    rng = np.random.default_rng(5)
    for vid in base.video_ids():
        v = store.read_video(vid)
        n = v.n_steps
        frames = rng.integers(0, 60, (n, FRAME, FRAME, 3), dtype=np.uint8)
        frames[:, :8, :8, CLASSES.index(v.label)] = 250
        maps = rng.normal(0, 1, (n, MAP_SIZE, MAP_SIZE, MAP_DIM)).astype(np.float16)
        mel = np.zeros((n, 40, 101), np.float16)
        store.replace_video(vid, {**v.arrays, "frames": frames, "mel": mel, "image_map": maps}, v.attrs)
    return FeatureStore(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return spatial_store(tmp_path_factory.mktemp("sp") / "s.zarr")


TINY = dict(layers=1, heads=2, dim=16, t=8, k=4, epochs=1, batch_size=4, sized=False, device="cpu", patch=16)


def test_a_store_without_the_spatial_inputs_is_refused_with_the_command(tmp_path):
    plain = fabricate_store(tmp_path / "plain.zarr", n_videos=8)
    with pytest.raises(StoreError, match="--spatial-map"):
        train_avgn_spatial(plain, tmp_path, "aespa", **TINY)
    res = CliRunner().invoke(main, ["train-avgn", "--store", str(plain.path), "--runs", str(tmp_path),
                                    "--spatial", "pi", "--epochs", "1"])
    assert res.exit_code == 1 and "--spatial-map" in res.output


@pytest.mark.parametrize("spatial", list(SPATIAL_CHECKPOINTS))
def test_each_variant_trains_and_saves_its_checkpoint(store, tmp_path, spatial):
    trained = train_avgn_spatial(store, tmp_path, spatial, **TINY)
    assert trained.path.name == f"{SPATIAL_CHECKPOINTS[spatial]}.pt" and len(trained.history) == 1
    model, cfg = load_avgn_spatial(store, tmp_path, SPATIAL_CHECKPOINTS[spatial])
    assert (model.spatial, cfg["patch"], cfg["t"]) == (spatial, 16, 8)
    assert cfg["random_patches"] == (spatial in ("aespa", "pi"))
    for a, b in zip(model.state_dict().values(), trained.model.state_dict().values()):
        assert torch.equal(a, b)


def test_the_bench_reads_every_variant_at_its_grid_with_f_l_alone_and_the_exits(store, tmp_path):
    for spatial in SPATIAL_CHECKPOINTS:
        train_avgn_spatial(store, tmp_path, spatial, **TINY)
    rows = build_rows(BenchContext(store, tmp_path), ("AVGN-SPATIAL",))
    names = [sel.name for _, sel in rows]
    expected = sum(len(g) for g in AVGN_SPATIAL_GRID.values()) + 1 + len(AVGN_EXITS)
    assert len(names) == expected == len(set(names))
    assert "AVGN spatial AESPA + pi (k=10, T_G=all)" in names and "AVGN spatial centre patch (k=4, T_G=all)" in names
    assert "AVGN spatial f_L alone (k=10, T_G=all)" in names
    assert all(isinstance(sel, AVGNSpatialSelector) for _, sel in rows)
    exits = [sel for _, sel in rows if sel.exit_threshold is not None]
    assert [(s.exit_threshold, s.k, s.t_g) for s in exits] == [(tau, 10, 2) for tau in AVGN_EXITS]
    video = store.read_video(store.video_ids("test")[0])
    sel = next(s for _, s in rows if s.name == "AVGN spatial centre patch (k=4, T_G=all)")
    out = sel.select(video)
    assert out.details["patches"]["centres"].tolist() == [[0.5, 0.5]] * len(out.steps)
    assert out.details["patches"]["size"] == 16 / FRAME


def test_a_store_without_spatial_inputs_skips_the_rows_and_says_why(tmp_path):
    plain = fabricate_store(tmp_path / "plain.zarr", n_videos=8)
    said = []
    assert build_rows(BenchContext(plain, tmp_path, say=said.append), ("AVGN-SPATIAL",)) == []
    assert "--spatial-map" in said[0]


def test_fs_bench_adds_the_spatial_rows(store, tmp_path):
    train_avgn_spatial(store, tmp_path, "centre", **TINY)
    res = CliRunner().invoke(main, ["bench", "--store", str(store.path), "--runs", str(tmp_path), "--methods",
                                    "UNIFORM,AVGN-SPATIAL", "--no-sweep", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    import pandas as pd
    table = pd.read_csv(tmp_path / "b" / "bench.csv")
    assert table["method"].tolist() == ["UNIFORM", "AVGN spatial centre patch (k=4, T_G=all)",
                                        "AVGN spatial centre patch (k=10, T_G=all)"]
    assert (table["role"][1:] == "learned").all()


def test_patch_needs_spatial_on_the_command_line(store, tmp_path):
    res = CliRunner().invoke(main, ["train-avgn", "--store", str(store.path), "--runs", str(tmp_path),
                                    "--patch", "16"])
    assert res.exit_code == 1 and "--spatial" in res.output


def test_fs_show_draws_the_aespa_row_by_default_on_a_spatial_store(store, tmp_path):
    from pipelines.show import show_selectors
    train_avgn_spatial(store, tmp_path, "aespa", **TINY)
    names = [s.name for s in show_selectors(BenchContext(store, tmp_path))]
    assert "AVGN spatial AESPA + pi (k=10, T_G=all)" in names
    said = []
    plain = [s.name for s in show_selectors(BenchContext(store, tmp_path / "empty", say=said.append))]
    assert not any(n.startswith("AVGN spatial") for n in plain) and any("avgn-spatial" in m for m in said)


def test_fs_show_runs_the_spatial_glance_on_the_stored_inputs(store, tmp_path):
    train_avgn_spatial(store, tmp_path, "aespa", **TINY)
    vid = store.video_ids("test")[0]
    res = CliRunner().invoke(main, ["show", vid, "--store", str(store.path), "--runs", str(tmp_path),
                                    "--methods", "AV-ENERGY,AVGN-SPATIAL", "--out", str(tmp_path / "s.png")])
    assert res.exit_code == 0, res.output
    shown = [line.split(" predicted ")[0].strip() for line in res.output.splitlines() if " predicted " in line]
    assert shown == ["AV-ENERGY", "AVGN spatial AESPA + pi (k=10, T_G=all)"]
    assert (tmp_path / "s.png").is_file()


def test_a_frozen_temporal_glance_stays_as_trained_and_gets_its_own_rows(store, tmp_path):
    from pipelines.train_avgn import load_avgn, train_avgn
    with pytest.raises(ValueError, match="fs train-avgn"):
        train_avgn_spatial(store, tmp_path, "aespa", freeze_temporal=True, **TINY)
    tiny = {k: v for k, v in TINY.items() if k != "patch"}
    train_avgn(store, tmp_path, **tiny)
    temporal, _ = load_avgn(store, tmp_path)
    trained = train_avgn_spatial(store, tmp_path, "aespa", freeze_temporal=True, **TINY)
    assert trained.path.name == "avgn-spatial-frozen.pt"
    model, cfg = load_avgn_spatial(store, tmp_path, "avgn-spatial-frozen")
    assert cfg["freeze_temporal"] and all(p.requires_grad for p in model.parameters())
    for (n, a), b in zip(model.temporal.state_dict().items(), temporal.state_dict().values()):
        assert torch.equal(a, b), n
    assert any(not torch.equal(a, b) for a, b in zip(model.f_l.state_dict().values(),
                                                     SpatialInit(model).f_l.state_dict().values()))
    names = [s.name for _, s in build_rows(BenchContext(store, tmp_path, say=lambda m: None), ("AVGN-SPATIAL",))]
    assert names[:2] == ["AVGN spatial AESPA + pi, temporal frozen (k=4, T_G=all)",
                         "AVGN spatial AESPA + pi, temporal frozen (k=10, T_G=all)"]


def SpatialInit(model):
    """The same architecture at its seeded initialisation (what training must have moved away from)."""
    from models.avgn_spatial import SpatialAVGN
    torch.manual_seed(0)
    return SpatialAVGN(model.num_classes, model.spatial, dim=16, layers=1, heads=2, max_len=8, patch=16)
