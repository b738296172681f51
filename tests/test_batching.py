"""CrossVideoBatcher: requests of any size from many threads, packed into full batches that may mix requests."""
import threading

import numpy as np
import pytest
import torch

from featurestore.batching import CrossVideoBatcher


class Recorder:
    """A batch function that doubles its input and records each batch's rows."""

    def __init__(self):
        self.batches: list[np.ndarray] = []

    def __call__(self, x: torch.Tensor):
        self.batches.append(x.numpy().copy())
        return (x * 2, x.sum(dim=1))


def test_rows_of_two_requests_share_one_full_batch_and_come_back_in_order():
    rec = Recorder()
    batcher = CrossVideoBatcher({"image": rec}, {"image": 8}, "cpu", max_wait=2.0)
    a = np.arange(10, dtype=np.float32).reshape(5, 2)
    b = 100 + np.arange(10, dtype=np.float32).reshape(5, 2)
    fa, fb = batcher.submit("image", a), batcher.submit("image", b)
    (a2, a_sum), (b2, b_sum) = fa.result(timeout=10), fb.result(timeout=10)
    np.testing.assert_array_equal(a2, a * 2)
    np.testing.assert_array_equal(b2, b * 2)
    np.testing.assert_array_equal(a_sum, a.sum(1))
    np.testing.assert_array_equal(b_sum, b.sum(1))
    assert [len(x) for x in rec.batches] == [8, 2]                # one full batch, then the idle remainder
    np.testing.assert_array_equal(rec.batches[0], np.concatenate([a, b[:3]]))
    assert batcher.batches_run == {"image": 2} and batcher.rows_run == {"image": 10}


def test_requests_larger_than_a_batch_are_split_and_reassembled():
    rec = Recorder()
    batcher = CrossVideoBatcher({"clip": rec}, {"clip": 4}, "cpu", max_wait=0.01)
    x = np.random.default_rng(0).normal(size=(11, 3)).astype(np.float32)
    doubled, _ = batcher.submit("clip", x).result(timeout=10)
    np.testing.assert_allclose(doubled, 2 * x)
    assert [len(b) for b in rec.batches] == [4, 4, 3]


def test_many_threads_get_exactly_their_own_rows_back():
    batcher = CrossVideoBatcher({"image": Recorder()}, {"image": 16}, "cpu", max_wait=0.002)
    results, errors = {}, []

    def video(i: int) -> None:
        try:
            rows = np.full((3 + i, 2), i, np.float32)
            outs = [batcher.submit("image", rows[j:j + 2]) for j in range(0, len(rows), 2)]
            results[i] = np.concatenate([f.result(timeout=10)[0] for f in outs])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=video, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(8):
        np.testing.assert_array_equal(results[i], np.full((3 + i, 2), 2 * i, np.float32))


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    def fn(x):
        if (x < 0).any():
            raise ValueError("negative input")
        return (x + 1,)

    batcher = CrossVideoBatcher({"audio": fn}, {"audio": 4}, "cpu", max_wait=0.01)
    bad = batcher.submit("audio", -np.ones((2, 1), np.float32))
    with pytest.raises(ValueError, match="negative input"):
        bad.result(timeout=10)
    (good,) = batcher.submit("audio", np.ones((3, 1), np.float32)).result(timeout=10)
    np.testing.assert_array_equal(good, np.full((3, 1), 2.0))


def test_an_empty_request_resolves_at_once_and_an_unknown_kind_is_refused():
    batcher = CrossVideoBatcher({"image": Recorder()}, {"image": 4}, "cpu")
    assert batcher.submit("image", np.zeros((0, 2), np.float32)).result(timeout=1) == ()
    with pytest.raises(KeyError, match="no model for 'teacher'"):
        batcher.submit("teacher", np.zeros((1, 2), np.float32))


def test_a_model_that_returns_the_wrong_number_of_rows_fails_its_requests_rather_than_misalign_them():
    def wrong_length(x):
        return (x[:1],)        # one row back for a batch of three

    batcher = CrossVideoBatcher({"image": wrong_length}, {"image": 3}, "cpu", max_wait=0.01)
    fut = batcher.submit("image", np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"the image model returned \[1\] rows for a batch of 3"):
        fut.result(timeout=10)
    assert batcher.submit("image", np.zeros((0, 2), np.float32)).result(timeout=1) == ()
