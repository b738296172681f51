"""fs extract submits a bounded number of tasks and reads the manifest lazily: the client and the scheduler hold as
few tasks for a huge manifest as for a small one."""
import random
import threading
import time
import tracemalloc

import pandas as pd
import pytest

from featurestore.cluster import close_client, make_client
from featurestore.config import ExtractConfig
from featurestore.extract import VideoResult, as_completed_bounded, default_max_in_flight, iter_rows, run_extraction
from featurestore.store import FeatureStore

LIGHT = ExtractConfig(descriptors=("image", "audio", "fused"), student_weights="random", batch_size=4)


def big_manifest(n: int) -> pd.DataFrame:
    return pd.DataFrame({"video_id": [f"v{i:07d}" for i in range(n)], "path": [f"/data/v{i:07d}.mp4" for i in range(n)],
                         "label": [f"c{i % 7}" for i in range(n)], "split": ["train", "test"] * (n // 2) + ["train"] * (n % 2),
                         "segments": [""] * n})


# --- the submission loop alone, with a fake client ------------------------------------------------------------------

class FakeFuture:
    def __init__(self, key: str, value):
        self.key, self.value, self.released = key, value, False

    def result(self):
        return self.value

    def release(self) -> None:
        self.released = True


class FakeClient:
    """Runs each task at once; :class:`FakeCompleted` hands the futures back in random order."""

    def __init__(self):
        self.submitted = 0

    def submit(self, fn, *args, key: str, **kwargs) -> FakeFuture:
        self.submitted += 1
        return FakeFuture(key, fn(*args))


class FakeCompleted:
    """as_completed look-alike: returns a random one of the futures added and not yet returned; records how many
    were outstanding at most."""

    def __init__(self, seed: int = 0):
        self.outstanding: list[FakeFuture] = []
        self.max_outstanding = 0
        self.rng = random.Random(seed)

    def add(self, fut: FakeFuture) -> None:
        self.outstanding.append(fut)
        self.max_outstanding = max(self.max_outstanding, len(self.outstanding))

    def __iter__(self):
        return self

    def __next__(self) -> FakeFuture:
        if not self.outstanding:
            raise StopIteration
        i = self.rng.randrange(len(self.outstanding))
        self.outstanding[i], self.outstanding[-1] = self.outstanding[-1], self.outstanding[i]
        return self.outstanding.pop()


def drive(df: pd.DataFrame, bound, check_ids: bool = False) -> tuple[int, int, int]:
    """Run every row of ``df`` through the loop; (results, max outstanding, peak bytes traced while looping)."""
    client, completed = FakeClient(), FakeCompleted()
    n, seen = 0, set()
    tracemalloc.start()
    try:
        for row, fut in as_completed_bounded(lambda r: client.submit(lambda r: r["video_id"], r, key=r["video_id"]),
                                             iter_rows(df), bound, completed):
            assert fut.result() == row["video_id"]
            fut.release()
            n += 1
            if check_ids:
                seen.add(row["video_id"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert client.submitted == n
    if check_ids:
        assert seen == set(df["video_id"])
    return n, completed.max_outstanding, peak


def test_200000_rows_run_with_at_most_the_bound_in_flight_and_no_more_memory_than_2000():
    assert drive(big_manifest(2_000), 8, check_ids=True)[:2] == (2_000, 8)
    _, _, peak_small = drive(big_manifest(2_000), 8)
    t0 = time.perf_counter()
    n, most, peak_big = drive(big_manifest(200_000), 8)
    assert n == 200_000 and most == 8
    # the loop holds the bound, not the rows (to_dict("records") of these 200,000 rows alone takes ~40 MB)
    assert peak_big < 2 * peak_small + (64 << 10) and peak_big < 1 << 20, (peak_small, peak_big)
    assert time.perf_counter() - t0 < 30


def test_a_bound_read_again_follows_a_growing_cluster():
    sizes = iter([2] * 50 + [6] * 10_000)
    completed, client = FakeCompleted(), FakeClient()
    seen_bounds, most_over = [], 0
    for _, _ in as_completed_bounded(lambda r: client.submit(lambda r: r, r, key=str(r)), range(1_000),
                                     lambda: seen_bounds.append(next(sizes)) or seen_bounds[-1], completed):
        most_over = max(most_over, len(completed.outstanding) - seen_bounds[-1])
    assert client.submitted == 1_000 and most_over <= 0 and completed.max_outstanding == 6


def test_rows_of_a_dataframe_and_of_an_iterable_come_as_dicts_in_order():
    df = big_manifest(5)
    rows = list(iter_rows(df))
    assert rows == df.to_dict("records")
    assert list(iter_rows(iter(rows))) == rows


# --- run_extraction on a real Dask cluster, with a fake task ---------------------------------------------------------

def quick_task(row: dict, store_path: str, config: ExtractConfig) -> VideoResult:
    """An ok result at once (every 1000th video fails), no ffmpeg and no store writes."""
    if row["video_id"].endswith("999"):
        return VideoResult(row["video_id"], row["path"], False, stage="decode", error="fake failure")
    return VideoResult(row["video_id"], row["path"], True, n_steps=2, duration=1.0)


class CountingClient:
    """The real client, counting at every submit the futures not yet done and the tasks the scheduler holds."""

    def __init__(self, client):
        self._client, self._live = client, set()
        self.submitted = self.max_in_flight = self.max_scheduler_tasks = 0
        self._lock = threading.Lock()

    def submit(self, *args, **kwargs):
        fut = self._client.submit(*args, **kwargs)
        with self._lock:
            self.submitted += 1
            self._live = {f for f in self._live if not f.done()} | {fut}
            self.max_in_flight = max(self.max_in_flight, len(self._live))
            self.max_scheduler_tasks = max(self.max_scheduler_tasks, len(self._client.cluster.scheduler.tasks))
        return fut

    def __getattr__(self, name):
        return getattr(self._client, name)


N_REAL = 6_000       # ~300 Dask round trips/s at 4 in flight on 2 cores: 200,000 would take ~11 min (see the loop test)


@pytest.fixture(scope="module")
def client():
    c = make_client(workers=1, processes=False, threads_per_worker=2)
    yield c
    close_client(c)


def test_a_large_manifest_runs_through_dask_with_bounded_tasks(tmp_path, client):
    df = big_manifest(N_REAL)
    store = FeatureStore(tmp_path / "s.zarr", mode="a")
    store.initialise("t", [f"c{i}" for i in range(7)], LIGHT.descriptors, {"models": {}}, ())
    for vid in ("v0000001", "v0000002", "v0000003"):
        store.record_failure(vid, f"/data/{vid}.mp4", "probe", "failed in an earlier run")
    counting = CountingClient(client)
    assert default_max_in_flight(client) == 4                    # 2 per thread, 1 worker with 2 threads
    t0 = time.perf_counter()
    summary = run_extraction(df, store, LIGHT, counting, "t", [f"c{i}" for i in range(7)], progress=False,
                             task=quick_task)
    wall = time.perf_counter() - t0
    n_fail = sum(1 for v in df["video_id"] if v.endswith("999"))
    assert summary.skipped_failed == 3 and summary.submitted == N_REAL - 3 == counting.submitted
    assert summary.stored == N_REAL - 3 - n_fail and summary.failed == n_fail
    assert summary.steps == 2 * summary.stored
    assert 1 <= counting.max_in_flight <= 4, counting.max_in_flight
    assert counting.max_scheduler_tasks <= 2 * 4 + 4, counting.max_scheduler_tasks   # bound + results being released
    fails = store.failures()
    assert set(fails["stage"]) == {"probe", "decode"} and len(fails) == 3 + n_fail
    print(f"{N_REAL} tasks in {wall:.1f} s; at most {counting.max_in_flight} in flight, "
          f"{counting.max_scheduler_tasks} on the scheduler")


def test_an_explicit_bound_is_kept(tmp_path, client):
    df = big_manifest(300)
    store = FeatureStore(tmp_path / "s.zarr", mode="a")
    counting = CountingClient(client)
    summary = run_extraction(df, store, LIGHT, counting, "t", [f"c{i}" for i in range(7)], progress=False,
                             task=quick_task, max_in_flight=1)
    assert summary.submitted == 300 and counting.max_in_flight == 1
    with pytest.raises(ValueError, match="max_in_flight"):
        run_extraction(df, store, LIGHT, counting, "t", [f"c{i}" for i in range(7)], progress=False,
                       task=quick_task, max_in_flight=0)
