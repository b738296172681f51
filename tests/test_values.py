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
