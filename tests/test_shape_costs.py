"""GFLOPs counted once per shape (issue 24): every bench selector's ``select_batch`` GFLOPs, on a block of videos of
random lengths (some shorter than the budget), equal a fresh FlopCounterMode count of its modules on each video, made
here, plus the stored descriptors it reads at their unit costs, written out by hand; and a shape is counted once."""
import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from models.avgn import AVGNSelector, AVTeST, sample_steps
from models.baselines import HeadSelector, LSTMBaseline, LSTMSelector, StepClassifier
from models.imgaud import Fusion
from models.scsampler import JointSampler, SaliencySampler, SamplerSelector
from models.selection import ShapeCosts, UnitCosts, VideoBlock, select_block
from models.skim import ImgAudSkimmer, NonRecurrentSelector, SkimSelector, interpolate_features

U = UnitCosts(image=0.5, audio=0.25, fusion=0.125, clip=8.0, loudness=1 / 64, motion=1 / 32, spectrum=1 / 16)
CLASSES = ("a", "b", "c")
WIDTHS = {"image": 256, "audio": 256, "fused": 512, "r2p1d": 512}
SIGNALS = {"loudness": (), "motion": (192,), "spectrum": (40,)}    # row shapes of the stored signals


class Video:
    def __init__(self, video_id: str, arrays: dict, label: str):
        self.video_id, self.arrays, self.attrs = video_id, arrays, {"label": label, "video_id": video_id}


def make_videos(lengths, seed=0) -> list[Video]:
    rng = np.random.default_rng(seed)
    return [Video(f"v{i}", {"t": np.arange(n, dtype=np.float64),
                            **{k: rng.normal(0, 1, (n, d)).astype(np.float16) for k, d in WIDTHS.items()},
                            **{k: np.abs(rng.normal(0, 1, (n,) + d)).astype(np.float16) for k, d in SIGNALS.items()}},
                  CLASSES[i % 3]) for i, n in enumerate(lengths)]


def make_block(videos: list[Video]) -> VideoBlock:
    lengths = [len(v.arrays["t"]) for v in videos]

    def load(name):
        out = torch.zeros((len(videos), max(lengths)) + ((WIDTHS[name],) if name in WIDTHS else SIGNALS[name]))
        for i, v in enumerate(videos):
            out[i, :lengths[i]] = torch.from_numpy(v.arrays[name].astype(np.float32))
        return out
    return VideoBlock([v.video_id for v in videos], [v.attrs for v in videos], torch.tensor(lengths), load,
                      lambda i: videos[i])


def z(video: Video, name: str) -> torch.Tensor:
    return torch.from_numpy(video.arrays[name].astype(np.float32))


class Counter(FlopCounterMode):
    """FlopCounterMode with attention's matmuls visible: the transformer fast path off, attention on its math
    backend (the fused kernels are invisible to the counter)."""

    def __init__(self):
        super().__init__(display=False)

    def __enter__(self):
        self.fast = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        self.kernel = sdpa_kernel(SDPBackend.MATH)
        self.kernel.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.kernel.__exit__(*exc)
        torch.backends.mha.set_fastpath_enabled(self.fast)


def fresh(fn, *args, **kwargs) -> float:
    """GFLOPs of one call, counted here under a new FlopCounterMode (attention included, :class:`Counter`)."""
    with torch.inference_mode(), Counter() as fc:
        fn(*args, **kwargs)
    return fc.get_total_flops() / 1e9


# random step counts, seeded; shorter than the budget K = 10, than AVGN's t = 8, and repeated
LENGTHS = [1, 2, 5, 9] + np.random.default_rng(24).integers(1, 40, 6).tolist() + [5]


@pytest.fixture(scope="module")
def videos():
    return make_videos(LENGTHS, seed=3)


def answers(selector, videos):
    """The block's answers (a fresh block: nothing memoised by another selector) as per-video Selections."""
    got = select_block(selector, make_block(videos))
    return [got.video(i) for i in range(len(videos))]


def check(selector, videos, expected) -> None:
    for v, ans in zip(videos, answers(selector, videos)):
        assert ans.gflops == pytest.approx(expected(v, ans), rel=1e-9, abs=1e-12), (selector.name, v.video_id)


@pytest.fixture(scope="module")
def heads():
    torch.manual_seed(0)
    return {f: StepClassifier(WIDTHS[f], 3).eval() for f in ("fused", "r2p1d")}


