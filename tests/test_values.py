"""Figures the bench reports, derived by hand (issue 17): top-1 and mAP on fixed scores, ties included; the blind
rules' indices; every selector's cost formula, exactly."""
import numpy as np
import pytest
import torch

from featurestore.store import FeatureStore
from featurestore.weights import load_student
from models.baselines import HeadSelector, StepClassifier, index_center, index_end, index_front, index_uniform
from models.selection import Selection, UnitCosts
from pipelines.bench import evaluate
from pipelines.data import load_split

CLASSES = ["a", "b", "c"]


def tiny_store(path, labels, splits=None, n_steps=None, seed=0):
    """A store of len(labels) videos (labels as class indices), random descriptors, the given splits / lengths."""
    rng = np.random.default_rng(seed)
    _, rec = load_student("random", 0, 400)
    store = FeatureStore(path, mode="a")
    store.initialise("tiny", CLASSES, ["image", "audio", "fused"], {"models": {"student": rec}})
    for v, label in enumerate(labels):
        n = n_steps[v] if n_steps else 5
        store.write_video(f"v{v}", {"t": np.arange(n, dtype=np.float32) * 16 / 30,
                                    "image": rng.normal(0, 1, (n, 256)).astype(np.float16),
                                    "audio": rng.normal(0, 1, (n, 256)).astype(np.float16),
                                    "fused": rng.normal(0, 1, (n, 512)).astype(np.float16)},
                          {"label": CLASSES[label], "split": splits[v] if splits else "test", "n_steps": n,
                           "duration": n * 16 / 30, "has_audio": True, "path": f"v{v}.mp4"})
    return FeatureStore(path)


class Fixed:
    """A stub selector answering fixed class scores per video id."""

    def __init__(self, scores: dict[str, list[float]], name="FIXED"):
        self.scores, self.name = scores, name

    def select(self, video):
        return Selection(np.array([0]), np.asarray(self.scores[video.video_id], float), 1.0)


# labels b, a, a, b; class c has no test videos
SCORES = {"v0": [0.3, 0.3, 0.4],     # b -> predicted c: wrong
          "v1": [0.4, 0.4, 0.2],     # a -> a tie of a and b: the first class wins (numpy's argmax): right
          "v2": [0.5, 0.3, 0.2],     # a -> a: right
          "v3": [0.1, 0.6, 0.3]}     # b -> b: right


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    return load_split(tiny_store(tmp_path_factory.mktemp("four") / "s.zarr", [1, 0, 0, 1]), "test", ("t", "fused"))


def test_bench_top1_and_map_by_hand_with_ties_and_a_class_without_test_videos(four):
    assert [v.video_id for v in four.videos] == ["v0", "v1", "v2", "v3"]
    row = evaluate(Fixed(SCORES), four)
    assert row.top1 == 0.75
    # AP(a): scores 0.3 0.4 0.5 0.1, positives v1 v2 ranked 1st and 2nd -> 1.
    # AP(b): scores 0.3 0.4 0.3 0.6, positives v0 v3. v3 first: precision 1. v0 ties with the negative v2 at 0.3:
    #   at that threshold 2 of the 4 videos are positive -> precision 1/2 (whichever order the tie is listed in).
    #   AP(b) = (1 + 1/2) / 2 = 0.75.   AP(c): no test videos, left out.   mAP = (1 + 0.75) / 2
    assert row.mAP == pytest.approx(0.875)
    assert not row.one_class


def test_a_constant_selector_scores_chance_map_whatever_the_video_order(four):
    row = evaluate(Fixed({v: [1 / 3] * 3 for v in SCORES}), four)
    assert row.top1 == 0.5                         # every video predicted a (first of the tie); two are a
    assert row.mAP == pytest.approx(0.5)           # one tied group: precision 2/4 for each class
    assert row.one_class
    # the bootstrap's vectorised AP agrees: a resample holding both classes scores each class by its share
    idx = np.array([[0, 1, 2, 3], [0, 0, 1, 3], [1, 2, 2, 2]])
    from pipelines.bench import average_precisions
    labels = np.array([1, 0, 0, 1])[idx]
    ap_b = average_precisions(np.full((3, 4), 1 / 3), labels == 1)
    assert ap_b[:2].tolist() == pytest.approx([0.5, 0.75]) and np.isnan(ap_b[2])     # the third has no b


@pytest.mark.parametrize("n, k, uniform, front, center, end", [
    (15, 4, [1, 5, 9, 13], [0, 1, 2, 3], [5, 6, 7, 8], [11, 12, 13, 14]),       # centres 1.875, 5.625, 9.375, 13.125
    (13, 10, [0, 1, 3, 4, 5, 7, 8, 9, 11, 12], list(range(10)), list(range(1, 11)), list(range(3, 13))),
    (7, 10, list(range(7)), list(range(7)), list(range(7)), list(range(7))),
])
def test_blind_rules_pick_the_steps_their_names_say(n, k, uniform, front, center, end):
    assert index_uniform(n, k).tolist() == uniform
    assert index_front(n, k).tolist() == front
    assert index_center(n, k).tolist() == center
    assert index_end(n, k).tolist() == end


