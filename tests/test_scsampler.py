import math

import numpy as np
import pytest
import torch

from models.scsampler import (JointSampler, SaliencySampler, convex_list, convex_score, intersect_list,
                              sal_cl_labels, sal_cl_loss, sal_rank_loss, union_list)


@pytest.mark.parametrize("n", [1, 2, 7, 10, 31])
def test_sal_cl_marks_exactly_floor_half_the_steps_the_best_by_f(n):
    f = torch.randn(n)
    labels = sal_cl_labels(f)
    assert labels.sum() == n // 2
    if n >= 2:
        assert f[labels == 1].min() >= f[labels == 0].max()


@pytest.mark.parametrize("n, want", [(1, 0), (2, 1), (3, 1), (4, 1), (7, 1), (8, 2), (31, 7), (40, 10)])
def test_sal_cl_at_k_tr_a_quarter_marks_floor_l_over_4_steps_at_least_one(n, want):
    f = torch.randn(n, generator=torch.Generator().manual_seed(n))
    labels = sal_cl_labels(f, 0.25)
    assert labels.sum() == want
    if n >= 2:
        assert f[labels == 1].min() >= f[labels == 0].max()
    assert sal_cl_labels(torch.arange(100.0), 0.29).sum() == 29       # no float floor below the product


def test_sal_cl_loss_takes_k_tr_and_refuses_a_fraction_outside_0_1():
    f = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3, 0.2, 0.0, 0.4])
    assert sal_cl_labels(f, 0.25).tolist() == [0, 1, 0, 1, 0, 0, 0, 0]
    logits = torch.full((8,), -3.0)
    logits[[1, 3]] = 3.0                                                  # right about the top quarter
    assert sal_cl_loss(logits, f, 0.25).item() == pytest.approx(math.log1p(math.exp(-3.0)), rel=1e-6)
    assert sal_cl_loss(logits, f) > 0.5                                   # steps 2 and 7 are salient at L/2 only
    for bad in (0.0, 1.5, -0.25):
        with pytest.raises(ValueError, match="K_tr"):
            sal_cl_labels(f, bad)


def test_k_tr_defaults_follow_scsampler_appendix_c1():
    from models.scsampler import k_tr_fraction
    assert k_tr_fraction("audio") == 0.25 and k_tr_fraction("spectrum") == 0.25     # both audio samplers
    assert [k_tr_fraction(m) for m in ("visual", "motion", "av", "av-motion", "av-cheap")] == [0.5] * 5


def test_ranking_loss_is_zero_for_pairs_ordered_beyond_the_margin():
    f = torch.tensor([0.9, 0.5, 0.1])
    ordered = torch.tensor([3.0, 1.5, 0.0])            # consecutive gaps >= margin 1
    assert sal_rank_loss(ordered, f, margin=1.0) == 0
    inside_margin = torch.tensor([0.3, 0.2, 0.1])
    assert sal_rank_loss(inside_margin, f, margin=1.0) > 0
    reversed_ = torch.tensor([0.0, 1.5, 3.0])
    assert sal_rank_loss(reversed_, f, margin=1.0) > sal_rank_loss(inside_margin, f, margin=1.0)


def test_ranking_loss_by_hand():
    f = torch.tensor([1.0, 0.0])
    s = torch.tensor([0.2, 0.5])                      # wrong order: loss = max(0, 1 - (0.2 - 0.5)) = 1.3
    assert sal_rank_loss(s, f, margin=1.0).item() == pytest.approx(1.3)


def test_union_list_takes_k_prime_visual_then_distinct_audio():
    rng = np.random.default_rng(0)
    v, a = rng.random(30), rng.random(30)
    a[np.argsort(-v)[:3]] += 10                       # the audio list starts with steps the visual list already has
    out = union_list(v, a, k=10, k_visual=8)
    assert len(out) == 10 == len(set(out.tolist()))
    assert set(out[:8].tolist()) == set(np.argsort(-v)[:8].tolist())
    assert not set(out[8:].tolist()) & set(np.argsort(-v)[:8].tolist())


