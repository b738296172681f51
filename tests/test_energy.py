"""The signal-energy controls (issue 25): their analytic per-step costs, their choice of steps on hand-made signals,
their place in the registry, their skip on a store built before the signal arrays, and the table's mark on learned
rows that do not beat them."""
import numpy as np
import pandas as pd
import pytest
import torch

from featurestore.constants import CROP, LOUDNESS_FLOOR_DB, MOTION_DIM, SAMPLE_RATE, STEP_FRAMES
from featurestore.cost import loudness_gflops, motion_gflops, unit_gflops
from models.baselines import StepClassifier
from models.energy import EnergySelector, zscore
from models.selection import UnitCosts, VideoBlock, select_block
from pipelines.methods import METHODS, BenchContext, build_selectors, role

U = UnitCosts(image=0.5, audio=0.25, fusion=0.125, clip=8.0, loudness=0.001, motion=0.01)


class Video:
    def __init__(self, loudness, motion, label="a", seed=0):
        n = len(loudness)
        rng = np.random.default_rng(seed)
        self.video_id = f"v{seed}"
        self.attrs = {"label": label, "video_id": self.video_id}
        self.arrays = {"t": np.arange(n, dtype=np.float32), "loudness": np.asarray(loudness, np.float32),
                       "motion": np.asarray(motion, np.float16),
                       "fused": rng.normal(0, 1, (n, 512)).astype(np.float16)}


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    return StepClassifier(512, 3).eval()


def motion_rows(means) -> np.ndarray:
    """Motion rows whose means are ``means`` (every cell equal)."""
    return np.repeat(np.asarray(means, np.float64)[:, None], MOTION_DIM, 1)


def test_signal_costs_are_the_hand_counts_from_the_constants():
    assert SAMPLE_RATE == 16000 and CROP == 112 and STEP_FRAMES == 16 and MOTION_DIM == 192
    assert loudness_gflops() == pytest.approx((2 * 16000 + 3) / 1e9, abs=0)             # square, mean, sqrt, 20 log10
    assert motion_gflops() == pytest.approx((3 * 112 * 112 * 3 * 16 + 192) / 1e9, abs=0)  # diff, abs, cell sum; mean
    u = unit_gflops()
    assert (u.loudness, u.motion) == (loudness_gflops(), motion_gflops())
    assert u.of("loudness") == u.loudness and u.of("motion") == u.motion
    assert u.motion < u.image / 500                  # 1.8 MFLOPs a step against the image ResNet-18's 0.97 GFLOPs


def test_audio_energy_takes_the_loudest_steps_ties_to_the_earlier(head):
    loud = [-50, -20, -30, -20, -100, -10, -45, -30, -60, -70, -80, -90, -95]
    video = Video(loud, motion_rows(np.zeros(13)))
    sel = EnergySelector("AUDIO-ENERGY", head, U, kind="audio", k=4)
    out = sel.select(video)
    assert out.steps.tolist() == [5, 1, 3, 2]
    z = torch.from_numpy(video.arrays["fused"].astype(np.float32))
    with torch.no_grad():
        want = torch.softmax(head(z[[5, 1, 3, 2]]), 1).mean(0)
    np.testing.assert_allclose(out.scores, want.numpy(), rtol=1e-5)


def test_motion_energy_ranks_by_the_mean_of_the_row(head):
    motion = np.zeros((6, MOTION_DIM))
    motion[2, :10] = 0.9                   # mean 0.047: one bright corner
    motion[4] = 0.06                       # mean 0.06 everywhere
    motion[0, 0] = 1.0                     # mean 0.005
    sel = EnergySelector("MOTION-ENERGY", head, U, kind="motion", k=3)
    assert sel.select(Video(np.zeros(6), motion)).steps.tolist() == [4, 2, 0]


def test_av_energy_sums_per_video_z_scores_and_a_silent_video_ranks_by_motion(head):
    loud = np.array([-40.0, -20.0, -30.0, -30.0])          # z: -1.414, 1.414, 0, 0
    means = np.array([0.1, 0.0, 0.4, 0.1])                 # z: -1/3, -1, 5/3, -1/3 (mean 0.15, std 0.15)
    sel = EnergySelector("AV-ENERGY", head, U, kind="av", k=4)
    assert sel.select(Video(loud, motion_rows(means))).steps.tolist() == [2, 1, 3, 0]
    silent = Video(np.full(4, LOUDNESS_FLOOR_DB), motion_rows(means))
    assert sel.select(silent).steps.tolist() == [2, 0, 3, 1]
    z = zscore(torch.tensor([[-40.0, -20.0, -30.0, -30.0, 0.0]], dtype=torch.float64),
               torch.tensor([[True, True, True, True, False]]))
    np.testing.assert_allclose(z[0].numpy(), [-2 ** 0.5, 2 ** 0.5, 0, 0, 0], atol=1e-12)


