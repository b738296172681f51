import numpy as np
import pytest
import torch

from models.imgaud import Fusion
from models.skim import ImgAudSkimmer, interpolate_features, kept_steps, soft_index


def test_soft_index_is_the_weighted_sum():
    torch.manual_seed(0)
    w = torch.softmax(torch.randn(2, 7), 1)
    z = torch.randn(2, 7, 5)
    want = torch.stack([sum(w[b, j] * z[b, j] for j in range(7)) for b in range(2)])
    torch.testing.assert_close(soft_index(w, z), want)


@pytest.mark.parametrize("s", [1, 2, 3, 5, 10])
@pytest.mark.parametrize("n", [1, 2, 9, 23, 50])
def test_interpolation_is_exact_on_linear_sequences(s, n):
    t = torch.arange(n, dtype=torch.float32)[:, None]
    z = 3.0 * t + torch.tensor([[1.0, -2.0, 0.5]])
    torch.testing.assert_close(interpolate_features(z, s), z)


def test_interpolation_only_reads_the_kept_steps():
    z = torch.randn(23, 4)
    kept = kept_steps(23, 5)
    assert kept.tolist() == [0, 5, 10, 15, 20, 22]
    poisoned = z.clone()
    others = torch.ones(23, dtype=torch.bool)
    others[kept] = False
    poisoned[others] = 1e6
    torch.testing.assert_close(interpolate_features(poisoned, 5), interpolate_features(z, 5))


@pytest.fixture(params=["audio-visual", "visual", "single"])
def skimmer(request):
    torch.manual_seed(0)
    return ImgAudSkimmer(Fusion(), num_classes=4, indexing=request.param).eval()


def run(skimmer, z_i, z_a, mask, steps, hard=False, fused=None):
    with torch.no_grad():
        if fused is None:
            fused = torch.randn(*mask.shape, 512, generator=torch.Generator().manual_seed(1))
        return skimmer(z_i, z_a, mask, steps, hard, z_fused=fused)