@pytest.mark.parametrize("seed", range(5))
def test_intersect_list_grows_m_until_exactly_k(seed):
    rng = np.random.default_rng(seed)
    v, a = rng.random(40), rng.random(40)
    out = intersect_list(v, a, 10)
    assert len(out) == 10 == len(set(out.tolist()))
    m = next(m for m in range(10, 41) if len(np.intersect1d(np.argsort(-v)[:m], np.argsort(-a)[:m])) >= 10)
    assert set(out.tolist()) <= set(np.argsort(-v)[:m].tolist()) & set(np.argsort(-a)[:m].tolist())


def test_convex_combinations_reduce_to_a_single_list_at_alpha_one():
    rng = np.random.default_rng(1)
    v, a = rng.random(20), rng.random(20)
    top = np.argsort(-v)[:5].tolist()
    assert convex_score(v, a, 5, alpha=1.0).tolist() == top
    assert convex_list(v, a, 5, alpha=1.0).tolist() == top
    assert convex_score(v, a, 5, alpha=0.0).tolist() == np.argsort(-a)[:5].tolist()


def test_convex_combinations_by_hand_between_the_lists():
    v, a = np.array([0.9, 0.1, 0.5, 0.2]), np.array([0.0, 0.8, 0.4, 0.9])
    # score 0.75 v + 0.25 a = [0.675, 0.275, 0.475, 0.375]; 0.25 v + 0.75 a = [0.225, 0.625, 0.425, 0.725]
    assert convex_score(v, a, 2, alpha=0.75).tolist() == [0, 2]
    assert convex_score(v, a, 2, alpha=0.25).tolist() == [3, 1]
    # ranks: visual [0, 3, 1, 2], audio [3, 1, 2, 0]
    # 0.8 / 0.2 -> positions [0.6, 2.6, 1.2, 1.6]; 0.3 / 0.7 -> [2.1, 1.6, 1.7, 0.6]
    assert convex_list(v, a, 3, alpha=0.8).tolist() == [0, 2, 3]
    assert convex_list(v, a, 3, alpha=0.3).tolist() == [3, 1, 2]


def test_sal_rank_averages_its_hinges_over_ordered_pairs_and_skips_ties():
    f = torch.tensor([3.0, 1.0, 2.0, 1.0])
    s = torch.tensor([0.5, 0.0, 1.0, 0.2])
    # (0,1) z=+1: 1 - 0.5 = 0.5; (0,2) +1: 1 - (0.5 - 1) = 1.5; (0,3) +1: 1 - 0.3 = 0.7; (1,2) z=-1: 1 + (0 - 1) = 0;
    # (1,3) a tie in f: skipped; (2,3) +1: 1 - 0.8 = 0.2.  Mean over the 5 ordered pairs: 2.9 / 5
    assert sal_rank_loss(s, f, margin=1.0).item() == pytest.approx(2.9 / 5)
    assert sal_rank_loss(s[:2], f[:2], margin=0.25).item() == pytest.approx(0.0)
    assert sal_rank_loss(s, torch.ones(4)).item() == 0.0                   # all ties: nothing to rank


def test_sal_cl_labels_and_loss_by_hand():
    f = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3])
    assert sal_cl_labels(f).tolist() == [0, 1, 0, 1, 0]
    logits = torch.tensor([0.0, 2.0, -1.0, 1.0, 3.0])
    sig = [1 / (1 + math.exp(-x)) for x in logits.tolist()]
    want = -sum(math.log(p) if y else math.log(1 - p) for p, y in zip(sig, [0, 1, 0, 1, 0])) / 5
    assert sal_cl_loss(logits, f).item() == pytest.approx(want, rel=1e-6)


def test_sampler_saliency_is_the_sigmoid_of_its_logit_or_the_top_class_probability():
    torch.manual_seed(0)
    z = torch.randn(12, 16) * 3
    for loss in ("sal-cl", "sal-rank"):
        s = SaliencySampler(16, loss, 5).eval()
        with torch.no_grad():
            want = [1 / (1 + math.exp(-x)) for x in s(z).tolist()]
            assert s.saliency(z).tolist() == pytest.approx(want, rel=1e-5)
    s = SaliencySampler(16, "ac", 5).eval()
    with torch.no_grad():
        rows = s(z).tolist()
        want = [max(math.exp(x) for x in r) / sum(math.exp(x) for x in r) for r in rows]
        assert s.saliency(z).tolist() == pytest.approx(want, rel=1e-5)
    sv, sa = SaliencySampler(16, "sal-rank", 5).eval(), SaliencySampler(16, "sal-rank", 5).eval()
    joint = JointSampler(sv, sa).eval()
    with torch.no_grad():
        # the two logits are averaged, then squashed (not the average of two sigmoids)
        want = [1 / (1 + math.exp(-(x + y) / 2)) for x, y in zip(sv(z).tolist(), sa(-z).tolist())]
        assert joint.saliency(z, -z).tolist() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("ties", [False, True])