@pytest.mark.parametrize("kind, signal", [("audio", U.loudness), ("motion", U.motion), ("av", U.loudness + U.motion)])
def test_cost_is_the_signal_on_every_step_and_uniforms_pair_and_head_on_the_chosen(kind, signal, head):
    from torch.utils.flop_counter import FlopCounterMode

    rng = np.random.default_rng(1)
    videos = [Video(rng.normal(-40, 5, n), rng.random((n, MOTION_DIM)) * 0.1, seed=n) for n in (3, 10, 27)]
    sel = EnergySelector("E", head, U, kind=kind)
    block = VideoBlock.of(videos)
    got = select_block(sel, block)
    for i, v in enumerate(videos):
        n, k = len(v.arrays["t"]), min(10, len(v.arrays["t"]))
        z = torch.from_numpy(v.arrays["fused"].astype(np.float32))[got.video(i).steps]
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            head(z)
        want = n * signal + k * (U.image + U.audio + U.fusion) + fc.get_total_flops() / 1e9
        assert got.gflops[i] == pytest.approx(want, rel=1e-9)
        assert sel.select(v).gflops == pytest.approx(want, rel=1e-9)
        assert got.video(i).steps.tolist() == sel.select(v).steps.tolist()


def test_energy_rows_follow_the_head_rules_and_precede_the_learned_rows_and_oracle():
    keys = list(METHODS)
    energy = [keys.index(k) for k in ("AUDIO-ENERGY", "MOTION-ENERGY", "AV-ENERGY")]
    assert energy == sorted(energy) and energy[-1] - energy[0] == 2
    for rule in ("RANDOM", "UNIFORM", "FRONT", "CENTER", "END", "DENSE", "SCSAMPLER"):
        assert keys.index(rule) < energy[0]
    assert energy[-1] < keys.index("ORACLE") and energy[-1] < keys.index("LSTM")
    assert [role(k) for k in ("AV-ENERGY", "SKIM", "AVGN", "SAMPLERS", "UNIFORM", "ORACLE")] == \
        ["control", "learned", "learned", "learned", "baseline", "baseline"]


def test_a_store_built_before_the_signals_skips_the_controls_with_one_line(tmp_path):
    from tests.test_bench import fabricate_store

    store = fabricate_store(tmp_path / "old.zarr", n_videos=4, signals=False)
    said = []
    ctx = BenchContext(store, tmp_path / "runs", say=said.append)
    assert build_selectors(ctx, ("AUDIO-ENERGY", "MOTION-ENERGY", "AV-ENERGY")) == []
    assert len(said) == 1 and "no loudness" in said[0] and "re-extract into a new store" in said[0]
    assert not (tmp_path / "runs").exists()              # nothing trained for rows that cannot run


def table(rows):
    return pd.DataFrame([{"method": m, "top1": t, "role": r, "one_class": False, "top1_lo": float("nan"),
                          "top1_hi": float("nan"), "train_top1": float("nan"), "mAP": 0.5, "mAP_lo": float("nan"),
                          "mAP_hi": float("nan"), "segment_hit": float("nan"), "gflops_per_video": 1.0,
                          "seconds_per_video": 0.0, "steps_per_video": 10.0} for m, t, r in rows])


def test_learned_rows_not_beating_the_best_control_are_marked_and_explained():
    from pipelines.bench import bench_notes, format_table
    from pipelines.report import table_html

    t = table([("UNIFORM", 0.40, "baseline"), ("AUDIO-ENERGY", 0.50, "control"), ("AV-ENERGY", 0.60, "control"),
               ("SKIM", 0.60, "learned"), ("AVGN", 0.61, "learned"), ("SCS x", 0.30, "learned")])
    lines = {line.split()[0]: line for line in format_table(t).splitlines()[1:]}
    assert lines["SKIM"].split()[1] == "\u2264" and lines["SCS"].split()[2] == "\u2264"   # ties do not beat it
    assert "\u2264" not in lines["AVGN"] + lines["UNIFORM"] + lines["AUDIO-ENERGY"]
    notes = bench_notes(t, 100)
    assert any(n.startswith("\u2264 energy: 2 learned") and "AV-ENERGY (60.0%" in n for n in notes)
    assert table_html(t).count("\u2264 energy") == 2
    no_controls = table([("SKIM", 0.1, "learned")])
    assert "\u2264" not in format_table(no_controls) and not any("energy" in n for n in bench_notes(no_controls, 100))