@pytest.mark.parametrize("hard", [False, True])
def test_masking_never_reselects_and_early_stop_uses_exactly_t_steps(skimmer, hard):
    torch.manual_seed(1)
    lengths = [15, 40, 12]
    mask = torch.zeros(3, 40, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    z_i, z_a = torch.randn(3, 40, 256), torch.randn(3, 40, 256)
    for t in (1, 3, 10):
        out = run(skimmer, z_i, z_a, mask, t, hard)
        # T inputs: the mean start and T - 1 looked-at moments (Eq. 5, 9)
        assert out.steps.shape == (3, t - 1) and out.fused.shape[1] == t
        for i, n in enumerate(lengths):
            chosen = out.steps[i].tolist()
            assert len(set(chosen)) == t - 1             # no step chosen twice
            assert all(0 <= j < n for j in chosen)       # never a padded step


def test_padding_does_not_change_a_videos_result(skimmer):
    torch.manual_seed(2)
    z_i, z_a, z_f = torch.randn(1, 20, 256), torch.randn(1, 20, 256), torch.randn(1, 20, 512)
    alone = run(skimmer, z_i, z_a, torch.ones(1, 20, dtype=torch.bool), 5, fused=z_f)
    pad_i = torch.cat([z_i, torch.randn(1, 10, 256)], 1)
    pad_a = torch.cat([z_a, torch.randn(1, 10, 256)], 1)
    pad_f = torch.cat([z_f, torch.randn(1, 10, 512)], 1)
    mask = torch.zeros(1, 30, dtype=torch.bool)
    mask[0, :20] = True
    padded = run(skimmer, pad_i, pad_a, mask, 5, fused=pad_f)
    assert padded.steps.tolist() == alone.steps.tolist()
    torch.testing.assert_close(padded.logits, alone.logits, rtol=1e-4, atol=1e-5)


def test_eq9_by_hand_on_a_two_step_example():
    """m = (Psi(z~_1) + Psi(z~_2)) / 2: z~_1 the mean features, z~_2 from the first attention by Eq. 6-8."""
    torch.manual_seed(3)
    sk = ImgAudSkimmer(Fusion(), 3).eval()
    z_i, z_a = torch.randn(1, 6, 256), torch.randn(1, 6, 256)
    mask = torch.ones(1, 6, dtype=torch.bool)
    with torch.no_grad():
        out = sk(z_i, z_a, mask, steps=2)
        x1 = sk.fusion(z_i.mean(1), z_a.mean(1))
        h, _ = sk.lstm(x1)
        w_i = torch.softmax((sk.key_i(z_i, mask)[0] @ sk.query_i(h)[0]) / 512 ** 0.5, 0)
        w_a = torch.softmax((sk.key_a(z_a, mask)[0] @ sk.query_a(h)[0]) / 512 ** 0.5, 0)
        s_i, s_a = torch.softmax(sk.modality(h)[0], 0)
        zi2 = s_i * (w_i @ z_i[0]) + s_a * (w_a @ z_i[0])
        za2 = s_i * (w_i @ z_a[0]) + s_a * (w_a @ z_a[0])
        x2 = sk.fusion(zi2[None], za2[None])
        m = (x1 + x2) / 2
        torch.testing.assert_close(out.fused[0], torch.cat([x1, x2]), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.logits, sk.classifier(m), rtol=1e-4, atol=1e-5)
        assert out.steps[0].tolist() == [int(torch.argmax(s_i * w_i + s_a * w_a))]
        torch.testing.assert_close(out.prefix_means()[0, 0], x1[0])


def test_short_video_cycles_through_its_steps_when_t_exceeds_n():
    sk = ImgAudSkimmer(Fusion(), 3).eval()
    out = run(sk, torch.randn(1, 4, 256), torch.randn(1, 4, 256), torch.ones(1, 4, dtype=torch.bool), 10)
    assert sorted(out.steps[0, :4].tolist()) == [0, 1, 2, 3]
    assert np.all((out.steps.numpy() >= 0) & (out.steps.numpy() < 4))


def test_unknown_indexing_mode_is_refused():
    with pytest.raises(ValueError, match="indexing"):
        ImgAudSkimmer(Fusion(), 3, indexing="telepathy")


def test_batched_interpolation_equals_each_video_interpolated_alone():
    from models.skim import interpolate_features, interpolate_padded
    from pipelines.data import pad

    gen = torch.Generator().manual_seed(0)
    lengths = [1, 2, 3, 5, 6, 10, 11, 17]
    videos = [torch.randn(n, 4, generator=gen) for n in lengths]
    batch, mask = pad(videos)
    for s in (2, 5, 10):
        want, _ = pad([interpolate_features(v, s) for v in videos])
        got = interpolate_padded(batch, mask.sum(1), s)
        assert torch.equal(got, want), s
    assert torch.equal(interpolate_padded(batch, mask.sum(1), 1), batch)


@pytest.mark.parametrize("indexing", ["audio-visual", "visual", "single"])
def test_key_bank_gradients_equal_plain_autograd_through_the_keys(indexing, monkeypatch):
    import models.skim as skim
    from models.imgaud import Fusion
    torch.manual_seed(0)
    sk = ImgAudSkimmer(Fusion(), 4, indexing=indexing).train()
    gen = torch.Generator().manual_seed(1)
    z_i, z_a, z_f = (torch.randn(3, 9, d, generator=gen) for d in (256, 256, 512))
    mask = torch.arange(9)[None] < torch.tensor([9, 5, 7])[:, None]

    def grads():
        sk.zero_grad()
        out = sk(z_i, z_a, mask, 5, z_fused=z_f)
        (out.logits.square().sum() + out.fused.square().sum()).backward()
        return {n: p.grad.clone() for n, p in sk.named_parameters() if p.grad is not None}

    banked = grads()
    monkeypatch.setattr(skim.KeyBank, "scores",
                        lambda self, q: torch.bmm(q.unsqueeze(1), self.keys.transpose(1, 2)).squeeze(1))
    plain = grads()
    assert banked.keys() == plain.keys() and any("key" in n for n in plain)
    for n in plain:
        torch.testing.assert_close(banked[n], plain[n], rtol=1e-4, atol=1e-6)


# --- NON-RECURRENT trained as evaluated (issue 25, item 2) -----------------------------------------------------------

def nr_inputs():
    torch.manual_seed(3)
    mask = torch.zeros(3, 15, dtype=torch.bool)
    for i, n in enumerate((15, 6, 12)):                  # one video shorter than the 10 looks
        mask[i, :n] = True
    return torch.randn(3, 15, 256) * mask[..., None], torch.randn(3, 15, 256) * mask[..., None], mask


def test_non_recurrent_classifies_psi_averaged_over_the_top_attention_steps():
    from models.skim import non_recurrent
    z_i, z_a, mask = nr_inputs()
    net = ImgAudSkimmer(Fusion(), num_classes=4).eval()
    with torch.no_grad():
        steps, logits = non_recurrent(net, z_i, z_a, mask, k=10)
        w = net.first_query_weights(z_i, z_a, mask)
        for b in range(3):
            n = int(mask[b].sum())
            top = sorted(range(n), key=lambda j: -w[b, j].item())[:10]
            assert steps[b][steps[b] >= 0].tolist() == top
            m = net.fusion(z_i[b, top], z_a[b, top]).mean(0, keepdim=True)
            torch.testing.assert_close(logits[b:b + 1], net.classify(m))


def test_straight_through_keeps_the_evaluated_forward_and_trains_the_query():
    from models.skim import non_recurrent
    z_i, z_a, mask = nr_inputs()
    net = ImgAudSkimmer(Fusion(), num_classes=4).eval()       # eval: the same BatchNorm statistics in both passes
    y = torch.tensor([0, 1, 2])
    with torch.no_grad():
        want_steps, want = non_recurrent(net, z_i, z_a, mask, k=10)
    steps, logits = non_recurrent(net, z_i, z_a, mask, k=10, straight_through=True)
    assert torch.equal(steps, want_steps)
    torch.testing.assert_close(logits, want)
    torch.nn.functional.cross_entropy(logits, y).backward()
    for name in ("query_i", "query_a", "key_i", "key_a", "modality"):
        grads = [p.grad for p in getattr(net, name).parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name
    net.zero_grad(set_to_none=True)
    _, hard = non_recurrent(net, z_i, z_a, mask, k=10)       # the hard top-k alone: nothing reaches the query
    torch.nn.functional.cross_entropy(hard, y).backward()
    assert net.query_i[0].weight.grad is None and net.modality.weight.grad is None


def test_train_skim_fits_non_recurrent_on_the_selectors_input(tmp_path, monkeypatch):
    import pipelines.train_skim as ts
    from models.selection import UnitCosts, VideoBlock
    from models.skim import NonRecurrentSelector
    from tests.test_bench import CLASSES, fabricate_store
    calls = []
    real = ts.non_recurrent

    def spy(net, z_i, z_a, mask, k, straight_through=False):
        calls.append((k, straight_through, net.training))
        return real(net, z_i, z_a, mask, k, straight_through)
    monkeypatch.setattr(ts, "non_recurrent", spy)
    store = fabricate_store(tmp_path / "s.zarr", n_videos=12)
    trained = ts.train_skim(store, tmp_path / "runs", model="non-recurrent", epochs=2, batch_size=4, sized=False)
    assert calls and {k for k, _, _ in calls} == {10}
    # training steps pass gradients straight through; BatchNorm's recalibration and the eval-mode fit do not
    assert any(st and tr for _, st, tr in calls) and any(not st and not tr for _, st, tr in calls)
    assert all(tr for _, st, tr in calls if st)
    # the fit the trainer reports (eval mode, training split) is the selector's accuracy on those videos
    videos = [store.read_video(v) for v in store.video_ids()]
    videos = [v for v in videos if v.attrs["split"] == "train"]
    sel = NonRecurrentSelector("nr", trained.model, UnitCosts(0.0, 0.0, 0.0, 0.0))
    answers = sel.select_batch(VideoBlock.of(videos))
    acc = np.mean([int(answers.scores[i].argmax()) == CLASSES.index(v.attrs["label"]) for i, v in enumerate(videos)])
    assert trained.history[-1]["final_train_acc"] == pytest.approx(acc)
    assert torch.load(trained.path, weights_only=True)["config"]["steps"] == 10


# --- the skimmers' training protocols (issue 25, item 1) -----------------------------------------------------------

@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from tests.test_bench import fabricate_store
    return fabricate_store(tmp_path_factory.mktemp("proto") / "s.zarr", n_videos=12)


def spied_training(store, runs, monkeypatch, **options):
    """train_skim with spies: the subsampling factors of the indexing features, the rows of every batch's loss
    and every input of the classifier's BatchNorm (train mode or not, gradients or not, the values)."""
    import pipelines.train_skim as ts
    seen = {"s": [], "rows": [], "bn": []}
    interpolate, loss, build = ts.interpolate_padded, ts.skim_loss, ts.build_skim_model

    def spy_interpolate(z, lengths, s):
        seen["s"].append(s)
        return interpolate(z, lengths, s)

    def spy_loss(net, model, feats, real, mask, y, steps, prefixes):
        seen["rows"].append(len(y))
        return loss(net, model, feats, real, mask, y, steps, prefixes)

    def spy_build(*args):
        net = build(*args)
        net.classifier[0].register_forward_pre_hook(
            lambda m, inp: seen["bn"].append((m.training, torch.is_grad_enabled(), inp[0].detach().clone())))
        return net
    monkeypatch.setattr(ts, "interpolate_padded", spy_interpolate)
    monkeypatch.setattr(ts, "skim_loss", spy_loss)
    monkeypatch.setattr(ts, "build_skim_model", spy_build)
    trained = ts.train_skim(store, runs, model="skim", epochs=1, batch_size=4, sized=False, **options)
    return trained, seen


def recalibrated_mean(seen) -> torch.Tensor:
    """The classifier BatchNorm's running mean as the recalibration pass (train mode, no gradients, cumulative
    average over its calls) sets it from the inputs seen."""
    return torch.stack([x.mean(0) for training, grad, x in seen["bn"] if training and not grad]).mean(0)


def test_paper_protocol_fixed_t_loss_on_m_t_one_s_and_batchnorm_of_m_t(small_store, tmp_path, monkeypatch):
    trained, seen = spied_training(small_store, tmp_path, monkeypatch, subsample=5)
    assert trained.path == tmp_path / "skim.pt"
    assert set(seen["s"]) == {5}                               # one s for the run, every batch
    # one classifier input per batch, of its rows: m_T alone (no prefix means), in training and recalibration
    assert [len(x) for _, _, x in seen["bn"]] == seen["rows"]
    torch.testing.assert_close(trained.model.classifier[0].running_mean, recalibrated_mean(seen))
    cfg = torch.load(trained.path, weights_only=True)["config"]
    assert (cfg["protocol"], cfg["prefix_loss"], cfg["train_subsample"], cfg["steps"]) == ("paper", False, [5], 10)


def test_fs_protocol_adds_prefix_losses_draws_s_and_sits_beside_the_papers(small_store, tmp_path, monkeypatch):
    from pipelines.train_skim import load_skim_model, train_skim
    paper = train_skim(small_store, tmp_path, model="skim", epochs=1, batch_size=4, sized=False)
    trained, seen = spied_training(small_store, tmp_path, monkeypatch, protocol="fs")
    assert trained.path == tmp_path / "skim-fs.pt" and paper.path.is_file()
    assert set(seen["s"]) <= {2, 5, 10} and len(set(seen["s"])) > 1
    # each batch: m_T, then the T - 1 = 9 prefix means of every video through the same classifier
    assert [len(x) for _, _, x in seen["bn"]] == [r for rows in seen["rows"] for r in (rows, 9 * rows)]
    torch.testing.assert_close(trained.model.classifier[0].running_mean, recalibrated_mean(seen))
    net, cfg = load_skim_model(small_store, tmp_path, "skim-fs")
    assert (cfg["protocol"], cfg["prefix_loss"], cfg["train_subsample"]) == ("fs", True, [1, 2, 5, 10])
    cfg = load_skim_model(small_store, tmp_path, "skim")[1]
    assert (cfg["protocol"], cfg["train_subsample"]) == ("paper", [1])     # the paper's default: all indexing features


def test_protocol_names_and_refusals(small_store, tmp_path):
    from pipelines.train_skim import checkpoint_model, checkpoint_name, checkpoint_note, train_skim
    assert [checkpoint_name(m, "fs") for m in ("skim", "skim-visual", "skim-single", "lstm", "non-recurrent")] == [
        "skim-fs", "skim-visual-fs", "skim-single-fs", "lstm", "non-recurrent"]
    assert checkpoint_model("skim-visual-fs") == ("skim-visual", "fs") and checkpoint_model("lstm") == ("lstm", None)
    with pytest.raises(ValueError, match="subsample"):
        train_skim(small_store, tmp_path, protocol="fs", subsample=5)
    with pytest.raises(ValueError, match="protocol"):
        train_skim(small_store, tmp_path, protocol="authors")
    # a skimmer written before --protocol was trained with fs's recipe: the bench says so under the paper's name
    assert "fs protocol" in checkpoint_note("skim", {"model": "skim", "steps": 10})
    assert checkpoint_note("skim", {"protocol": "paper"}) is None
    assert "T = 2" in checkpoint_note("non-recurrent", {"model": "non-recurrent", "steps": 2})