@pytest.mark.parametrize("rule", ["random", "uniform", "front", "center", "end", "dense", "confidence", "oracle"])
@pytest.mark.parametrize("feature", ["fused", "r2p1d"])
def test_head_rules(rule, feature, heads, videos):
    head = heads[feature]
    sel = HeadSelector(rule, head, U, feature=feature, rule=rule, class_index={c: i for i, c in enumerate(CLASSES)})
    unit = U.image + U.audio + U.fusion if feature == "fused" else U.clip
    if rule in ("dense", "confidence", "oracle"):       # every step's descriptor and the head on every step
        check(sel, videos, lambda v, ans: len(v.arrays["t"]) * unit + fresh(head, z(v, feature)))
    else:                                             # only the chosen steps
        check(sel, videos, lambda v, ans: len(ans.steps) * unit + fresh(head, z(v, feature)[ans.steps]))


@pytest.mark.parametrize("kind, signals", [("audio", ("loudness",)), ("motion", ("motion",)),
                                           ("av", ("loudness", "motion"))])
def test_energy_controls(kind, signals, heads, videos):
    from models.energy import EnergySelector
    head = heads["fused"]
    sel = EnergySelector(kind, head, U, kind=kind)
    # the signals on every step, and UNIFORM's pair and head on the chosen steps
    check(sel, videos, lambda v, ans: len(v.arrays["t"]) * sum(U.of(s) for s in signals)
          + len(ans.steps) * (U.image + U.audio + U.fusion) + fresh(head, z(v, "fused")[ans.steps]))


def skimmer(indexing: str) -> ImgAudSkimmer:
    torch.manual_seed(1)
    return ImgAudSkimmer(Fusion(), 3, hidden=64, key_dim=32, indexing=indexing).eval()


@pytest.mark.parametrize("indexing, subsample, steps, hard", [
    ("audio-visual", 1, 10, False), ("audio-visual", 5, 4, False), ("audio-visual", 2, 10, True),
    ("visual", 1, 10, False), ("visual", 5, 3, False), ("single", 1, 10, False), ("single", 3, 5, True)])
def test_skimmer(indexing, subsample, steps, hard, videos):
    net = skimmer(indexing)
    sel = SkimSelector("skim", net, U, steps=steps, subsample=subsample, hard=hard)

    def expected(v, ans):
        n = len(v.arrays["t"])
        names = ("fused",) if indexing == "single" else ("image", "audio")
        real = [z(v, k)[None] for k in names]
        feats = [interpolate_features(r[0], subsample)[None] for r in real]
        mask = torch.ones(1, n, dtype=torch.bool)
        if indexing == "single":
            own = fresh(net, None, None, mask, steps, hard, feats[0], lookup=real)
        else:
            own = fresh(net, feats[0], feats[1], mask, steps, hard, lookup=real)
        computed = set(range(0, n, subsample)) | {n - 1}          # every s-th step's features, and the last
        if hard or indexing == "visual":                          # and the chosen steps' own
            computed |= set(ans.steps.tolist())
        return len(computed) * (U.image + U.audio + U.fusion) + own
    check(sel, videos, expected)


def test_non_recurrent(videos):
    net = skimmer("audio-visual")
    sel = NonRecurrentSelector("nr", net, U, k=10)

    def expected(v, ans):
        n = len(v.arrays["t"])
        z_i, z_a, mask = z(v, "image")[None], z(v, "audio")[None], torch.ones(1, n, dtype=torch.bool)
        k = min(10, n)
        assert len(ans.steps) == k
        fused = net.fusion(z_i[0, ans.steps], z_a[0, ans.steps])
        return (n * (U.image + U.audio + U.fusion) + fresh(net.first_query_weights, z_i, z_a, mask)
                + fresh(net.fusion, z_i[0, ans.steps], z_a[0, ans.steps]) + fresh(net.classify, fused.mean(0)[None]))
    check(sel, videos, expected)


def test_lstm(videos):
    torch.manual_seed(2)
    model = LSTMBaseline(3, hidden=64).eval()
    sel = LSTMSelector("lstm", model, U)
    # the fused kernel is invisible to FlopCounterMode: its cost is the same recurrence stepped cell by cell
    check(sel, videos, lambda v, ans: len(v.arrays["t"]) * (U.image + U.audio + U.fusion) + fresh(
        model.forward_stepwise, z(v, "fused")[None], torch.ones(1, len(v.arrays["t"]), dtype=torch.bool)))


