"""Trainers and the bench on a small fabricated store (no decoding: they read only the store)."""
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cli.main import main
from featurestore.store import FeatureStore, StoreError
from featurestore.weights import load_student
from models.baselines import (HeadSelector, LSTMBaseline, LSTMSelector, StepClassifier, index_center, index_end,
                              index_front, index_random, index_uniform)
from models.imgaud import Fusion
from models.selection import UnitCosts
from models.skim import ImgAudSkimmer, NonRecurrentSelector, SkimSelector
from pipelines.bench import average_precision, mean_average_precision
from pipelines.methods import METHODS
from pipelines.train_skim import train_skim

CLASSES = ["a", "b", "c"]
PAIR_1_3 = UnitCosts(image=0.6, audio=0.5, fusion=0.2, clip=80.0)      # an image-audio pair costs 1.3 GFLOPs
PAIR_1 = UnitCosts(image=0.5, audio=0.25, fusion=0.25, clip=80.0)


def fabricate_store(path, n_videos=24, seed=0, r2p1d=False, loc=0.0, scale=1.0, test_shift=0.0, signals=True):
    """Videos whose class shows in a few steps only: class-specific image/audio offsets at 2-4 sparse steps
    (and, with ``r2p1d``, a clip descriptor that carries the class at those steps), on N(loc, scale^2) noise;
    ``test_shift`` is added to every descriptor of the test split's videos (nothing else changes). With ``signals``
    (as every store extracted since the signal arrays), each video holds ``loudness``, ``motion`` and ``spectrum``,
    louder, moving more and with a few bands raised at those steps (:func:`fabricated_signals`), and the root
    attribute ``signals`` says so; without, the store is one built before them."""
    from featurestore.constants import SIGNALS

    rng = np.random.default_rng(seed)
    student, rec = load_student("random", 0, 400)
    store = FeatureStore(path, mode="a")
    descriptors = ["image", "audio", "fused"] + (["r2p1d"] if r2p1d else [])
    store.initialise("fab", CLASSES, descriptors, {"models": {"student": rec}})
    if signals:
        store.root.attrs["signals"] = list(SIGNALS)
    proto_v = rng.normal(0, 3, (3, 512))
    proto_i, proto_a = rng.normal(0, 3, (3, 256)), rng.normal(0, 3, (3, 256))
    for v in range(n_videos):
        label = v % 3
        n = int(rng.integers(12, 40))
        z_i, z_a = rng.normal(loc, scale, (n, 256)), rng.normal(loc, scale, (n, 256))
        z_v = rng.normal(loc, scale, (n, 512))
        salient = rng.choice(n, size=int(rng.integers(2, 5)), replace=False)
        for j in salient:
            z_i[j] += proto_i[label]
            z_a[j] += proto_a[label]
            z_v[j] += proto_v[label]
        if v % 4 == 0 and test_shift:
            z_i, z_a, z_v = z_i + test_shift, z_a - test_shift, z_v + 2 * test_shift
        extra = {"r2p1d": z_v.astype(np.float16)} if r2p1d else {}
        if signals:        # drawn apart: the descriptors stay those of the stores fabricated before the signals
            extra.update(fabricated_signals(n, salient, np.random.default_rng([seed, v]), silent=v % 7 == 5))
        write_fabricated(store, student, v, z_i, z_a, CLASSES[label], "test" if v % 4 == 0 else "train", extra)
    return FeatureStore(path)


def fabricated_signals(n: int, salient, rng: np.random.Generator, silent: bool = False) -> dict[str, np.ndarray]:
    """A video's ``loudness`` (n,) float32 in dBFS (about -40, 12 dB louder at the ``salient`` steps; all at the floor
    when ``silent``), ``motion`` (n, MOTION_DIM) float16 in [0, 1] (more at the salient steps, in a few cells) and
    ``spectrum`` (n, N_MELS) float16 log-mel levels (about -8, 3 higher at the salient steps in a few bands; all
    log(LOG_EPS) when ``silent``), drawn in that order (the spectrum last: the others are as before it)."""
    from featurestore.constants import LOG_EPS, LOUDNESS_FLOOR_DB, MOTION_DIM, N_MELS

    loudness = rng.normal(-40.0, 4.0, n)
    loudness[list(salient)] += 12.0
    if silent:
        loudness[:] = LOUDNESS_FLOOR_DB
    motion = np.abs(rng.normal(0.0, 0.03, (n, MOTION_DIM)))
    cells = rng.choice(MOTION_DIM, size=24, replace=False)
    motion[np.ix_(list(salient), cells)] += 0.2
    spectrum = rng.normal(-8.0, 1.0, (n, N_MELS))
    spectrum[np.ix_(list(salient), rng.choice(N_MELS, size=6, replace=False))] += 3.0
    if silent:
        spectrum[:] = np.log(LOG_EPS)
    return {"loudness": np.maximum(loudness, LOUDNESS_FLOOR_DB).astype(np.float32),
            "motion": np.clip(motion, 0.0, 1.0).astype(np.float16), "spectrum": spectrum.astype(np.float16)}