def test_batched_combinations_give_the_per_video_steps_in_order(ties):
    """Over padded blocks of videos of 1..40 steps, with and without tied saliencies: the (B, N) versions of top-K
    and the four combinations return exactly each video's per-video answer, in the same order."""
    from models.scsampler import convex_list_batch, intersect_list_batch, top_k, union_list_batch
    from models.selection import NO_STEP, masked_top
    rng = np.random.default_rng(7 + ties)
    for _ in range(60):
        lengths = rng.integers(1, 41, rng.integers(1, 7))
        n_max, k_max, k_visual = int(lengths.max()), int(rng.integers(1, 13)), int(rng.integers(1, 10))
        v, a = (rng.random((len(lengths), n_max)).astype(np.float32) for _ in range(2))
        if ties:
            v, a = (np.round(v * 4) / 4).astype(np.float32), (np.round(a * 3) / 3).astype(np.float32)
        mask = torch.arange(n_max)[None] < torch.from_numpy(lengths)[:, None]
        vt, at = torch.from_numpy(v).masked_fill(~mask, 0), torch.from_numpy(a).masked_fill(~mask, 0)
        k, width = torch.from_numpy(lengths).clamp(max=k_max), min(k_max, n_max)
        got = {top_k: masked_top(vt, mask, k_max), convex_score: masked_top(0.9 * vt + (1 - 0.9) * at, mask, k_max),
               convex_list: convex_list_batch(vt, at, mask, k, width, 0.8),
               union_list: union_list_batch(vt, at, mask, k, width, k_visual),
               intersect_list: intersect_list_batch(vt, at, mask, k, width)}
        for i, n in enumerate(lengths):
            kk, vi, ai = min(k_max, n), v[i, :n], a[i, :n]
            want = {top_k: top_k(vi, kk), convex_score: convex_score(vi, ai, kk, 0.9),
                    convex_list: convex_list(vi, ai, kk, 0.8), union_list: union_list(vi, ai, kk, k_visual),
                    intersect_list: intersect_list(vi, ai, kk)}
            for fn, steps in got.items():
                row = steps[i][steps[i] != NO_STEP].tolist()
                assert row == want[fn].tolist(), (fn.__name__, n, k_max)


def test_equal_input_rows_get_their_first_steps_saliency():
    from models.scsampler import equal_rows_tied
    a, b = torch.ones(3), torch.zeros(3)
    s = torch.tensor([0.5, 0.5000001, 0.3, 0.5000002])
    assert equal_rows_tied(s, torch.stack([a, a, b, a])).tolist() == [s[0].item(), s[0].item(), s[2].item(),
                                                                     s[0].item()]
    # joint inputs: rows are equal only when equal in both
    got = equal_rows_tied(s, torch.stack([a, a, b, a]), torch.stack([a, b, b, a]))
    assert got.tolist() == [s[0].item(), s[1].item(), s[2].item(), s[0].item()]


def test_a_constant_stretch_is_ranked_by_step_not_by_rounding_noise():
    """A video without audio: every spectrum row equal. A sampler that scores equal rows a rounding error apart by
    their place (as BLAS can) must not rank them by it."""
    from models.baselines import StepClassifier
    from models.scsampler import SamplerSelector
    from models.selection import UnitCosts

    class PlaceNoise(SaliencySampler):
        def saliency(self, z):
            return super().saliency(z) + 1e-7 * torch.arange(len(z))

    torch.manual_seed(0)
    sampler = PlaceNoise(40, "sal-rank", 3)
    n = 12
    video = type("V", (), {"arrays": {"spectrum": np.full((n, 40), np.log(1e-6), np.float16),
                                      "r2p1d": np.zeros((n, 512), np.float16)}, "attrs": {}})()
    sel = SamplerSelector("s", {"spectrum": sampler}, UnitCosts(0, 0, 0, 0), (StepClassifier(512, 3), "r2p1d"), k=4)
    assert sel.select(video).steps.tolist() == [0, 1, 2, 3]