@pytest.fixture(scope="module")
def samplers():
    torch.manual_seed(3)
    visual, audio = SaliencySampler(256, "ac", 3).eval(), SaliencySampler(256, "sal-rank", 3).eval()
    joint = JointSampler(SaliencySampler(256, "sal-cl", 3), SaliencySampler(256, "sal-cl", 3)).eval()
    motion = SaliencySampler(192, "sal-rank", 3).eval()
    joint_motion = JointSampler(SaliencySampler(192, "sal-cl", 3), SaliencySampler(256, "sal-cl", 3)).eval()
    spectrum = SaliencySampler(40, "sal-rank", 3).eval()
    joint_cheap = JointSampler(SaliencySampler(192, "sal-cl", 3), SaliencySampler(40, "sal-cl", 3)).eval()
    return {"visual": visual, "audio": audio, "av": joint, "motion": motion, "av-motion": joint_motion,
            "spectrum": spectrum, "av-cheap": joint_cheap}


READS = {"visual": ("image",), "audio": ("audio",), "av": ("image", "audio"), "motion": ("motion",),
         "av-motion": ("motion", "audio"), "spectrum": ("spectrum",), "av-cheap": ("motion", "spectrum")}


# (samplers used, combination, recogniser's descriptor, descriptors paid on all n steps and on the k chosen)
SAMPLER_ROWS = [
    (("visual",), None, "fused", lambda n, k: n * U.image + k * (U.audio + U.fusion)),
    (("audio",), None, "fused", lambda n, k: n * U.audio + k * (U.image + U.fusion)),
    (("audio",), None, "r2p1d", lambda n, k: n * U.audio + k * U.clip),
    (("av",), None, "fused", lambda n, k: n * (U.image + U.audio) + k * U.fusion),
    (("av",), None, "r2p1d", lambda n, k: n * (U.image + U.audio) + k * U.clip),
] + [(("visual", "audio"), c, f, (lambda n, k: n * (U.image + U.audio) + k * U.fusion) if f == "fused" else
      (lambda n, k: n * (U.image + U.audio) + k * U.clip))
     for c in ("convex-score", "convex-list", "union-list", "intersect-list") for f in ("fused", "r2p1d")] + [
    # the motion signal in place of the image descriptor: the image is computed only for the chosen steps
    (("motion",), None, "fused", lambda n, k: n * U.motion + k * (U.image + U.audio + U.fusion)),
    (("motion",), None, "r2p1d", lambda n, k: n * U.motion + k * U.clip),
    (("av-motion",), None, "fused", lambda n, k: n * (U.motion + U.audio) + k * (U.image + U.fusion)),
] + [(("motion", "audio"), c, f, (lambda n, k: n * (U.motion + U.audio) + k * (U.image + U.fusion)) if f == "fused"
      else (lambda n, k: n * (U.motion + U.audio) + k * U.clip))
     for c in ("convex-score", "convex-list", "union-list", "intersect-list") for f in ("fused", "r2p1d")] + [
    # the spectrum signal in place of the audio descriptor: the whole pair is computed only for the chosen steps
    (("spectrum",), None, "fused", lambda n, k: n * U.spectrum + k * (U.image + U.audio + U.fusion)),
    (("spectrum",), None, "r2p1d", lambda n, k: n * U.spectrum + k * U.clip),
    (("av-cheap",), None, "fused", lambda n, k: n * (U.motion + U.spectrum) + k * (U.image + U.audio + U.fusion)),
] + [(("motion", "spectrum"), c, f, (lambda n, k: n * (U.motion + U.spectrum) + k * (U.image + U.audio + U.fusion))
      if f == "fused" else (lambda n, k: n * (U.motion + U.spectrum) + k * U.clip))
     for c in ("convex-score", "convex-list", "union-list", "intersect-list") for f in ("fused", "r2p1d")]


@pytest.mark.parametrize("modalities, combine, feature, paid", SAMPLER_ROWS)
def test_samplers(modalities, combine, feature, paid, samplers, heads, videos):
    head = heads[feature]
    sel = SamplerSelector("scs", {m: samplers[m] for m in modalities}, U, (head, feature), combine=combine)

    def expected(v, ans):
        n = len(v.arrays["t"])
        k = min(10, n)
        assert len(ans.steps) == k
        own = sum(fresh(samplers[m].saliency, *(z(v, f) for f in READS[m])) for m in modalities)
        return paid(n, k) + own + fresh(head, z(v, feature)[ans.steps])
    check(sel, videos, expected)


@pytest.mark.parametrize("k, t_g, audio_tokens", [(1, 2, True), (4, None, True), (4, 2, False), (10, 4, True),
                                                  (8, 8, True)])
