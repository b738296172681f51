"""Selection in blocks: every bench row's ``select_batch`` (or the default loop over ``select``) gives, video by video,
the per-video path's steps, scores and GFLOPs, on blocks of videos of different lengths (some shorter than the
budget), with GFLOPs counted once per shape."""
import numpy as np
import pytest
import torch

from featurestore.store import FeatureStore
from models.selection import NO_STEP, BlockSelection, Selection, select_block
from pipelines.data import load_split
from pipelines.methods import METHODS, BenchContext, build_selectors
from tests.bench_rows import save_seeded_checkpoints
from tests.test_bench import CLASSES, fabricate_store, fabricated_signals, write_fabricated
from featurestore.weights import load_student

PATHS: dict = {}
SHORT = (1, 2, 3, 5, 9, 10, 11)      # steps of the extra test videos: fewer than the budget, equal, one over


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch")
    path = tmp / "store.zarr"
    fabricate_store(path, n_videos=24, seed=11, r2p1d=True)
    store = FeatureStore(path, mode="a")
    student, _ = load_student("random", 0, 400)
    rng = np.random.default_rng(5)
    for v, n in enumerate(SHORT, start=100):
        z_i, z_a = rng.normal(0, 1, (n, 256)), rng.normal(0, 1, (n, 256))
        write_fabricated(store, student, v, z_i, z_a, CLASSES[v % 3], "test",
                         {"r2p1d": rng.normal(0, 1, (n, 512)).astype(np.float16),
                          **fabricated_signals(n, [n // 2], rng, silent=n == 3)})
    store = FeatureStore(path)
    runs = tmp / "runs"
    save_seeded_checkpoints(store, runs)
    selectors = build_selectors(BenchContext(store, runs, subsample=5, steps=3, say=lambda *_: None), tuple(METHODS))
    data = load_split(store, "test", ("t", "image", "audio", "fused", "r2p1d", "loudness", "motion", "spectrum"))
    PATHS.update(store=path, runs=runs)
    return selectors, data


def _same(got: Selection, want: Selection, what: str) -> None:
    assert np.asarray(got.steps).tolist() == np.asarray(want.steps).tolist(), what
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-4, atol=1e-5, err_msg=what)
    assert got.gflops == pytest.approx(want.gflops, rel=1e-6), what


def test_blocks_cover_every_video_once_sorted_by_length(bench):
    _, data = bench
    blocks = list(data.blocks(videos=5))
    seen = np.concatenate(blocks)
    assert sorted(seen.tolist()) == list(range(len(data)))
    assert all(len(b) <= 5 for b in blocks)
    assert all(np.all(np.diff(data.n_steps[b]) >= 0) for b in blocks)
    assert min(data.n_steps) == 1 and max(data.n_steps) > 12


def test_every_row_in_blocks_equals_its_per_video_answers(bench):
    selectors, data = bench
    assert len(selectors) > 40
    for idx in data.blocks(videos=4):
        block = data.block(idx)
        assert block.n == int(data.n_steps[idx].max())
        for sel in selectors:
            got = select_block(sel, block)
            assert got.steps.shape[0] == got.scores.shape[0] == got.gflops.shape[0] == len(idx)
            for i, j in enumerate(idx):
                video = data.videos[int(j)]
                _same(got.video(i), sel.select(video), f"{sel.name} on {video.video_id} ({video.arrays['t'].shape[0]} steps)")


def test_sweep_prefixes_of_one_run_equal_early_stopped_skimmers(bench):
    """The sweep's rows T = 1..10 read one T = 10 run per s: each equals a skimmer stopped at T on its own."""
    from models.skim import SkimSelector
    selectors, data = bench
    net = next(s for s in selectors if s.name.startswith("IMGAUD-SKIM (")).skimmer
    costs = next(s for s in selectors if s.name.startswith("IMGAUD-SKIM (")).pair_gflops
    from models.selection import UnitCosts
    unit = UnitCosts(image=costs / 3, audio=costs / 3, fusion=costs / 3, clip=1.0)
    for s in (1, 5):
        rows = [SkimSelector(f"t{t}", net, unit, steps=t, subsample=s, run_steps=10) for t in range(1, 11)]
        for idx in data.blocks(videos=6):
            block = data.block(idx)
            got = [select_block(r, block) for r in rows]
            assert len([k for k in block._memo if k[0] == "skim"]) == 1     # one run for the ten rows
            for t, g in zip(range(1, 11), got):
                alone = SkimSelector("alone", net, unit, steps=t, subsample=s)
                for i, j in enumerate(idx):
                    _same(g.video(i), alone.select(data.videos[int(j)]), f"s={s} T={t} video {j}")


def test_a_select_only_selector_runs_through_the_default_loop(bench):
    _, data = bench

    class FirstStep:
        name = "FIRST"

        def select(self, video):
            n = len(video.arrays["t"])
            return Selection(np.array([0, n - 1][: min(2, n)]), np.array([1.0, 0.0, 0.0]), float(n))

    idx = next(iter(data.blocks(videos=8)))
    got = select_block(FirstStep(), data.block(idx))
    n = data.n_steps[idx]
    assert got.gflops.tolist() == n.astype(float).tolist()
    assert got.counts.tolist() == np.minimum(2, n).tolist()
    assert (got.steps[n == 1, 1] == NO_STEP).all()


@pytest.mark.parametrize("device, says", [("cuda", "torch sees no GPU here"), ("tpu", "--device must be auto, cpu or cuda")])
def test_bench_refuses_a_device_it_cannot_use_before_writing_anything(bench, tmp_path, device, says):
    from click.testing import CliRunner
    from cli.main import main

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    store, runs = PATHS["store"], PATHS["runs"]
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["bench", "--store", str(store), "--runs", str(runs), "--device", device,
                                    "--out", str(out), "--methods", "UNIFORM"])
    assert res.exit_code != 0 and says in res.output
    assert not out.exists()