def write_fabricated(store, student, v: int, z_i, z_a, label: str, split: str, extra: dict | None = None) -> None:
    """Video ``v{v:03d}`` of a fabricated store: its image and audio features, the student's Psi of them, and the
    start times of its 16-frame steps (and any ``extra`` arrays: r2p1d, the signals); a video whose ``loudness`` is
    all at the floor has no audio."""
    from featurestore.constants import LOUDNESS_FLOOR_DB

    n = len(z_i)
    extra = extra or {}
    with torch.no_grad():
        fused = student.fusion(torch.tensor(z_i, dtype=torch.float32), torch.tensor(z_a, dtype=torch.float32))
    silent = "loudness" in extra and bool(np.all(extra["loudness"] <= LOUDNESS_FLOOR_DB))
    store.write_video(f"v{v:03d}", {"t": np.arange(n, dtype=np.float32) * 16 / 30,
                                    "image": z_i.astype(np.float16), "audio": z_a.astype(np.float16),
                                    "fused": fused.numpy().astype(np.float16), **extra},
                      {"label": label, "split": split, "n_steps": n, "duration": n * 16 / 30, "has_audio": not silent,
                       "path": f"v{v}.mp4"})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return fabricate_store(tmp_path_factory.mktemp("fab") / "s.zarr")


@pytest.mark.parametrize("fn", [index_uniform, index_front, index_center, index_end,
                                lambda n, k: index_random(n, k, seed=3)])
@pytest.mark.parametrize("n", [1, 5, 10, 11, 97])
def test_blind_baselines_pick_min_k_n_distinct_steps_within_range(fn, n):
    idx = fn(n, 10)
    assert len(idx) == min(10, n) == len(set(idx.tolist()))
    assert idx.min() >= 0 and idx.max() < n


def test_average_precision_by_hand():
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    scores = np.eye(3)[[0, 1, 2, 0]]
    assert mean_average_precision(scores, np.array([0, 1, 2, 0])) == 1.0


def test_every_selector_returns_steps_within_range_and_a_distribution(store):
    torch.manual_seed(0)
    fusion = Fusion()
    head = StepClassifier(512, 3).eval()
    sk = ImgAudSkimmer(fusion, 3).eval()
    selectors = [HeadSelector(r, head, PAIR_1_3, rule=r, class_index={c: i for i, c in enumerate(CLASSES)})
                 for r in ("random", "uniform", "front", "center", "end", "dense", "confidence", "oracle")]
    selectors += [SkimSelector("skim", sk, PAIR_1_3, steps=3, subsample=5), SkimSelector("hard", sk, PAIR_1_3, hard=True),
                  NonRecurrentSelector("nr", sk, PAIR_1_3), LSTMSelector("lstm", LSTMBaseline(3), PAIR_1_3),
                  SkimSelector("single", ImgAudSkimmer(fusion, 3, indexing="single"), PAIR_1_3, steps=4, subsample=2)]
    for vid in store.video_ids()[:6]:
        video = store.read_video(vid)
        for sel in selectors:
            out = sel.select(video)
            assert len(out.steps) and out.steps.min() >= 0 and out.steps.max() < video.n_steps, sel.name
            assert out.scores.shape == (3,) and out.gflops > 0
        # the scores are what each method's own rule makes of its models, recomputed here from the parts
        z = torch.from_numpy(video["fused"].astype(np.float32))
        z_i, z_a = (torch.from_numpy(video[k].astype(np.float32)) for k in ("image", "audio"))
        with torch.no_grad():
            for sel in selectors[:8]:
                steps = sel.select(video).steps
                want = torch.softmax(head(z[steps]), 1).mean(0)
                np.testing.assert_allclose(sel.select(video).scores, want.numpy(), rtol=1e-5, err_msg=sel.name)
            nr = selectors[10].select(video)
            m = fusion(z_i[nr.steps], z_a[nr.steps]).mean(0)
            np.testing.assert_allclose(nr.scores, torch.softmax(sk.classifier(m[None])[0], 0).numpy(), rtol=1e-5)
            lstm = selectors[11]
            mask = torch.ones(1, len(z), dtype=torch.bool)
            np.testing.assert_allclose(lstm.select(video).scores,
                                       torch.softmax(lstm.model(z[None], mask)[0], 0).numpy(), rtol=1e-5)


