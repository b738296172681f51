"""Issue 23, code execution: a crafted ``.pt`` in a runs folder must not run code when fs loads checkpoints; fs's
own checkpoints (with numpy values in their configs) still load."""
import os

import numpy as np
import torch
from click.testing import CliRunner

from cli.main import main
from pipelines.checkpoints import load_checkpoint, save_checkpoint
from pipelines.train_head import checkpoint_name, load_head
from models.baselines import StepClassifier
from tests.test_bench import fabricate_store


class Payload:
    """Unpickling this calls ``os.makedirs(marker)``: any code could run in its place."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_a_crafted_checkpoint_runs_no_code_on_fs_bench(tmp_path):
    store = fabricate_store(tmp_path / "s.zarr", n_videos=8, seed=1)
    runs = tmp_path / "runs"
    runs.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"kind": "head", "state_dict": {}, "fingerprint": {}, "config": Payload(str(marker))},
               runs / f"{checkpoint_name('fused')}.pt")
    res = CliRunner().invoke(main, ["bench", "--store", str(store.path), "--runs", str(runs), "--methods", "UNIFORM",
                                    "--no-sweep"])
    assert not marker.exists()                       # the payload never ran
    assert res.exit_code != 0
    assert "is not a plain fs checkpoint" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_a_checkpoint_with_numpy_values_in_its_config_saves_plain_and_loads(tmp_path):
    store = fabricate_store(tmp_path / "s.zarr", n_videos=8, seed=1)
    head = StepClassifier(512, 3)
    save_checkpoint(tmp_path, checkpoint_name("fused"), "head", head, store,
                    {"features": "fused", "in_dim": np.int64(512), "num_classes": 3, "milestones": (np.int32(2),)},
                    [{"epoch": 0, "loss": np.float32(0.5), "rows": np.arange(2)}])
    ckpt = load_checkpoint(tmp_path, checkpoint_name("fused"), "head", store)
    assert ckpt["config"]["in_dim"] == 512 and type(ckpt["config"]["in_dim"]) is int
    assert ckpt["config"]["milestones"] == [2] and ckpt["history"][0]["rows"] == [0, 1]
    loaded, _ = load_head(store, tmp_path)
    for a, b in zip(loaded.state_dict().values(), head.state_dict().values()):
        assert torch.equal(a, b)


def test_a_file_that_is_no_checkpoint_is_one_line(tmp_path):
    store = fabricate_store(tmp_path / "s.zarr", n_videos=8, seed=1)
    (tmp_path / f"{checkpoint_name('fused')}.pt").write_bytes(b"not a zip nor a pickle")
    res = CliRunner().invoke(main, ["bench", "--store", str(store.path), "--runs", str(tmp_path), "--methods",
                                    "UNIFORM", "--no-sweep"])
    assert res.exit_code != 0 and "is not a readable checkpoint" in res.output
    assert "Traceback" not in res.output
