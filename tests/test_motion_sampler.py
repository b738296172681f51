"""SCSampler's cheap samplers on the stored signals: the visual one on motion (``fs train-sampler --modality motion``,
``av-motion`` joint training with audio), the audio one on spectrum (``--modality spectrum``, ``av-cheap`` joint
training with motion), read by the bench alone and in the audio-visual combinations, refused on a store built before
the signal arrays."""
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cli.main import main
from featurestore.store import FeatureStore
from tests.test_bench import fabricate_store


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("motion")
    store = fabricate_store(tmp / "m.zarr", n_videos=12, seed=3)
    runs = tmp / "runs"
    common = ["--store", str(store.path), "--runs", str(runs), "--epochs", "2", "--batch-size", "4"]
    cli = CliRunner()
    said = {}
    for modality, loss in (("motion", "sal-rank"), ("av-motion", "sal-cl"), ("spectrum", "sal-rank"),
                           ("av-cheap", "sal-cl")):
        res = cli.invoke(main, ["train-sampler", *common, "--modality", modality, "--loss", loss])
        assert res.exit_code == 0, res.output
        said[modality] = res.output
    return store, runs, said


def test_motion_samplers_train_and_joint_training_starts_from_its_parts(trained):
    store, runs, said = trained
    assert "starts from the motion sampler" in said["av-motion"]
    assert "starts from the audio sampler" in said["av-motion"]
    for name, modality in (("sampler-motion-sal-rank", "motion"), ("sampler-motion-sal-cl", "motion"),
                           ("sampler-audio-sal-cl", "audio"), ("sampler-av-motion-sal-cl", "av-motion")):
        ckpt = torch.load(runs / f"{name}.pt", weights_only=True)
        assert ckpt["config"]["modality"] == modality
    k_tr = {name: torch.load(runs / f"sampler-{name}.pt", weights_only=True)["config"]["k_tr"]
            for name in ("motion-sal-rank", "motion-sal-cl", "audio-sal-cl", "av-motion-sal-cl")}
    assert k_tr == {"motion-sal-rank": None, "motion-sal-cl": 0.5, "audio-sal-cl": 0.25, "av-motion-sal-cl": 0.5}
    state = torch.load(runs / "sampler-motion-sal-rank.pt", weights_only=True)["state_dict"]
    assert state["net.1.weight"].shape == (256, 192)          # the MLP reads the 192-wide motion rows


def test_spectrum_samplers_train_and_cheap_joint_training_starts_from_motion_and_spectrum(trained):
    store, runs, said = trained
    assert "starts from the spectrum sampler" in said["av-cheap"]
    assert "starts from the motion sampler" not in said["av-cheap"]      # motion SAL-CL was trained for av-motion
    configs = {name: torch.load(runs / f"sampler-{name}.pt", weights_only=True)["config"]
               for name in ("spectrum-sal-rank", "spectrum-sal-cl", "av-cheap-sal-cl")}
    assert {n: c["modality"] for n, c in configs.items()} == {"spectrum-sal-rank": "spectrum",
                                                              "spectrum-sal-cl": "spectrum",
                                                              "av-cheap-sal-cl": "av-cheap"}
    assert {n: c["k_tr"] for n, c in configs.items()} == {"spectrum-sal-rank": None, "spectrum-sal-cl": 0.25,
                                                          "av-cheap-sal-cl": 0.5}
    state = torch.load(runs / "sampler-spectrum-sal-rank.pt", weights_only=True)["state_dict"]
    assert state["net.1.weight"].shape == (256, 40)           # the MLP reads the 40 mel bands
    joint = torch.load(runs / "sampler-av-cheap-sal-cl.pt", weights_only=True)["state_dict"]
    assert joint["visual.net.1.weight"].shape == (256, 192) and joint["audio.net.1.weight"].shape == (256, 40)


