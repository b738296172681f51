import numpy as np
import pytest
import torch

from models.scsampler import (JointSampler, SaliencySampler, convex_list, convex_score, intersect_list,
                              sal_cl_labels, sal_rank_loss, union_list)


@pytest.mark.parametrize("n", [1, 2, 7, 10, 31])
def test_sal_cl_marks_exactly_floor_half_the_steps_the_best_by_f(n):
    f = torch.randn(n)
    labels = sal_cl_labels(f)
    assert labels.sum() == n // 2
    if n >= 2:
        assert f[labels == 1].min() >= f[labels == 0].max()


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
    assert len(set(convex_list(v, a, 5, alpha=0.5).tolist())) == 5


def test_samplers_give_saliency_in_unit_interval():
    z = torch.randn(12, 256)
    for loss in ("ac", "sal-cl", "sal-rank"):
        s = SaliencySampler(256, loss, 5).eval()
        sal = s.saliency(z)
        assert sal.shape == (12,) and (sal >= 0).all() and (sal <= 1).all()
    joint = JointSampler(SaliencySampler(256, "sal-rank", 5), SaliencySampler(256, "sal-rank", 5)).eval()
    assert joint.saliency(z, z).shape == (12,)
