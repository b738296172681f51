"""The shared training loop: schedules sized to the split, BatchNorm statistics that match the data at the end,
and training accuracy measured in eval mode."""
import torch
from torch import nn
from torch.nn import functional as F

from pipelines.train import MIN_STEPS, fit, minibatches, sized_schedule


def test_a_small_split_gets_smaller_batches_and_enough_steps():
    s = sized_schedule(70, 256, 25, (15, 20))
    assert s.batch_size == 8 and s.steps(70) >= MIN_STEPS
    assert s.epochs % 25 == 0 and s.milestones == (15 * s.epochs // 25, 20 * s.epochs // 25)
    big = sized_schedule(20000, 256, 25, (15, 20))
    assert (big.batch_size, big.epochs, big.milestones) == (256, 25, (15, 20))     # the paper's, unchanged
    assert sized_schedule(70, 256, 25, (15, 20), sized=False).batch_size == 256


def test_batchnorm_statistics_equal_the_datas_after_a_short_schedule():
    torch.manual_seed(0)
    x = torch.randn(64, 5) * 5 + 20                  # a common offset far from BN's initial statistics (0, 1)
    y = (x[:, 0] > 20).long()
    net = nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 2))

    def loss_fn(idx):
        logits = net(x[idx])
        return F.cross_entropy(logits, y[idx]), logits, y[idx]

    history = fit(net, minibatches(64, 32), loss_fn, epochs=1, lr=0.1, milestones=(), seed=0)   # 2 steps only
    bn = net[0]
    torch.testing.assert_close(bn.running_mean, x.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn.running_var, x.var(0), rtol=0.05, atol=1e-3)   # mean of two batch variances
    with torch.no_grad():
        acc = (net.eval()(x).argmax(1) == y).float().mean().item()
    assert history[-1]["final_train_acc"] == acc          # measured in eval mode, the way the bench evaluates


def test_prefetched_batches_come_in_order_and_errors_reach_the_consumer():
    import pytest

    from pipelines.train import prefetched

    assert list(prefetched(iter(range(50)))) == list(range(50))

    def broken():
        yield 1
        raise RuntimeError("collate failed")
    got = []
    with pytest.raises(RuntimeError, match="collate failed"):
        for x in prefetched(broken()):
            got.append(x)
    assert got == [1]
    it = prefetched(iter(range(10**6)))
    assert next(it) == 0
    it.close()                                   # a consumer that stops early does not hang the producer


def test_micro_batches_take_the_same_step_as_the_whole_batch():
    import torch
    from torch.nn import functional as F

    from pipelines.train import MicroBatches, fit

    x, y = torch.randn(24, 5, generator=torch.Generator().manual_seed(0)), torch.arange(24) % 3

    def run(split: bool):
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 3)

        def batches(gen):
            for idx in (torch.arange(0, 12), torch.arange(12, 24)):
                parts = [(x[p], y[p]) for p in (idx[:5], idx[5:])]
                yield MicroBatches(parts, len(idx)) if split else (x[idx], y[idx])

        def loss_fn(xb, yb):
            logits = model(xb)
            return F.cross_entropy(logits, yb), logits, yb
        history = fit(model, batches, loss_fn, 2, 0.1, (), 0, prefetch=False)
        return model.weight.detach().clone(), history[-1]["loss"]
    (w_whole, loss_whole), (w_split, loss_split) = run(False), run(True)
    assert torch.allclose(w_whole, w_split, atol=1e-6)
    assert abs(loss_whole - loss_split) < 1e-6


def test_a_cpu_batch_of_long_videos_is_cut_into_parts_and_a_gpu_batch_is_not():
    from pipelines.train_skim import CPU_PART_ELEMENTS, micro_batches

    n_steps = [563] * 256
    parts = micro_batches(list(range(256)), n_steps, 512, "cpu")
    assert sum(parts, []) == list(range(256)) and len(parts) > 1
    assert all(len(p) * 563 * 512 <= CPU_PART_ELEMENTS for p in parts)
    assert micro_batches(list(range(256)), n_steps, 512, "cuda") == [list(range(256))]
    assert micro_batches([0, 1, 2], [20, 30, 40], 512, "cpu") == [[0, 1, 2]]


def test_micro_batches_never_leave_one_video_alone_in_a_part():
    """A batch whose last part would hold one video (BatchNorm cannot train on one row: the 2,000-video store's
    length-sorted batches of 300-step videos cut 53 + 1) gets it moved into a part of at least two."""
    from pipelines.train_skim import CPU_PART_ELEMENTS, micro_batches
    width = 1024
    fits = CPU_PART_ELEMENTS // (300 * width)              # videos of 300 steps a part holds
    for size in (fits + 1, 2 * fits + 1, 3):
        n_steps = [300] * size
        parts = micro_batches(list(range(size)), n_steps, width, "cpu")
        assert sorted(j for p in parts for j in p) == list(range(size))
        assert all(len(p) >= 2 for p in parts), [len(p) for p in parts]
    parts = micro_batches([0, 1], [300, 300], CPU_PART_ELEMENTS // 300, "cpu")   # each video alone fills a part
    assert [len(p) for p in parts] == [2]


def test_similar_length_batches_hold_every_video_once_within_its_window_and_pad_little():
    from pipelines.train import similar_length_batches
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 600, (103,), generator=gen)
    perm = torch.randperm(103, generator=gen)
    windows = lambda g: [perm[:60][torch.randperm(60, generator=g)], perm[60:][torch.randperm(43, generator=g)]]
    window_of = {int(j): 0 for j in perm[:60]} | {int(j): 1 for j in perm[60:]}
    batches = list(similar_length_batches(windows, lengths, 16, lambda idx, g: (idx,))(torch.Generator().manual_seed(1)))
    seen = torch.cat([b[0] for b in batches])
    assert sorted(seen.tolist()) == list(range(103))                     # every video once
    assert all(len({window_of[int(j)] for j in b[0]}) == 1 for b in batches)
    assert all(2 <= len(b[0]) <= 16 for b in batches)
    padded = sum(len(b[0]) * int(lengths[b[0]].max()) for b in batches)
    shuffled = sum(len(c) * int(lengths[c].max()) for c in torch.split(perm, 16))
    assert padded < 0.8 * shuffled
    again = list(similar_length_batches(windows, lengths, 16, lambda idx, g: (idx,))(torch.Generator().manual_seed(2)))
    assert [b[0].tolist() for b in again] != [b[0].tolist() for b in batches]       # the order is drawn per epoch
