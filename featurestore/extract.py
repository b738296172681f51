"""The extraction run: one Dask task per video (decode once, compute, write one store group) and the client-side
driver that submits them, shows progress and alone writes the failures table."""
from __future__ import annotations

import os
import time
import traceback
import warnings
from dataclasses import dataclass, field

from featurestore.config import ExtractConfig
from featurestore.decode import DecodeError, hwaccel_failure
from featurestore.extractor import get_extractor
from featurestore.launch import worker_device
from featurestore.store import FeatureStore


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
        attrs.update({"label": row["label"], "split": row["split"], "path": path,
                      "segments": row.get("segments", "") or "", "provenance": extractor.provenance()})
        written = FeatureStore(store_path, mode="a").write_video(vid, arrays, attrs)
        return VideoResult(vid, path, True, n_steps=attrs["n_steps"], duration=attrs["duration"],
                           seconds=time.perf_counter() - t0, written=written,
                           details={"hwaccel_error": hwaccel_failure(config.hwaccel)} if config.hwaccel else {})
    except Exception as e:  # noqa: BLE001 - every failure becomes a failures-table row, never a crashed run
        msg = f"{type(e).__name__}: {e}" if not isinstance(e, DecodeError) else str(e)
        return VideoResult(vid, path, False, stage=stage[0], error=msg.strip().splitlines()[0] if msg.strip() else
                           type(e).__name__, seconds=time.perf_counter() - t0,
                           details={"traceback": traceback.format_exc(limit=3)})


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


def run_extraction(manifest, store: FeatureStore, config: ExtractConfig, client, dataset: str,
                   classes: list[str], retry_failed: bool = False, progress: bool = True) -> ExtractionSummary:
    """Extract every manifest row not yet in ``store``, one Dask task per video, with a progress bar.

    Completed videos are skipped; videos that failed before are skipped unless ``retry_failed``. Each failure is
    appended to the store's failures table as soon as it is reported, so an interrupted run loses nothing.
    """
    from distributed import as_completed
    from tqdm import tqdm

    with store.writer_lock("fs extract"):
        local = get_extractor(config, "cpu")
        store.initialise(dataset, classes, config.descriptors, local.provenance(), config.inputs)
        config = config.resolved(local.models)
        store.clear_partials()
        summary = ExtractionSummary()
        done = set(store.video_ids())
        failed_before = set() if retry_failed else set(store.failures()["video_id"])
        rows = []
        for row in manifest.to_dict("records"):
            if row["video_id"] in done:
                summary.skipped_done += 1
            elif row["video_id"] in failed_before:
                summary.skipped_failed += 1
            else:
                rows.append(row)
        t0 = time.perf_counter()
        futures = [client.submit(extract_video_task, row, str(store.path), config, pure=False,
                                 key=f"extract-{row['video_id']}-{os.getpid()}") for row in rows]
        by_key = {f.key: row for f, row in zip(futures, rows)}
        summary.submitted = len(futures)
        stored_ids = []
        bar = tqdm(total=len(futures), unit="video", desc="extract", disable=not progress, dynamic_ncols=True)
        for fut in as_completed(futures):
            row = by_key[fut.key]
            try:
                res: VideoResult = fut.result()
            except Exception as e:  # noqa: BLE001 - a dead worker (OOM, segfault) fails its video, not the run
                res = VideoResult(row["video_id"], row["path"], False, stage="worker",
                                  error=f"{type(e).__name__}: {e}")
            if res.details.get("hwaccel_error") and not summary.hwaccel_error:
                summary.hwaccel_error = res.details["hwaccel_error"]
                bar.write(f"warning: {summary.hwaccel_error}")
            if res.ok:
                summary.stored += 1
                summary.steps += res.n_steps
                summary.video_seconds += res.duration
                stored_ids.append(res.video_id)
            else:
                summary.failed += 1
                store.record_failure(res.video_id, res.path, res.stage, res.error)
                bar.write(f"failed {res.video_id} ({res.stage}): {res.error}")
            bar.set_postfix(stored=summary.stored, failed=summary.failed)
            bar.update(1)
            fut.release()
        bar.close()
        store.forget_failures(stored_ids)
        summary.wall_seconds = time.perf_counter() - t0
    return summary