def test_sparse_early_stopped_skimming_costs_what_it_computes(store):
    sk = ImgAudSkimmer(Fusion(), 3).eval()
    video = store.read_video(store.video_ids()[0])
    n = video.n_steps
    free = UnitCosts(image=0.0, audio=0.0, fusion=0.0, clip=0.0)
    for steps, subsample, hard in [(10, 1, False), (3, 5, False), (3, 5, True), (4, 10, False)]:
        paid = SkimSelector("s", sk, PAIR_1, steps=steps, subsample=subsample, hard=hard).select(video)
        own = SkimSelector("s", sk, free, steps=steps, subsample=subsample, hard=hard).select(video).gflops
        kept = set(range(0, n, subsample)) | {n - 1}            # every s-th step and the last
        if hard:                                                # the chosen steps' own features are computed too
            kept |= set(paid.steps.tolist())
        assert paid.gflops - own == pytest.approx(len(kept) * 1.0, abs=1e-9), (steps, subsample, hard)
        assert own > 0                                          # the skimmer's own FLOPs are added


def test_checkpoint_refuses_a_store_with_other_classes(tmp_path, store):
    train_skim(store, tmp_path, epochs=1, batch_size=8, sized=False)
    other = FeatureStore(tmp_path / "o.zarr", mode="a")
    other.initialise("fab", ["x", "y", "z"], ["image", "audio", "fused"], store.attrs["provenance"])
    from pipelines.train_skim import load_skim_model
    with pytest.raises(StoreError, match="classes"):
        load_skim_model(other, tmp_path, "skim")


