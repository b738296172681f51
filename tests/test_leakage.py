"""No leakage (issue 17, value 7): change every descriptor of the test split's videos and retrain everything; each
checkpoint comes out the same (weights, buffers, config, fingerprint, history less its timing fields)."""
import torch

from pipelines.train_avgn import train_avgn
from pipelines.train_head import train_head
from pipelines.train_sampler import train_sampler
from pipelines.train_skim import train_skim
from tests.test_bench import fabricate_store

TIMING = ("data_seconds", "compute_seconds")


def train_everything(store, runs):
    quiet = dict(sized=False)
    for model in ("skim", "lstm", "non-recurrent"):
        train_skim(store, runs, model=model, epochs=1, batch_size=6, **quiet)
    train_head(store, runs, "fused", epochs=2, batch_size=32, **quiet)
    for modality, loss in (("audio", "ac"), ("visual", "sal-rank"), ("av", "sal-cl")):
        # SAL-CL / SAL-RANK train against the R(2+1)D head f, itself trained on first use
        train_sampler(store, runs, modality, loss, epochs=1, batch_size=6, say=lambda s: None, **quiet)
    train_avgn(store, runs, layers=1, heads=2, dim=16, epochs=1, batch_size=6, **quiet)
    return sorted(runs.glob("*.pt"))


def comparable(path):
    ck = torch.load(path, weights_only=True)
    ck["history"] = [{k: v for k, v in row.items() if k not in TIMING} for row in ck["history"]]
    return ck


def same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.nan_to_num(), b.nan_to_num())), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def test_changing_the_test_split_changes_no_checkpoint(tmp_path):
    plain = fabricate_store(tmp_path / "a.zarr", n_videos=12, r2p1d=True)
    moved = fabricate_store(tmp_path / "b.zarr", n_videos=12, r2p1d=True, test_shift=3.0)
    va, vb = plain.read_video("v000"), moved.read_video("v000")            # v000 is a test video
    assert va.attrs["split"] == "test" and (abs(va["image"].astype(float) - vb["image"]) > 2).all()
    assert (plain.read_video("v001")["image"] == moved.read_video("v001")["image"]).all()   # the rest is identical
    a = train_everything(plain, tmp_path / "runs-a")
    b = train_everything(moved, tmp_path / "runs-b")
    assert [p.name for p in a] == [p.name for p in b] and len(a) >= 8
    for pa, pb in zip(a, b):
        same(comparable(pa), comparable(pb), pa.name)