def test_avgn(k, t_g, audio_tokens, videos):
    torch.manual_seed(4)
    t = 8
    model = AVTeST(3, dim=16, layers=1, heads=2, max_len=t, use_audio_tokens=audio_tokens).eval()
    sel = AVGNSelector("avgn", model, U, k=k, t_g=t_g, t=t)
    glances = t if t_g is None else t_g

    def expected(v, ans):
        n = len(v.arrays["t"])
        sampled = sample_steps(n, t)
        visible = torch.arange(t)[None] < glances
        e_g, e_a = z(v, "image")[sampled][None] * visible[..., None], z(v, "audio")[sampled][None]
        with torch.inference_mode(), Counter() as fc:
            saliency = model.glance(e_g, e_a, visible).saliency[0]
        glance = fc.get_total_flops() / 1e9
        top = sorted(torch.sort(saliency, descending=True, stable=True).indices[:k].tolist())
        kept = [p for i, p in enumerate(top) if int(sampled[p]) not in {int(sampled[q]) for q in top[:i]}]
        assert ans.steps.tolist() == sampled[kept].tolist()
        beyond = sum(p >= glances for p in kept)                # visual features computed for a chosen step
        head = fresh(model.classify, z(v, "image")[sampled[kept]][None], e_a)
        return t * U.audio + (glances + beyond) * U.image + glance + head
    check(sel, videos, expected)


def test_shape_costs_count_each_key_once():
    calls = []
    costs = ShapeCosts(lambda n: calls.append(n) or 1.5 * n)
    keys = np.array([3, 5, 3, 3, 7, 5])
    assert costs.each(keys).tolist() == (1.5 * keys).tolist()
    assert costs.each(torch.tensor([7, 3, 9])).tolist() == [10.5, 4.5, 13.5]
    assert costs(5) == 7.5
    assert calls == [3, 5, 7, 9]


def spy(costs: ShapeCosts, calls: list) -> None:
    count = costs.count
    costs.count = lambda *key: calls.append(key) or count(*key)


def test_selectors_count_each_shape_once_over_blocks_with_repeated_lengths(samplers, heads):
    lengths = [4, 4, 9, 9, 9, 2, 12, 12]
    blocks = [make_block(make_videos(lengths, seed=s)) for s in (5, 6)]     # the same shapes, other values
    torch.manual_seed(5)
    model = AVTeST(3, dim=16, layers=1, heads=2, max_len=8).eval()
    sampler = SamplerSelector("scs", {"visual": samplers["visual"], "audio": samplers["audio"]}, U,
                              (heads["fused"], "fused"), combine="union-list")
    avgn = AVGNSelector("avgn", model, U, k=4, t_g=2, t=8)
    head = HeadSelector("dense", heads["fused"], U, rule="dense")
    lstm = LSTMSelector("lstm", LSTMBaseline(3, hidden=32).eval(), U)
    calls = {name: [] for name in ("visual", "audio", "recogniser", "glance", "classify", "head", "lstm")}
    for name, costs in (("visual", sampler.sampler_gflops["visual"]), ("audio", sampler.sampler_gflops["audio"]),
                        ("recogniser", sampler.head_gflops), ("glance", avgn.glance_gflops),
                        ("classify", avgn.classify_gflops), ("head", head.head_gflops), ("lstm", lstm.model_gflops)):
        spy(costs, calls[name])
    kept = []
    for block in blocks:
        for sel in (sampler, avgn, head, lstm):
            got = select_block(sel, block)
            if sel is avgn:
                kept += got.counts.tolist()
    owners = {"visual": sampler.sampler_gflops["visual"], "audio": sampler.sampler_gflops["audio"],
              "head": head.head_gflops, "lstm": lstm.model_gflops}
    for name, costs in owners.items():
        a = costs.affine_from            # counted below a, then read off the line through a and 2a
        want = {n for n in lengths if a is None or n < a} | ({a, 2 * a} if a and max(lengths) >= a else set())
        assert sorted(calls[name]) == sorted((n,) for n in want), name
    assert sorted(calls["recogniser"]) == sorted((k,) for k in {min(10, n) for n in lengths})
    assert calls["glance"] == [()]                       # t sampled steps whatever the video's length
    assert sorted(calls["classify"]) == sorted((k,) for k in set(kept))


def test_affine_shape_costs_count_below_the_line_and_two_points_on_it():
    calls = []
    costs = ShapeCosts(lambda n: calls.append(n) or (7.0 * min(n, 4) + 0.25 * n), affine_from=4)  # bends at n = 4
    keys = np.arange(1, 60)
    assert costs.each(keys) == pytest.approx(7.0 * np.minimum(keys, 4) + 0.25 * keys, rel=1e-12)
    assert sorted(calls) == [1, 2, 3, 4, 8]
    bent = ShapeCosts(lambda n: 7.0 * min(n, 4) + 0.25 * n, affine_from=2)   # a line drawn too early is wrong
    assert bent(9) != pytest.approx(7.0 * 4 + 0.25 * 9)
