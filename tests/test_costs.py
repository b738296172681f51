"""GFLOPs against hand counts (issue 17, value 3): the student's streams and Psi counted layer by layer here, the
teacher against torchvision's documented figure, and each selector's total against its formula, exactly."""
import numpy as np
import pytest
import torch

from featurestore.cost import unit_gflops
from models.avgn import AVGNSelector, AVTeST, sample_steps
from models.baselines import LSTMBaseline, LSTMSelector, StepClassifier
from models.scsampler import SaliencySampler, SamplerSelector
from models.selection import UnitCosts

FREE = UnitCosts(image=0.0, audio=0.0, fusion=0.0, clip=0.0)


def out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def resnet18_macs(h, w, c_in):
    """Multiply-adds of ResNet-18's convolutions (no FC) on a c_in x h x w input, counted by hand."""
    macs = 0

    def conv(h, w, cin, cout, k, s, p):
        nonlocal macs
        ho, wo = out_size(h, k, s, p), out_size(w, k, s, p)
        macs += cout * ho * wo * cin * k * k
        return ho, wo
    h, w = conv(h, w, c_in, 64, 7, 2, 3)
    h, w = out_size(h, 3, 2, 1), out_size(w, 3, 2, 1)                # max pool
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            h0, w0 = h, w
            h, w = conv(h0, w0, cin, cout, 3, s, 1)
            conv(h, w, cout, cout, 3, 1, 1)
            if s != 1 or cin != cout:
                conv(h0, w0, cin, cout, 1, s, 0)                     # the downsampling shortcut
            cin = cout
    return macs, (h, w)


def test_image_stream_is_resnet18_at_112_plus_its_projection():
    macs, (h, w) = resnet18_macs(112, 112, 3)
    assert (h, w) == (4, 4)
    assert macs + 512 * 256 == 484_978_688                           # the trunk and the 512 -> 256 projection
    assert unit_gflops().image == pytest.approx(2 * 484_978_688 / 1e9, abs=1e-12)
    assert round(unit_gflops().image, 4) == 0.9700


def test_audio_stream_and_psi_by_hand():
    macs, (h, w) = resnet18_macs(40, 101, 1)                          # one 1 s log-mel, 40 x 101
    assert (h, w) == (2, 4)
    assert unit_gflops().audio == pytest.approx(2 * (macs + 2 * 512 * 256) / 1e9, abs=1e-12)   # 2 freq rows -> 256
    assert unit_gflops().fusion == pytest.approx(2 * (512 * 1024 + 1024 * 512) / 1e9, abs=1e-12)
    assert round(unit_gflops().fusion, 4) == 0.0021
    u = unit_gflops()
    assert u.pair == u.image + u.audio + u.fusion


def test_teacher_clip_is_twice_torchvisions_documented_gmacs():
    # torchvision documents R(2+1)D-18 at 40.52 GFLOPS (multiply-adds) on a 16 x 112 x 112 clip
    assert unit_gflops().clip / 2 == pytest.approx(40.52, abs=0.01)


def test_lstm_selector_costs_every_pair_and_four_gates_per_step():
    torch.manual_seed(0)
    video = type("V", (), {"arrays": {"fused": np.random.default_rng(0).normal(0, 1, (7, 512)).astype(np.float16)},
                           "attrs": {}})()
    costs = UnitCosts(image=0.5, audio=0.25, fusion=0.25, clip=80.0)
    out = LSTMSelector("lstm", LSTMBaseline(3), costs).select(video)
    # per step: input 512 and hidden 1024 onto 4 x 1024 gates; then FC 1024 -> 3, once; 2 FLOPs per multiply-add
    hand = 7 * 2 * 4 * 1024 * (512 + 1024) + 2 * 1024 * 3
    assert out.gflops == pytest.approx(7 * 1.0 + hand / 1e9, rel=1e-12)


