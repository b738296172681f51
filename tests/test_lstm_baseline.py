"""The LSTM baseline: the fused (packed) forward equals the explicit cell steps; old checkpoints still load."""
import torch
from torch import nn

from models.baselines import LSTMBaseline


def _padded_batch(lengths, dim=512, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(lengths), max(lengths), dim, generator=gen)
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    return z * mask.unsqueeze(2), mask


def test_fused_forward_equals_stepwise_on_a_padded_batch_of_different_lengths():
    torch.manual_seed(0)
    net = LSTMBaseline(4, hidden=64)
    z, mask = _padded_batch([9, 3, 14, 1, 7])
    for mode in (net.train, net.eval):
        mode()
        with torch.no_grad():
            torch.testing.assert_close(net(z, mask), net.forward_stepwise(z, mask), rtol=1e-4, atol=1e-5)


def test_fused_gradients_equal_stepwise_gradients():
    torch.manual_seed(1)
    net = LSTMBaseline(3, hidden=32)
    z, mask = _padded_batch([6, 2, 5], seed=1)
    grads = []
    for fwd in (net.forward, net.forward_stepwise):
        net.zero_grad()
        fwd(z, mask).square().sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_forget_gate_bias_starts_at_one():
    net = LSTMBaseline(3, hidden=16)
    b = net.lstm.bias_ih_l0 + net.lstm.bias_hh_l0
    assert torch.equal(b[16:32], torch.ones(16))


def test_a_checkpoint_of_the_lstmcell_version_loads():
    torch.manual_seed(2)
    old = nn.Module()                    # the layout before the fused LSTM: norm, cell (nn.LSTMCell), classifier
    old.norm, old.cell, old.classifier = nn.BatchNorm1d(512), nn.LSTMCell(512, 1024), nn.Linear(1024, 3)
    state = old.state_dict()
    assert "cell.weight_ih" in state
    net = LSTMBaseline(3)
    net.load_state_dict(state)            # strict
    assert torch.equal(net.lstm.weight_hh_l0, old.cell.weight_hh)
    assert torch.equal(net.lstm.bias_ih_l0, old.cell.bias_ih)
    z, mask = _padded_batch([4, 2])
    net.eval(), old.eval()
    with torch.no_grad():                 # the old forward: LSTMCell steps on the normalised valid steps
        h = c = torch.zeros(2, 1024)
        normed = torch.zeros_like(z)
        normed[mask] = old.norm(z[mask])
        for t in range(z.shape[1]):
            h2, c2 = old.cell(normed[:, t], (h, c))
            keep = mask[:, t:t + 1]
            h, c = torch.where(keep, h2, h), torch.where(keep, c2, c)
        torch.testing.assert_close(net(z, mask), old.classifier(h), rtol=1e-4, atol=1e-5)


def test_padded_training_path_equals_the_packed_path():
    torch.manual_seed(3)
    net = LSTMBaseline(4, hidden=32).eval()
    z, mask = _padded_batch([5, 1, 8, 3], seed=3)
    with torch.no_grad():
        packed = net(z, mask)
    torch.testing.assert_close(net(z, mask), packed, rtol=1e-4, atol=1e-5)    # grad enabled: the padded kernel
