import math

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
    assert glance_order(16) == [0, 8, 4, 12, 2, 6, 10, 14, 1, 3, 5, 7, 9, 11, 13, 15]
    assert glance_order(1) == [0] and glance_order(4) == [0, 2, 1, 3]


def test_sample_steps_takes_the_bin_centres_in_glance_order():
    # 16 bins of 100 / 16 = 6.25 steps: centres 3.125, 9.375, ..., 96.875, floored to 3, 9, 15, 21, 28, ...
    centres = [int((i + 0.5) * 6.25) for i in range(16)]
    assert centres[:5] == [3, 9, 15, 21, 28] and centres[-1] == 96
    want = [3, 53, 28, 78, 15, 40, 65, 90, 9, 21, 34, 46, 59, 71, 84, 96]
    assert want == [centres[i] for i in [0, 8, 4, 12, 2, 6, 10, 14, 1, 3, 5, 7, 9, 11, 13, 15]]
    assert sample_steps(100, 16).tolist() == want
    # a video shorter than t repeats steps: bins of 0.5, centres 0.25, 0.75, 1.25, ... -> 0, 0, 1, 1, ...
    assert sample_steps(2, 4).tolist() == [0, 1, 0, 1]


def _ce(logits, y):
    """Mean cross-entropy written out: logsumexp - the true logit."""
    return sum(torch.logsumexp(row, 0) - row[c] for row, c in zip(logits, y)) / len(y)


def test_losses_s_mask_and_ord_by_hand(monkeypatch):
    torch.manual_seed(0)
    model = AVTeST(3, image_dim=4, audio_dim=4, dim=4, layers=1, heads=1, max_len=4).eval()   # no dropout
    e_g, e_a, y = torch.randn(2, 4, 4), torch.randn(2, 4, 4), torch.tensor([0, 2])
    t_g, k = 2, 2
    # no Gumbel noise: the soft sample is the softmax of the saliency logits, so the top-k is fixed
    monkeypatch.setattr(torch.nn.functional, "gumbel_softmax",
                        lambda logits, tau=1.0, hard=False, dim=-1: torch.softmax(logits / tau, dim))
    losses = avgn_losses(model, e_g, e_a, y, t_g=t_g, k=k)
    with torch.no_grad():
        visible = torch.tensor([[True, True, False, False]] * 2)
        g = model.glance(e_g, e_a, visible)
        fused = model.fused(e_g, e_a)
        # L_s: mean |s_t - s~_t|, s~_t = max_c softmax(per-step logits) / its max over t (Eq. 12)
        want_s, want_mask, want_ord = 0.0, 0.0, []
        for b in range(2):
            conf = []
            for t in range(4):
                logit = model.f_av.out(torch.relu(model.f_av.step[0](fused[b, t])))
                e = [math.exp(v) for v in logit.tolist()]
                conf.append(max(e) / sum(e))
            for t in range(4):
                want_s += abs(g.saliency[b, t].item() - conf[t] / max(conf)) / 8
            # L_mask: squared error of the decoded hidden positions against their unmasked visual tokens
            for t in range(t_g, 4):
                rec = model.mask_decoder(g.tf_out[b, t])
                tok = model.embed_v(model.norm_g(e_g[b, t]))
                want_mask += ((rec - tok) ** 2).sum().item() / (2 * 2 * 4)
            # L_ord: the k most salient steps, classified by f_av (max over the k steps)
            top = sorted(range(4), key=lambda t: -g.saliency_logits[b, t].item())[:k]
            h = torch.relu(model.f_av.step[0](fused[b, top])).max(0).values
            want_ord.append(model.f_av.out(h))
        want_ord = _ce(torch.stack(want_ord), y).item()
    assert losses["s"].item() == pytest.approx(want_s, rel=1e-5)
    assert losses["mask"].item() == pytest.approx(want_mask, rel=1e-5)
    assert losses["ord"].item() == pytest.approx(want_ord, rel=1e-5)
    assert "mask" not in avgn_losses(model, e_g, e_a, y, t_g=4, k=2)
    assert "mask" not in avgn_losses(model, e_g, e_a, y, t_g=2, k=2, use_mask_loss=False)
    model.train()
    losses = avgn_losses(model, e_g, e_a, y, t_g=t_g, k=k)
    sum(losses.values()).backward()
    assert model.fc_s.weight.grad.abs().sum() > 0 and model.mask_token.grad.abs().sum() > 0


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


# --- AVGN's transformer counted (issue 25, item 4): the fused fast path is invisible to FlopCounterMode ---------------

def encoder_flops(tokens: int, width: int, ffn: int, layers: int) -> int:
    """A transformer encoder by hand, 2 FLOPs per multiply-add, per layer: Q, K, V and output projections
    (4 x tokens x width^2), the scores QK^T and the weighted sum AV (2 x tokens^2 x width, summed over heads) and
    the two feed-forward matmuls (2 x tokens x width x ffn)."""
    return layers * 2 * (4 * tokens * width ** 2 + 2 * tokens ** 2 * width + 2 * tokens * width * ffn)