def test_train_and_bench_from_the_cli(tmp_path, store):
    runs = tmp_path / "runs"
    cli = CliRunner()
    common = ["--store", str(store.path), "--runs", str(runs)]
    res = cli.invoke(main, ["train-skim", *common, "--model", "all", "--epochs", "6", "--batch-size", "6",
                            "--milestones", "5", "--lr", "0.05"])
    assert res.exit_code == 0, res.output
    res = cli.invoke(main, ["bench", *common, "--subsample", "5", "--steps", "3"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(runs / "bench" / "bench.csv")
    assert list(table.columns[:5]) == ["method", "top1", "mAP", "gflops_per_video", "seconds_per_video"]
    # no such checkpoints: samplers, R(2+1)D, AVGN (either glance), and the skimmer under the fs protocol (--model
    # all: the paper's)
    assert len(table) == len([m for m in METHODS
                              if m not in ("SAMPLERS", "ORACLE-F", "AVGN", "AVGN-SPATIAL", "SKIM-FS")])
    assert "fs train-skim --model skim --protocol fs" in res.output
    assert (runs / "bench" / "tradeoff.png").stat().st_size > 10_000
    sweep = pd.read_csv(runs / "bench" / "sweep.csv")
    assert len(sweep) == 40 and set(sweep["subsample"]) == {1, 2, 5, 10}
    by = table.set_index("method")
    assert by.loc["ORACLE (upper bound)", "top1"] >= by.loc["DENSE", "top1"]
    skim = by.loc["IMGAUD-SKIM (s=5, T=3)", "gflops_per_video"]
    assert skim <= by.loc["DENSE", "gflops_per_video"] / 2
    # ORACLE recomputed from the saved head: the 10 steps most confident of the true class, averaged
    from pipelines.train_head import load_head
    head, _ = load_head(store, runs)
    head.eval()
    right = []
    for vid in store.video_ids():
        video = store.read_video(vid)
        if video.attrs["split"] != "test":
            continue
        with torch.no_grad():
            p = torch.softmax(head(torch.from_numpy(video["fused"].astype(np.float32))), 1)
        y = CLASSES.index(video.attrs["label"])
        best = sorted(range(len(p)), key=lambda t: -p[t, y].item())[:10]
        right.append(int(p[best].mean(0).argmax()) == y)
    assert by.loc["ORACLE (upper bound)", "top1"] == pytest.approx(sum(right) / len(right))


def test_train_skim_protocol_options_from_the_cli(tmp_path, store):
    cli = CliRunner()
    help_text = cli.invoke(main, ["train-skim", "--help"]).output
    assert "--protocol [paper|fs]" in help_text and "default: paper" in help_text
    res = cli.invoke(main, ["train-skim", "--store", str(store.path), "--runs", str(tmp_path), "--protocol", "fs",
                            "--subsample", "5"])
    assert res.exit_code != 0 and "--subsample fixes s under --protocol paper" in res.output
    assert "Traceback" not in res.output and not list(tmp_path.glob("*.pt"))


def test_bench_without_trained_skimmer_says_how_to_train(tmp_path, store):
    res = CliRunner().invoke(main, ["bench", "--store", str(store.path), "--runs", str(tmp_path / "r"),
                                    "--methods", "uniform,skim", "--no-sweep"])
    assert res.exit_code == 0, res.output
    assert "fs train-skim --model skim" in res.output and "UNIFORM" in res.output


def test_samplers_every_loss_modality_and_combination_through_the_bench(tmp_path):
    store = fabricate_store(tmp_path / "r.zarr", n_videos=18, seed=1, r2p1d=True)
    runs = tmp_path / "runs"
    cli = CliRunner()
    common = ["--store", str(store.path), "--runs", str(runs)]
    for modality in ("visual", "audio", "av"):
        res = cli.invoke(main, ["train-sampler", *common, "--modality", modality, "--loss", "all", "--epochs", "3",
                                "--batch-size", "4"])
        assert res.exit_code == 0, res.output
    res = cli.invoke(main, ["bench", *common, "--methods", "uniform,dense,samplers,oracle-f", "--no-sweep"])
    assert res.exit_code == 0, res.output
    methods = pd.read_csv(runs / "bench" / "bench.csv")["method"].tolist()
    for modality in ("visual", "audio", "AV-joint-training"):
        for loss in ("AC", "SAL-CL", "SAL-RANK"):
            for rec in ("student", "R(2+1)D"):
                assert f"SCS {modality} {loss} -> {rec}" in methods
    for combo in ("AV-convex-score", "AV-convex-list", "AV-union-list", "AV-intersect-list"):
        assert any(m.startswith(f"SCS {combo}") for m in methods)
    assert "ORACLE-F (SCSampler upper bound)" in methods
    table = pd.read_csv(runs / "bench" / "bench.csv").set_index("method")
    # recognising with R(2+1)D costs 81 GFLOPs a clip, with the student 1.3 a pair
    assert table.loc["SCS audio SAL-RANK -> R(2+1)D", "gflops_per_video"] > \
        table.loc["SCS audio SAL-RANK -> student", "gflops_per_video"] + 10 * 70


def test_sampler_without_r2p1d_takes_the_student_head_as_f_and_says_so(store, tmp_path):
    res = CliRunner().invoke(main, ["train-sampler", "--store", str(store.path), "--runs", str(tmp_path), "--loss",
                                    "sal-cl", "--epochs", "1", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert "no r2p1d descriptors" in res.output and "per-step head on fused" in res.output
    assert torch.load(tmp_path / "sampler-audio-sal-cl.pt", weights_only=True)["config"]["clip_classifier"] == "fused"


def test_bootstrap_interval_on_a_hand_made_case():
    from pipelines.bench import bootstrap_intervals
    labels = np.array([0, 1, 0, 1])
    perfect = np.eye(2)[labels]
    (lo, hi), (mlo, mhi) = bootstrap_intervals(perfect, labels)
    assert (lo, hi) == (1.0, 1.0) and (mlo, mhi) == (1.0, 1.0)       # every resample is all correct
    half = np.eye(2)[[0, 0, 0, 0]]                                   # right on the two 0s, wrong on the 1s
    (lo, hi), _ = bootstrap_intervals(half, labels, draws=4000)
    # the number right in a resample of 4 is Binomial(4, 1/2): P(0 right) = P(4 right) = 1/16 > 2.5 %
    assert lo == 0.0 and hi == 1.0
    (lo, hi), _ = bootstrap_intervals(np.eye(2)[[0] * 40], np.array([0, 1] * 20), draws=4000)
    assert 0.3 < lo < 0.5 < hi < 0.7                                  # about 0.5 +- 1.96 * sqrt(0.25 / 40)


def test_one_class_rows_are_flagged_and_a_small_test_split_is_said(store):
    from pipelines.bench import bench_notes, evaluate, format_table
    from pipelines.data import load_split

    class Stubborn:
        name = "ALWAYS-A"

        def select(self, video):
            from models.selection import Selection
            return Selection(np.array([0]), np.array([1.0, 0.0, 0.0]), 1.0)

    data = load_split(store, "test", ("t", "fused"))
    row = evaluate(Stubborn(), data, load_split(store, "train", ("t", "fused")))
    assert row.one_class and row.top1 == pytest.approx(np.mean(data.labels.numpy() == 0))
    table = pd.DataFrame([row.__dict__])
    assert "ALWAYS-A !" in format_table(table)
    notes = bench_notes(table, len(data.videos))
    assert any("predicts one class" in n for n in notes)
    assert any(f"test split has {len(data.videos)} videos" in n for n in notes)