def _video(n, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {k: rng.normal(0, 1, (n, d)).astype(np.float16) for k, d in (("image", 256), ("audio", 256),
                                                                           ("fused", 512))}
    return type("V", (), {"arrays": arrays, "attrs": {"label": "a"}, "n_steps": n})()


@pytest.mark.parametrize("modality, feature, k, paid", [
    # audio sampler on all 12 steps, then K = 4 fused steps: their image and Psi (the audio is already computed)
    ("audio", "fused", 4, lambda u: 12 * u.audio + 4 * (u.image + u.fusion)),
    ("visual", "fused", 4, lambda u: 12 * u.image + 4 * (u.audio + u.fusion)),
    ("audio", "image", 20, lambda u: 12 * u.audio + 12 * u.image),    # K capped at the 12 steps
])
def test_sampler_selector_pays_each_descriptor_once(modality, feature, k, paid):
    torch.manual_seed(0)
    video = _video(12)
    costs = UnitCosts(image=0.5, audio=0.25, fusion=0.125, clip=80.0)
    head = StepClassifier(512 if feature == "fused" else 256, 3)
    sampler = SaliencySampler(256, "sal-rank", 3)
    total = SamplerSelector("s", {modality: sampler}, costs, (head, feature), k=k).select(video).gflops
    own = SamplerSelector("s", {modality: sampler}, FREE, (head, feature), k=k).select(video).gflops
    assert total - own == pytest.approx(paid(costs), abs=1e-12)
    # its own FLOPs by hand: the sampler's two FC on 12 rows (BN not counted), the head's FC on min(K, 12) rows
    kk = min(k, 12)
    assert own == pytest.approx(2 * 12 * (256 * 256 + 256 * 1) / 1e9 + 2 * kk * head.in_dim * 3 / 1e9, rel=1e-12)


@pytest.mark.parametrize("k, t_g", [(4, 2), (4, None), (16, 4)])
def test_avgn_pays_all_audio_the_glances_and_the_chosen_steps_beyond_them(k, t_g):
    torch.manual_seed(0)
    video = _video(40)
    model = AVTeST(3, dim=16, layers=1, heads=2, max_len=16)
    costs = UnitCosts(image=0.5, audio=0.25, fusion=0.0, clip=80.0)
    sel = AVGNSelector("a", model, costs, k=k, t_g=t_g)
    out = sel.select(video)
    own = AVGNSelector("a", model, FREE, k=k, t_g=t_g).select(video).gflops
    order = sample_steps(40, 16).tolist()
    glanced = set(order[: (16 if t_g is None else t_g)])
    visual = len(glanced) + len(set(out.steps.tolist()) - glanced)
    assert out.gflops - own == pytest.approx(16 * 0.25 + visual * 0.5, abs=1e-12)


def test_lstm_gflops_by_shape_equals_a_fresh_count_of_the_stepwise_forward():
    from torch.utils.flop_counter import FlopCounterMode
    torch.manual_seed(0)
    net = LSTMBaseline(5).eval()
    for n in np.random.default_rng(3).integers(1, 60, size=5).tolist():
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            net.forward_stepwise(torch.randn(1, n, 512), torch.ones(1, n, dtype=torch.bool))
        assert net.gflops(n) == fc.get_total_flops() / 1e9
        assert net.gflops(n) == net.gflops(n)          # cached


def test_lstm_selector_cost_equals_the_module_gflops_by_shape():
    torch.manual_seed(0)
    net = LSTMBaseline(3)
    costs = UnitCosts(image=0.5, audio=0.25, fusion=0.25, clip=80.0)
    video = type("V", (), {"arrays": {"fused": np.random.default_rng(1).normal(0, 1, (11, 512)).astype(np.float16)},
                           "attrs": {}})()
    out = LSTMSelector("lstm", net, costs).select(video)
    assert out.gflops == pytest.approx(11 * costs.pair + net.gflops(11), rel=1e-12)


@pytest.mark.parametrize("loss, classes", [("sal-rank", 400), ("ac", 400)])
def test_motion_sampler_costs_under_a_twentieth_of_the_image_stream_per_step(loss, classes):
    """SCSampler's cheap visual sampler: per step, the motion signal (analytic) plus the sampler's MLP (counted on
    a sampler over the motion rows, here with Kinetics' 400 classes for AC) against the image ResNet-18."""
    from torch.utils.flop_counter import FlopCounterMode
    from featurestore.constants import MOTION_DIM
    from pipelines.train_sampler import build_sampler

    sampler = build_sampler("motion", loss, classes).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        sampler.saliency(torch.zeros(100, MOTION_DIM))
    mlp = fc.get_total_flops() / 1e9 / 100
    assert mlp > 0                                          # the MLP was counted, not skipped
    u = unit_gflops()
    assert u.motion + mlp < u.image / 20
    assert u.motion > 0 and u.image == pytest.approx(0.97, abs=0.005)


def test_spectrum_signal_by_hand():
    """101 frames of a 400-sample STFT (a real FFT at 2.5 N log2 N = 1000 log2 400, the 400 window products, 201 bins'
    power at 3 each), the 101 x 201 x 40 mel matmul at 2 a multiply-add, log (2) and mean (1) of the 40 x 101 mels."""
    from featurestore.cost import spectrum_gflops
    by_hand = 101 * (400 + 1000 * np.log2(400) + 603) + 101 * 201 * 40 * 2 + 40 * 101 * 3
    assert spectrum_gflops() == pytest.approx(by_hand / 1e9, rel=1e-12)
    assert unit_gflops().spectrum == spectrum_gflops() and UnitCosts(1, 2, 3, 4, spectrum=5).of("spectrum") == 5
    assert 2.6e-3 < spectrum_gflops() < 2.62e-3                      # 2.61 MFLOPs a step


@pytest.mark.parametrize("combine", ["convex-score", "convex-list", "union-list", "intersect-list"])
def test_av_cheap_combination_samples_for_under_a_twentieth_of_a_pair_per_step(combine):
    """SCSampler's cheap-visual + cheap-audio combination: per step, the motion and spectrum signals (analytic) and
    both samplers' MLPs (counted, AC with Kinetics' 400 classes for motion, SAL-RANK for spectrum) against one
    image-audio pair. The sampling cost is what a selector pays beyond its recognition of the K chosen steps."""
    from featurestore.constants import MOTION_DIM, N_MELS
    from pipelines.train_sampler import build_sampler

    def count_flops(fn, *inputs):
        from torch.utils.flop_counter import FlopCounterMode
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            fn(*inputs)
        return fc.get_total_flops()

    n, u = 50, unit_gflops()
    motion, spectrum = build_sampler("motion", "ac", 400).eval(), build_sampler("spectrum", "sal-rank", 400).eval()
    mlps = (count_flops(motion.saliency, torch.zeros(n, MOTION_DIM))
            + count_flops(spectrum.saliency, torch.zeros(n, N_MELS))) / 1e9
    assert mlps > 0
    sampling = u.motion + u.spectrum + mlps / n
    assert sampling < u.pair / 20
    assert u.pair == pytest.approx(1.346, abs=0.005)
    # the selector pays exactly that on every step, beyond the head and the K = 1 chosen pair
    rng = np.random.default_rng(0)
    video = type("V", (), {"arrays": {"motion": rng.random((n, MOTION_DIM)).astype(np.float16),
                                      "spectrum": rng.normal(-8, 1, (n, N_MELS)).astype(np.float16),
                                      "fused": rng.normal(0, 1, (n, 512)).astype(np.float16)}, "attrs": {}})()
    head = StepClassifier(512, 400).eval()
    sel = SamplerSelector("cheap", {"motion": motion, "spectrum": spectrum}, u, (head, "fused"), k=1,
                          combine=combine)
    recognised = u.pair + 2 * 512 * 400 / 1e9
    assert sel.select(video).gflops == pytest.approx(n * sampling + recognised, rel=1e-6)