def glance_flops(t: int, dim: int, layers: int, audio_tokens: bool = True) -> int:
    """AV-TeST's glance over t steps: token embeddings (256 -> dim each), the encoder on 2 dim wide tokens (feed-forward
    4 dim), FC_s."""
    embed = 2 * t * 256 * dim * (2 if audio_tokens else 1)
    return embed + encoder_flops(t, 2 * dim, 4 * dim, layers) + 2 * t * 2 * dim


def classify_flops(rows: int, t: int, dim: int, classes: int, hidden: int = 256) -> int:
    """The prediction head on ``rows`` chosen steps against the t-step audio sequence: projections, psi (q on rows,
    k and v on t, scores and weighted sum rows x t, output), f_C^AV per row and its output layer once."""
    proj = 2 * rows * 256 * dim + 2 * t * 256 * dim
    psi = 2 * rows * dim * dim + 2 * 2 * t * dim * dim + 2 * 2 * rows * t * dim + 2 * rows * dim * dim
    return proj + psi + 2 * rows * 2 * dim * hidden + 2 * hidden * classes


@pytest.mark.parametrize("tokens, dim, layers, heads", [(8, 16, 1, 2), (16, 32, 2, 4), (5, 8, 3, 1)])
def test_transformer_gflops_equal_the_hand_formula_in_eval_and_inference_mode(tokens, dim, layers, heads):
    from models.selection import counted_gflops
    model = AVTeST(3, dim=dim, layers=layers, heads=heads, max_len=tokens).eval()
    x = torch.randn(1, tokens, 2 * dim)
    assert counted_gflops(model.encoder, x) * 1e9 == pytest.approx(encoder_flops(tokens, 2 * dim, 4 * dim, layers))
    assert torch.backends.mha.get_fastpath_enabled()          # the count leaves the fast path on for real runs


@pytest.mark.parametrize("k, t_g, audio_tokens", [(4, None, True), (2, 3, False)])
def test_selector_gflops_count_the_transformer_per_video_and_in_blocks(k, t_g, audio_tokens):
    from models.selection import VideoBlock
    from tests.test_costs import FREE, _video
    torch.manual_seed(0)
    t, dim, layers = 8, 16, 2
    model = AVTeST(3, dim=dim, layers=layers, heads=2, max_len=t, use_audio_tokens=audio_tokens).eval()
    sel = AVGNSelector("avgn", model, FREE, k=k, t_g=t_g, t=t)
    videos = [_video(n, seed=n) for n in (20, 3, 11)]
    block = VideoBlock.of(videos)
    batch = sel.select_batch(block)
    for i, video in enumerate(videos):
        one = sel.select(video)
        want = glance_flops(t, dim, layers, audio_tokens) + classify_flops(len(one.steps), t, dim, 3)
        assert one.gflops * 1e9 == pytest.approx(want), i
        assert batch.video(i).gflops * 1e9 == pytest.approx(want), i


# --- T_G = all is trained (issue 25, item 3) -----------------------------------------------------------------------

def test_training_draws_every_glance_count_the_bench_reads_all_included():
    from pipelines.train_avgn import draw_glances, training_glances
    assert training_glances(16) == tuple(range(1, 13)) + (16,)
    assert training_glances(8) == tuple(range(1, 9))                # all 8 is already among 1..12
    gen = torch.Generator().manual_seed(0)
    drawn = [draw_glances(16, gen) for _ in range(400)]
    assert set(drawn) == set(range(1, 13)) | {16}
    assert 15 < drawn.count(16) < 50                                 # uniform over 13 values: 400 / 13 = 31


def test_train_avgn_trains_on_all_glances(tmp_path, monkeypatch):
    import pipelines.train_avgn as train_avgn_module
    seen = []
    real = train_avgn_module.avgn_losses

    def spy(model, e_g, e_a, y, t_g, k, **kw):
        if model.training:
            seen.append((t_g, e_g.shape[1]))
        return real(model, e_g, e_a, y, t_g, k, **kw)
    monkeypatch.setattr(train_avgn_module, "avgn_losses", spy)
    store = fabricate_store(tmp_path / "s.zarr", n_videos=12)
    trained = train_avgn_module.train_avgn(store, tmp_path / "runs", layers=1, heads=2, dim=16, t=16, k=2, epochs=5,
                                           batch_size=2, milestones=(20,), sized=False)
    assert {t for t, _ in seen} >= {1, 12, 16} and {t for t, _ in seen} <= set(range(1, 13)) | {16}
    assert all(width == 16 for _, width in seen)
    assert torch.load(trained.path, weights_only=True)["config"]["train_glances"] == list(range(1, 13)) + [16]
