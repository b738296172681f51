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
