"""The bench's reported statistics on hand-made cases: segment_hit counts the chosen steps (not the first k) that
start inside an action segment, and the intervals are 95 % percentile bootstraps over the test videos."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from featurestore.store import VideoFeatures
from models.selection import Selection
from pipelines.bench import bootstrap_intervals, evaluate_all, mean_average_precision


class FixedSteps:
    """A selector that answers each video with the steps given for it, and its label as a one-hot score."""

    name = "fixed"

    def __init__(self, steps: dict[str, list[int]], classes: int = 2):
        self.steps, self.classes = steps, classes

    def select(self, video: VideoFeatures) -> Selection:
        scores = np.zeros(self.classes)
        scores[int(video.attrs["y"])] = 1.0
        return Selection(np.asarray(self.steps[video.video_id]), scores, 0.0)


def video(vid: str, n: int, segments: str, y: int = 0) -> VideoFeatures:
    """``n`` steps starting every 16 frames at 30 fps (0, 0.533, 1.067, ... s) with ``segments`` annotated."""
    return VideoFeatures(vid, {"n_steps": n, "segments": segments, "y": y},
                         {"t": np.arange(n, dtype=np.float32) * 16 / 30})


class Split(SimpleNamespace):
    def __len__(self) -> int:
        return len(self.videos)


def test_segment_hit_counts_the_chosen_steps_that_start_inside_a_segment():
    # step k starts at 16k/30 s: 0, .533, 1.067, 1.6, 2.133, 2.667, 3.2, 3.733, 4.267, 4.8
    a = video("a", 10, "1.0-2.0")          # steps 2 (1.067) and 3 (1.6) start inside; step 4 (2.133) does not
    b = video("b", 10, "0-0.5;4.0-10")     # steps 0, 8, 9 start inside
    c = video("c", 10, "")                 # not annotated: its steps count for nothing
    chosen = {"a": [9, 2, 3], "b": [8, 1, 0, 4], "c": [5, 6]}
    data = Split(videos=[a, b, c], labels=torch.tensor([0, 0, 0]))
    [row] = evaluate_all([FixedSteps(chosen)], data, intervals=False)
    # a: 2 of its 3 chosen steps (2, 3) inside; b: 2 of 4 (8, 0); c is not annotated and counts in neither part:
    # 4 hits of 7 chosen steps (the first 3 and 4 steps instead would give a: 1 (step 2), b: 1 (step 0), 2 of 7)
    assert row.segment_hit == pytest.approx(4 / 7)


def test_segment_hit_is_not_a_number_without_annotations():
    data = Split(videos=[video("a", 5, ""), video("b", 5, "")], labels=torch.tensor([0, 0]))
    [row] = evaluate_all([FixedSteps({"a": [0], "b": [1]})], data, intervals=False)
    assert np.isnan(row.segment_hit)


def test_bootstrap_intervals_are_the_2_5_and_97_5_percentiles_of_resampled_test_sets():
    rng = np.random.default_rng(3)
    v, c = 400, 3
    labels = rng.integers(0, c, v)
    scores = rng.random((v, c))
    right = rng.random(v) < 0.6                          # about 60 % of the videos right
    scores[right, labels[right]] += 1.0
    (lo_t, hi_t), (lo_m, hi_m) = bootstrap_intervals(scores, labels, draws=1000, seed=0)

    # the same resamples drawn here, each test set scored with plain loops and the scalar mAP
    idx = np.random.default_rng(0).integers(0, v, (1000, v))
    top1 = [np.mean([scores[i].argmax() == labels[i] for i in draw]) for draw in idx]
    maps = [mean_average_precision(scores[draw], labels[draw]) for draw in idx]
    assert (lo_t, hi_t) == pytest.approx(tuple(np.percentile(top1, [2.5, 97.5])))
    assert (lo_m, hi_m) == pytest.approx(tuple(np.percentile(maps, [2.5, 97.5])))

    # and the normal approximation by hand: p = accuracy, sd = sqrt(p (1 - p) / V), interval p +- 1.96 sd
    p = float(np.mean(scores.argmax(1) == labels))
    sd = np.sqrt(p * (1 - p) / v)
    assert (hi_t - lo_t) / (2 * sd) == pytest.approx(1.96, abs=0.15)     # [5, 95] gives 1.645, [25, 75] 0.674
    assert lo_t < p < hi_t
