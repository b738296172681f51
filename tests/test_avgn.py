import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cli.main import main
from models.avgn import AVGNSelector, AVTeST, avgn_losses, glance_order, sample_steps, saliency_pseudo_labels
from models.selection import UnitCosts
from tests.test_bench import fabricate_store


def test_masked_positions_are_replaced_by_the_learnt_mask_token():
    torch.manual_seed(0)
    model = AVTeST(3, dim=16, layers=1, heads=2, max_len=8).eval()
    e_g, e_a = torch.randn(1, 8, 256), torch.randn(1, 8, 256)
    visible = torch.zeros(1, 8, dtype=torch.bool)
    visible[0, :3] = True
    captured = {}
    hook = model.encoder.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    model.glance(e_g, e_a, visible)
    hook.remove()
    x = captured["x"] - model.pos[:8]
    assert torch.allclose(x[0, 3:, :16], model.mask_token.expand(5, 16), atol=1e-6)
    assert torch.allclose(x[0, :3, :16], model.embed_v(e_g[0, :3]), atol=1e-6)
    # what hides behind a mask token cannot change the output
    other = e_g.clone()
    other[0, 3:] = 100.0
    torch.testing.assert_close(model.glance(other, e_a, visible).saliency, model.glance(e_g, e_a, visible).saliency)


def test_pseudo_labels_follow_eq_12_on_hand_made_logits():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [0.0, 4.0]]])
    p = torch.softmax(logits, -1).max(-1).values[0]
    want = p / p.max()
    torch.testing.assert_close(saliency_pseudo_labels(logits)[0], want)
    assert saliency_pseudo_labels(logits)[0, 2] == 1.0 and saliency_pseudo_labels(logits)[0, 1] == pytest.approx(0.5 / p[2])


def test_glance_order_spans_the_video_first_and_covers_every_step():
    order = glance_order(16)
    assert sorted(order) == list(range(16)) and order[:4] == [0, 8, 4, 12]
    assert sorted(sample_steps(100, 16).tolist()) == sample_steps(100, 16).sort().values.tolist()


def test_losses_are_finite_and_mask_loss_only_with_hidden_tokens():
    model = AVTeST(3, dim=16, layers=1, heads=2, max_len=8)
    e_g, e_a, y = torch.randn(4, 8, 256), torch.randn(4, 8, 256), torch.tensor([0, 1, 2, 0])
    losses = avgn_losses(model, e_g, e_a, y, t_g=3, k=2)
    assert set(losses) == {"p", "v", "a", "s", "mask", "ord"} and all(torch.isfinite(v) for v in losses.values())
    assert "mask" not in avgn_losses(model, e_g, e_a, y, t_g=8, k=2)
    sum(losses.values()).backward()
    assert model.fc_s.weight.grad is not None and model.mask_token.grad is not None


@pytest.mark.parametrize("k, t_g", [(1, 2), (4, 4), (10, None), (20, 1)])
def test_selector_never_returns_more_than_k_steps(k, t_g, tmp_path):
    store = fabricate_store(tmp_path / "s.zarr", n_videos=4)
    model = AVTeST(3, dim=16, layers=1, heads=2, max_len=16)
    sel = AVGNSelector("avgn", model, UnitCosts(image=0.97, audio=0.37, fusion=0.0, clip=81.0), k=k, t_g=t_g)
    for vid in store.video_ids():
        v = store.read_video(vid)
        out = sel.select(v)
        assert 1 <= len(out.steps) <= min(k, 16) and len(set(out.steps.tolist())) == len(out.steps)
        assert out.steps.min() >= 0 and out.steps.max() < v.n_steps
        assert out.gflops >= 16 * 0.37 + min(t_g or 16, 16) * 0.97


def test_train_avgn_and_bench_rows(tmp_path):
    store = fabricate_store(tmp_path / "s.zarr", n_videos=12)
    runs = tmp_path / "runs"
    cli = CliRunner()
    for extra in ([], ["--no-audio-tokens"], ["--no-mask-loss"]):
        res = cli.invoke(main, ["train-avgn", "--store", str(store.path), "--runs", str(runs), "--epochs", "2",
                                "--batch-size", "4", "--dim", "32", "--layers", "1", *extra])
        assert res.exit_code == 0, res.output
    res = cli.invoke(main, ["bench", "--store", str(store.path), "--runs", str(runs), "--methods", "uniform,avgn",
                            "--no-sweep"])
    assert res.exit_code == 0, res.output
    methods = pd.read_csv(runs / "bench" / "bench.csv")["method"].tolist()
    for k in (1, 4, 10):
        for t_g in (2, 4, "all"):
            assert f"AVGN (k={k}, T_G={t_g})" in methods
    assert "AVGN no audio tokens (k=4, T_G=8)" in methods and "AVGN no L_mask (k=4, T_G=all)" in methods
