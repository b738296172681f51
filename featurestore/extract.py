"""The extraction run: one Dask task per video (decode once, compute, write one store group) and the client-side
driver that submits them a bounded number at a time, shows progress and alone writes the failures table."""
from __future__ import annotations

import logging
import os
import time
import traceback
import warnings
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import pandas as pd

from featurestore.config import ExtractConfig
from featurestore.decode import DecodeError, DecoderStopped, DecodeTimeout, hwaccel_failure
from featurestore.extractor import get_extractor
from featurestore.launch import DeviceError, check_worker_devices, is_device_fault, restart_worker, worker_device
from featurestore.progress import progress_bar
from featurestore.segments import fit_segments
from featurestore.store import FeatureStore, StoreError, store_fault
from featurestore.text import printable

log = logging.getLogger(__name__)


@dataclass
class VideoResult:
    """What a task reports back to the client (which alone writes the failures table)."""

    video_id: str
    path: str
    ok: bool
    stage: str = ""
    error: str = ""
    n_steps: int = 0
    duration: float = 0.0
    seconds: float = 0.0
    written: bool = True
    details: dict = field(default_factory=dict)


def extract_video_task(row: dict, store_path: str, config: ExtractConfig) -> VideoResult:
    """Extract one manifest row into the store. Never raises: failures come back as a result with the reason."""
    t0 = time.perf_counter()
    stage = ["load"]
    vid, path = row["video_id"], row["path"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the client loaded the same weights first and already warned
            extractor = get_extractor(config, worker_device(config))
        arrays, attrs = extractor.extract(path, stage)
        stage[0] = "write"
        # segments past the decoded end are cut to it (dropped when they start after it), with a note
        manifest_segments = row.get("segments", "") or ""
        segments, notes = fit_segments(manifest_segments, attrs["duration"])
        attrs.update({"label": row["label"], "split": row["split"], "path": path,
                      "segments": segments, "provenance": extractor.provenance()})
        if segments != manifest_segments:
            attrs["manifest_segments"] = manifest_segments
        for column in ("distractors", "confounders"):   # the synthetic manifest's other segments, drawn by fs show
            if row.get(column):
                attrs[column] = row[column]
        written = FeatureStore(store_path, mode="a").write_video(vid, arrays, attrs)
        return VideoResult(vid, path, True, n_steps=attrs["n_steps"], duration=attrs["duration"],
                           seconds=time.perf_counter() - t0, written=written,
                           details={**({"hwaccel_error": hwaccel_failure(config.hwaccel)} if config.hwaccel else {}),
                                    **({"notes": notes} if notes else {})})
    except Exception as e:  # noqa: BLE001 - every failure becomes a failures-table row, never a crashed run
        msg = f"{type(e).__name__}: {e}" if not isinstance(e, DecodeError) else str(e)
        details = {"traceback": traceback.format_exc(limit=3)}
        if isinstance(e, DecoderStopped):          # stopped from outside: not the video's fault, never a row
            details.update(stopped=e.signal_name)
        elif stage[0] == "write" and store_fault(e) is not None:     # the store's disk, not the video
            details.update(store_fault=True)
        if _device_fault(e):                                   # the worker's fault: the client decides
            details.update(device_fault=True, worker=_worker_address(), pid=os.getpid(),
                           restartable=not isinstance(e, DeviceError))
        return VideoResult(vid, path, False, stage=_failure_stage(e, stage[0]),
                           error=msg.strip().splitlines()[0] if msg.strip() else
                           type(e).__name__, seconds=time.perf_counter() - t0, details=details)


def _device_fault(error: Exception) -> bool:
    """A CUDA fault or a missing device: the worker's fault, not the video's."""
    return isinstance(error, DeviceError) or is_device_fault(error)


def _failure_stage(error: Exception, stage: str) -> str:
    if isinstance(error, DecodeTimeout):
        return "timeout"
    if _device_fault(error):
        return DEVICE_STAGE
    return stage


def _worker_address() -> str:
    """The address of the Dask worker running this task ("" outside one)."""
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return ""


class ExtractionInterrupted(RuntimeError):
    """The run was stopped from outside (Ctrl-C, or a signal that stopped a decoder): the message is one line
    saying what was stored; nothing in flight was recorded as failed, so the next run does it."""


@dataclass
class ExtractionSummary:
    """Totals of one ``fs extract`` run."""

    submitted: int = 0
    stored: int = 0
    failed: int = 0
    skipped_done: int = 0
    skipped_failed: int = 0
    steps: int = 0
    video_seconds: float = 0.0
    wall_seconds: float = 0.0
    hwaccel_error: str = ""

    def line(self) -> str:
        rate = (f"; {self.wall_seconds / (self.video_seconds / 60):.1f} s of wall time per video-minute"
                if self.video_seconds else "")
        return (f"stored {self.stored}, failed {self.failed}, skipped {self.skipped_done} already stored and "
                f"{self.skipped_failed} failed earlier; {self.steps} steps from {self.video_seconds / 60:.2f} "
                f"video-minutes in {self.wall_seconds:.1f} s{rate}")


T = TypeVar("T")
DEVICE_STAGE = "device"         # failures-table stage of a video failed by its worker's GPU; later runs retry these
DEVICE_RETRIES = 1              # times a video failed by a device fault is submitted again (to a restarted worker)
IN_FLIGHT_PER_THREAD = 2        # tasks in flight per worker thread: the video it decodes and the next one, queued
BOUND_REFRESH_SECONDS = 10.0    # how often the default bound reads the workers again (a cluster may grow)


def default_max_in_flight(client) -> int:
    """Tasks to keep in flight on ``client``'s cluster: ``IN_FLIGHT_PER_THREAD`` (2) × each worker's threads, summed
    over the workers connected now (at least 2 while none is)."""
    threads = sum(client.nthreads().values())     # every worker (scheduler_info() may list only the first few)
    return IN_FLIGHT_PER_THREAD * max(1, threads)


def _refreshed(read: Callable[[], int], every: float) -> Callable[[], int]:
    """``read()``, called again at most every ``every`` seconds; a failed re-read keeps the last value."""
    state: list = [0.0, None]

    def value() -> int:
        now = time.monotonic()
        if state[1] is None or now - state[0] >= every:
            try:
                state[1] = read()
            except Exception:   # noqa: BLE001 - a scheduler hiccup keeps the bound, it does not stop the run
                if state[1] is None:
                    raise
            state[0] = now
        return state[1]
    return value


def iter_rows(manifest: pd.DataFrame | Iterable[Mapping[str, Any]]) -> Iterator[dict]:
    """The manifest's rows as dicts, one at a time: a DataFrame is walked with ``itertuples``, never turned into a
    list of all its rows; any other iterable of mappings is read lazily."""
    if isinstance(manifest, pd.DataFrame):
        columns = list(manifest.columns)
        for values in manifest.itertuples(index=False, name=None):
            yield dict(zip(columns, values))
    else:
        for row in manifest:
            yield dict(row)


def as_completed_bounded(submit: Callable[[T], Any], items: Iterable[T], max_in_flight: int | Callable[[], int],
                         completed: Any = None, again: deque[T] | None = None) -> Iterator[tuple[T, Any]]:
    """``submit(item)`` for each of ``items``, read lazily, with at most ``max_in_flight`` futures submitted and not
    yet returned; yields (item, future) as each completes, having first submitted the next item in its place.

    ``max_in_flight`` may be a callable, read again after each completion (a growing cluster gets more work).
    ``completed`` is the as_completed-like collection (``add`` and iteration) that tracks the futures; default a
    new ``distributed.as_completed``. The caller releases each future it is given. Items the caller appends to
    ``again`` are submitted before the rest, within the same bound (a video to retry).
    """
    if completed is None:
        from distributed import as_completed
        completed = as_completed()
    bound = max_in_flight if callable(max_in_flight) else (lambda: max_in_flight)
    again = again if again is not None else deque()
    rest = iter(items)
    pending: dict[int, tuple[Any, T]] = {}     # id(future) -> (future, item): the futures in flight
    exhausted = False

    def fill() -> None:
        nonlocal exhausted
        limit = max(1, int(bound()))
        while (again or not exhausted) and len(pending) < limit:
            if again:
                item = again.popleft()
            else:
                try:
                    item = next(rest)
                except StopIteration:
                    exhausted = True
                    return
            fut = submit(item)
            pending[id(fut)] = (fut, item)
            completed.add(fut)

    fill()
    for fut in completed:
        _, item = pending.pop(id(fut))
        fill()
        yield item, fut
        if again:
            fill()


def run_extraction(manifest: pd.DataFrame | Iterable[Mapping[str, Any]], store: FeatureStore, config: ExtractConfig,
                   client, dataset: str, classes: list[str], retry_failed: bool = False, progress: bool = True,
                   max_in_flight: int | None = None,
                   task: Callable[[dict, str, ExtractConfig], VideoResult] = extract_video_task) -> ExtractionSummary:
    """Extract every manifest row not yet in ``store``, one Dask task per video, with a progress bar.

    Completed videos are skipped; videos that failed before are skipped unless ``retry_failed``. Each failure is
    appended to the store's failures table as soon as it is reported, so an interrupted run loses nothing.

    The manifest (a DataFrame or any iterable of row mappings) is read lazily and at most ``max_in_flight`` tasks
    are in flight at once, a new one submitted as each result arrives, so the client and the scheduler hold as
    few tasks for a million rows as for a thousand. Default: :func:`default_max_in_flight` (2 per worker thread),
    read again every ``BOUND_REFRESH_SECONDS``. ``task(row, store_path, config)`` runs one video on a worker.

    On GPUs every worker's device is checked before anything is submitted (:func:`check_worker_devices`). A CUDA
    error is the worker's fault, not the video's: the worker is restarted (:func:`restart_worker`, once per worker
    process) for a fresh CUDA context and the video submitted again, up to ``DEVICE_RETRIES`` times; a video
    still failed by its device gets a row at stage "device", which later runs retry. The run stops with
    :class:`DeviceError` once more workers were restarted than twice the workers connected, or a worker sees no GPU.

    Faults that are not the video's never become failures rows, and stop the run: a store that cannot be written
    (full disk, quota, read-only, permissions: :func:`store_fault`) raises :class:`StoreError`; Ctrl-C in this
    process, or a decoder stopped by a signal (Ctrl-C sent to the process group of a client that ignores it),
    raises :class:`ExtractionInterrupted`. Paths are made absolute here, against this process's working directory,
    before any worker sees them.
    """
    from distributed import as_completed

    if max_in_flight is not None and max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
    with store.writer_lock("fs extract"):
        local = get_extractor(config, "cpu")
        signals = store.initialise(dataset, classes, config.descriptors,
                                   {**local.provenance(), "compute": config.compute}, config.inputs, config.signals)
        config = replace(config.resolved(local.models), signals=signals)
        workers = 1
        if config.device.startswith("cuda"):
            workers = len(check_worker_devices(client, config))
        store.clear_partials()
        summary = ExtractionSummary()
        done = set(store.video_ids())
        failures = store.failures()
        failed_ids = set(failures["video_id"])     # rows to forget once stored
        store.forget_failures(failed_ids & done)   # stored by a run that stopped before it could forget them
        # a video failed by its worker's GPU is retried by the next run: the video itself may be sound
        failed_before = set() if retry_failed else set(failures.loc[failures["stage"] != DEVICE_STAGE, "video_id"])
        total = None
        if isinstance(manifest, pd.DataFrame):
            ids = manifest["video_id"]
            is_done = ids.isin(done)
            total = int((~is_done & ~ids.isin(failed_before)).sum())

        def todo() -> Iterator[dict]:
            for row in iter_rows(manifest):
                if row["video_id"] in done:
                    summary.skipped_done += 1
                elif row["video_id"] in failed_before:
                    summary.skipped_failed += 1
                else:
                    summary.submitted += 1
                    # absolute here, in the client: a worker (maybe on another machine) never resolves a path
                    # against its own working directory, and the store records where the file really is
                    yield {**row, "path": os.path.abspath(os.fspath(row["path"]))}

        store_path, pid = str(store.path), os.getpid()

        retries: dict[str, int] = {}           # video -> times resubmitted after a device fault

        def submit(row: dict):
            attempt = retries.get(row["video_id"], 0)      # a resubmitted video gets a key of its own
            return client.submit(task, row, store_path, config, pure=False,
                                 key=f"extract-{row['video_id']}-{pid}" + (f"-retry{attempt}" if attempt else ""))

        bound = max_in_flight or _refreshed(lambda: default_max_in_flight(client), BOUND_REFRESH_SECONDS)
        t0 = time.perf_counter()
        stored_ids = []       # only those with a failure row to forget: the list stays as short as the failures
        bar = progress_bar(total, "extract", disable=not progress)
        again: deque[dict] = deque()           # videos failed by a device fault, to submit again
        restarted: set[tuple[str, int]] = set()   # (address, pid) of the worker processes restarted
        finished = [0]                          # videos stored or recorded as failed by this run

        def interrupted(why: str) -> ExtractionInterrupted:
            left = summary.submitted - finished[0]
            return ExtractionInterrupted(f"interrupted{why}: this run stored {summary.stored} video(s); {left} in "
                                         f"flight are left to the next run (none recorded as failed)")
        completed = False
        try:
            for row, fut in as_completed_bounded(submit, todo(), bound, as_completed(loop=client.loop), again):
                try:
                    res: VideoResult = fut.result()
                except Exception as e:  # noqa: BLE001 - a dead worker (OOM, segfault) fails its video, not the run
                    res = VideoResult(row["video_id"], row["path"], False, stage="worker",
                                      error=f"{type(e).__name__}: {e}")
                fut.release()
                if res.details.get("stopped"):      # Ctrl-C reached the decoders but not this process (`fs ... &`)
                    raise interrupted(f" ({res.error})")
                if res.details.get("store_fault"):   # full disk, quota, read-only: every next video would fail too
                    raise StoreError(f"{res.video_id}: the store cannot be written ({res.error}); run stopped, the "
                                     f"video is not recorded as failed: free space or fix permissions and run again")
                if res.details.get("device_fault"):
                    worker = res.details.get("worker", "")
                    if not res.details.get("restartable") or not worker:
                        raise DeviceError(f"{res.video_id}: {res.error} (worker {worker or '?'}): run stopped")
                    if (worker, res.details.get("pid")) not in restarted:    # its other videos fail the same way
                        if len(restarted) >= 2 * workers:
                            raise DeviceError(f"{len(restarted)} worker restarts and CUDA errors go on "
                                              f"({res.error}): run stopped; check the GPUs "
                                              f"(nvidia-smi -q -d ECC,PAGE_RETIREMENT)")
                        log.warning(f"CUDA error on worker {worker} ({res.error}): restarting it, {res.video_id} again")
                        restart_worker(client, worker)
                        restarted.add((worker, res.details.get("pid")))
                    if retries.get(res.video_id, 0) < DEVICE_RETRIES:
                        retries[res.video_id] = retries.get(res.video_id, 0) + 1
                        again.append(row)
                        continue
                if res.details.get("hwaccel_error") and not summary.hwaccel_error:
                    summary.hwaccel_error = res.details["hwaccel_error"]
                    log.warning(f"warning: {summary.hwaccel_error}")
                for note in res.details.get("notes", ()):
                    log.warning(f"note: {printable(res.video_id, 80)}: {note}")
                if res.ok:
                    summary.stored += 1
                    summary.steps += res.n_steps
                    summary.video_seconds += res.duration
                    if res.video_id in failed_ids:
                        stored_ids.append(res.video_id)
                else:
                    store.record_failure(res.video_id, res.path, res.stage, res.error)
                    summary.failed += 1
                    failed_ids.add(res.video_id)
                    log.warning(f"failed {printable(res.video_id, 80)} ({res.stage}): {printable(res.error)}")
                finished[0] += 1
                bar.set_postfix(stored=summary.stored, failed=summary.failed)
                bar.update(1)
            completed = True
        except KeyboardInterrupt:
            raise interrupted("") from None
        finally:
            bar.close()
            try:            # videos stored by this run lose their old failure rows, however the run ends
                store.forget_failures(stored_ids)
            except StoreError:
                if completed:
                    raise
                # a stopped run shows why it stopped; the rows are forgotten by the next run that completes
        summary.wall_seconds = time.perf_counter() - t0
    return summary