def test_bench_rows_for_motion_alone_joint_and_with_audio(trained):
    store, runs, _ = trained
    res = CliRunner().invoke(main, ["bench", "--store", str(store.path), "--runs", str(runs), "--methods",
                                    "uniform,samplers", "--no-sweep"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(runs / "bench" / "bench.csv").set_index("method")
    for row in ("SCS motion SAL-RANK -> student", "SCS motion SAL-CL -> student",
                "SCS AV(motion)-joint-training SAL-CL -> student", "SCS AV(motion)-intersect-list -> student",
                "SCS AV(motion)-union-list (K'=8) -> student", "SCS AV(motion)-convex-score (a=0.9) -> student",
                "SCS AV(motion)-convex-list (a=0.8) -> student"):
        assert row in table.index, row
        assert table.loc[row, "role"] == "learned"
    for row in ("SCS spectrum SAL-RANK -> student", "SCS AV(cheap)-joint-training SAL-CL -> student",
                "SCS AV(cheap)-intersect-list -> student", "SCS AV(cheap)-union-list (K'=8) -> student",
                "SCS AV(cheap)-convex-score (a=0.9) -> student", "SCS AV(cheap)-convex-list (a=0.8) -> student"):
        assert row in table.index, row
        assert table.loc[row, "role"] == "learned"
    assert not any(m.startswith("SCS AV-") for m in table.index)      # no image sampler trained: no AV rows
    # AV(cheap) pays UNIFORM's K pairs and head plus both signals and MLPs: no ResNet on an unchosen step
    assert table.loc["SCS AV(cheap)-convex-score (a=0.9) -> student", "gflops_per_video"] < \
        table.loc["UNIFORM", "gflops_per_video"] + 0.2
    # the motion sampler costs UNIFORM's K pairs and head plus the signal and MLP, a few MFLOPs a step
    assert table.loc["SCS motion SAL-RANK -> student", "gflops_per_video"] < \
        table.loc["UNIFORM", "gflops_per_video"] + 0.1


def test_a_store_built_before_the_signals_refuses_the_motion_sampler(tmp_path):
    store = fabricate_store(tmp_path / "old.zarr", n_videos=4, signals=False)
    res = CliRunner().invoke(main, ["train-sampler", "--store", str(store.path), "--runs", str(tmp_path / "r"),
                                    "--modality", "motion", "--epochs", "1"])
    assert res.exit_code != 0 and "no motion arrays" in res.output and "re-extract into a new store" in res.output


def test_a_store_without_the_spectrum_refuses_its_sampler_and_skips_its_rows(tmp_path, trained):
    _, runs, _ = trained
    store = FeatureStore(fabricate_store(tmp_path / "two.zarr", n_videos=8, seed=3).path, mode="a")
    store.root.attrs["signals"] = ["loudness", "motion"]           # as extracted before the spectrum signal
    res = CliRunner().invoke(main, ["train-sampler", "--store", str(store.path), "--runs", str(tmp_path / "r"),
                                    "--modality", "spectrum", "--epochs", "1"])
    assert res.exit_code != 0 and "no spectrum arrays" in res.output
    from pipelines.methods import BenchContext, samplers
    said = []
    rows = [s.name for s in samplers(BenchContext(FeatureStore(store.path), runs, say=said.append))]
    assert rows and not any("spectrum" in r or "AV(cheap)" in r for r in rows)
    assert "SCS motion SAL-RANK -> student" in rows
    assert any("skipping the SCSampler rows on the spectrum signal" in line for line in said)


def test_k_tr_is_an_option_recorded_in_the_checkpoint(trained, tmp_path):
    store, _, _ = trained
    cli = CliRunner()
    common = ["train-sampler", "--store", str(store.path), "--runs", str(tmp_path), "--modality", "audio", "--loss",
              "sal-cl", "--epochs", "1", "--batch-size", "4"]
    res = cli.invoke(main, common + ["--k-tr", "0.4"])
    assert res.exit_code == 0, res.output
    assert torch.load(tmp_path / "sampler-audio-sal-cl.pt", weights_only=True)["config"]["k_tr"] == 0.4
    res = cli.invoke(main, common + ["--k-tr", "0"])
    assert res.exit_code != 0 and "--k-tr" in res.output