def test_head_selectors_are_wired_to_their_rule_and_average_the_head_over_those_steps(tmp_path):
    store = tiny_store(tmp_path / "s.zarr", [0], n_steps=[15])
    video = store.read_video("v0")
    torch.manual_seed(0)
    head = StepClassifier(512, 3).eval()
    costs = UnitCosts(image=0.5, audio=0.25, fusion=0.25, clip=80.0)
    z = torch.from_numpy(video["fused"].astype(np.float32))
    with torch.no_grad():
        p = torch.softmax(head(z), 1).numpy()
    for rule, steps in [("uniform", [1, 5, 9, 13]), ("front", [0, 1, 2, 3]), ("center", [5, 6, 7, 8]),
                        ("end", [11, 12, 13, 14])]:
        out = HeadSelector(rule, head, costs, k=4, rule=rule).select(video)
        assert out.steps.tolist() == steps, rule
        np.testing.assert_allclose(out.scores, p[steps].mean(0), rtol=1e-5)
        # 4 pairs at 1 GFLOP, plus the head's FC (the BN is not counted): 2 * 4 rows * 512 * 3
        assert out.gflops == pytest.approx(4 * 1.0 + 2 * 4 * 512 * 3 / 1e9, rel=1e-12)
    oracle = HeadSelector("o", head, costs, k=4, rule="oracle", class_index={c: i for i, c in enumerate(CLASSES)})
    out = oracle.select(video)
    best = sorted(range(15), key=lambda t: -p[t, 0])[:4]
    assert sorted(out.steps.tolist()) == sorted(best)
    np.testing.assert_allclose(out.scores, p[best].mean(0), rtol=1e-5)
    assert out.gflops == pytest.approx(15 * 1.0 + 2 * 15 * 512 * 3 / 1e9, rel=1e-12)


def test_skimmer_follows_eq_6_to_9_on_tiny_tensors():
    """Three skimming steps over a 4-step video, recomputed from the skimmer's own (fixed, eval-mode) layers."""
    import math

    from models.imgaud import Fusion
    from models.skim import ImgAudSkimmer
    torch.manual_seed(0)
    sk = ImgAudSkimmer(Fusion(4, 4, hidden=8, out_dim=6), 3, image_dim=4, audio_dim=4, fused_dim=6, hidden=5,
                       key_dim=3).eval()
    for m in sk.modules():                   # non-trivial running statistics, so eval-mode BN is not the identity
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    z_i, z_a = torch.randn(1, 4, 4), torch.randn(1, 4, 4)
    mask = torch.ones(1, 4, dtype=torch.bool)
    with torch.no_grad():
        out = sk(z_i, z_a, mask, steps=3)

        def softmax(xs):
            e = [math.exp(x) for x in xs]
            return [v / sum(e) for v in e]

        zi_rows, za_rows = z_i[0], z_a[0]
        keys_i = [sk.key_i.net(r[None, :, None])[0, :, 0] for r in zi_rows]        # 1x1 conv + BN + ReLU on each step
        keys_a = [sk.key_a.net(r[None, :, None])[0, :, 0] for r in za_rows]
        x = sk.fusion(zi_rows.mean(0), za_rows.mean(0))                  # z~_1: Psi of the mean features
        inputs, picks, mods, attention = [x], [], [], []
        h, c = torch.zeros(1, 5), torch.zeros(1, 5)
        avail_i, avail_a, taken = [True] * 4, [True] * 4, set()
        for _ in range(2):
            h, c = sk.lstm(x[None], (h, c))
            q_i, q_a = sk.query_i(h)[0], sk.query_a(h)[0]
            # Eq. 6: w = softmax(k . q / sqrt(d)) over the steps still available
            w_i = softmax([float(k @ q_i) / math.sqrt(3) if avail_i[n] else -1e9 for n, k in enumerate(keys_i)])
            w_a = softmax([float(k @ q_a) / math.sqrt(3) if avail_a[n] else -1e9 for n, k in enumerate(keys_a)])
            s_i, s_a = softmax(sk.modality(h)[0].tolist())                  # Eq. 8's modality scores
            # Eq. 7 + 8: each modality's features soft-indexed by both attentions, mixed by s^I, s^A
            zi = sum((s_i * w_i[n] + s_a * w_a[n]) * zi_rows[n] for n in range(4))
            za = sum((s_i * w_i[n] + s_a * w_a[n]) * za_rows[n] for n in range(4))
            combined = [s_i * w_i[n] + s_a * w_a[n] for n in range(4)]
            pick = max((n for n in range(4) if n not in taken), key=lambda n: combined[n])
            taken.add(pick)
            avail_i[max(range(4), key=lambda n: w_i[n])] = False
            avail_a[max(range(4), key=lambda n: w_a[n])] = False
            x = sk.fusion(zi, za)                                           # Eq. 5: Psi of the indexed features
            inputs.append(x)
            picks.append(pick)
            mods.append([s_i, s_a])
            attention.append(combined)
        m = sum(inputs) / 3                                                 # Eq. 9: the mean of the T inputs
        logits = sk.classifier(m[None])[0]
    torch.testing.assert_close(out.fused[0], torch.stack(inputs), rtol=1e-5, atol=1e-6)
    assert out.steps[0].tolist() == picks
    torch.testing.assert_close(out.modality[0], torch.tensor(mods), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.attention[0], torch.tensor(attention), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits[0], logits, rtol=1e-5, atol=1e-6)
