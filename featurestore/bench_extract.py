"""``fs bench-extract``: how close extraction runs to the speed of decoding, on the same files, in one run.

Measures, with the same Dask parallelism: the decode-only ceiling (the same single ffmpeg decode, scale and crop,
frames and audio read, no models), the full extraction into a scratch store, and each model alone on synthetic
batches; prints video-seconds per wall-second for each, the ratio extraction / ceiling, GPU utilisation (when a GPU
and NVML are there) and peak host / GPU memory.
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import threading
import warnings
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from featurestore.decode import DecodedVideo, DecodeError, decode_with_fallback, probe
from featurestore.config import ExtractConfig
from featurestore.constants import CLIP_FRAMES, CROP, FPS, MEL_FRAMES, N_MELS, STEP_FRAMES
from featurestore.extract import run_extraction
from featurestore.extractor import batch_counts, get_extractor
from featurestore.launch import worker_device
from featurestore.store import FeatureStore

STEPS_PER_VIDEO_SECOND = FPS / STEP_FRAMES


def _decode_frames(path: str, has_audio: bool, hwaccel: str, threads: int) -> int:
    n = 0
    with DecodedVideo(path, with_audio=has_audio, hwaccel=hwaccel, threads=threads) as dec:
        for chunk in dec.frames():
            n += len(chunk)
        dec.audio()
    return n


def decode_only_task(path: str, hwaccel: str = "", threads: int = 0) -> tuple[float, float, str]:
    """Decode a video exactly as the extractor does and drop the result: (video seconds, wall seconds, decoder).

    Hardware decoding falls back as in the extractor (the same :func:`decode_with_fallback`); a file that cannot be
    decoded at all counts 0 video seconds and reports "failed: <reason>".
    """
    t0 = time.perf_counter()
    try:
        info = probe(path)
        n, used = decode_with_fallback(lambda hw: _decode_frames(path, info.has_audio, hw, threads), hwaccel)
    except DecodeError as e:
        return 0.0, time.perf_counter() - t0, f"failed: {e}"
    return n / FPS, time.perf_counter() - t0, used


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warm_worker(config: ExtractConfig, dask_worker=None) -> str:
    """Load this worker's models and run one batch of each, so the timed run measures the steady state."""
    device = worker_device(config, dask_worker.name if dask_worker is not None else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the client already warned about any weight fallback
        get_extractor(config, device).warm_up()
    return device


def _peak_gpu_mb() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized() else 0.0


def gpu_utilisation() -> float:
    """Mean utilisation (%) of the visible GPUs now: NVML through torch (needs pynvml), else ``nvidia-smi``."""
    if torch.cuda.device_count() == 0:
        raise RuntimeError("no CUDA device")
    try:
        return float(np.mean([torch.cuda.utilization(i) for i in range(torch.cuda.device_count())]))
    except Exception:  # noqa: BLE001 - pynvml missing: ask nvidia-smi, which every driver installs
        exe = shutil.which("nvidia-smi")
        if exe is None:
            raise RuntimeError("neither pynvml nor nvidia-smi is here") from None
        out = subprocess.run([exe, "--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True).stdout
        util = dict(tuple(int(v) for v in line.split(",")) for line in out.strip().splitlines())
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        ids = [int(v) for v in visible.split(",") if v.strip().isdigit()] or list(util)
        return float(np.mean([util[i] for i in ids if i in util]))


class UtilisationSampler:
    """Mean and peak GPU utilisation sampled every ``period`` s while in a ``with`` block."""

    def __init__(self, period: float = 0.5):
        self.period, self.samples = period, []
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.samples.append(gpu_utilisation())
            except Exception as e:  # noqa: BLE001 - no way to read it: say so rather than guess
                self.error = f"n/a ({type(e).__name__}: {e})"
                return

    def __enter__(self) -> "UtilisationSampler":
        if torch.cuda.is_available():
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def figures(self) -> dict:
        """Mean and peak utilisation in %, or why there is none."""
        if self.error or not self.samples:
            return {"gpu_utilisation_percent": self.error or "n/a (no samples)"}
        return {"gpu_utilisation_percent": round(float(np.mean(self.samples)), 1),
                "gpu_utilisation_peak_percent": round(float(np.max(self.samples)), 1)}


@dataclass
class ModelRate:
    name: str
    items_per_second: float
    video_seconds_per_second: float


@torch.inference_mode()
def model_rates(config: ExtractConfig, device: str, batch: int = 32, repeats: int = 3) -> list[ModelRate]:
    """Each model alone on synthetic batches of its real input shape, in the extraction's precision (median of
    ``repeats`` after a warm-up)."""
    ex = get_extractor(config, device)
    dev = torch.device(device)
    cases = []
    if ex.student is not None:
        cases += [("image ResNet-18", ex.student.image_net, torch.randint(0, 255, (batch, CROP, CROP, 3),
                                                                         dtype=torch.uint8)),
                  ("audio ResNet-18", ex.student.audio_net, torch.randn(batch, N_MELS, MEL_FRAMES))]
    if ex.teacher is not None:
        clips = max(1, batch // 4)
        cases.append(("R(2+1)D-18 clip", ex.teacher, torch.randint(0, 255, (clips, CLIP_FRAMES, CROP, CROP, 3),
                                                                     dtype=torch.uint8)))
    rates = []
    for name, module, x in cases:
        x = x.to(dev)
        with ex.autocast():                   # as in the extraction: bf16 on a GPU
            module(x)
        times = []
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with ex.autocast():
                module(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        per_s = len(x) / float(np.median(times))
        rates.append(ModelRate(name, per_s, per_s / STEPS_PER_VIDEO_SECOND))
    return rates


def bench_extract(manifest: pd.DataFrame, config: ExtractConfig, client, say=print, progress: bool = True) -> dict:
    """Run the three measurements on ``manifest``'s files; returns the figures (also printed through ``say``)."""
    from distributed import as_completed
    from tqdm import tqdm

    paths = manifest["path"].tolist()
    workers = client.scheduler_info()["workers"]
    in_flight = max((w.get("nthreads", 1) for w in workers.values()), default=1)
    say(f"{len(paths)} videos, {len(workers)} worker(s) x {in_flight} video(s) in flight, device {config.device}"
        f"{', hwaccel ' + config.hwaccel if config.hwaccel else ''}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resolved = config.resolved(get_extractor(config, "cpu").models)
    devices = client.run(_warm_worker, resolved)
    say(f"models loaded and warmed up on {', '.join(sorted(set(devices.values())))}")
    t0 = time.perf_counter()
    futures = client.map(decode_only_task, paths, hwaccel=config.hwaccel, threads=config.decode_threads, pure=False)
    with tqdm(total=len(futures), unit="video", desc="decode only", disable=not progress, dynamic_ncols=True) as bar:
        for _ in as_completed(futures):
            bar.update(1)
    decoded = [f.result() for f in futures]
    decode_wall = time.perf_counter() - t0
    video_seconds = sum(v for v, _, _ in decoded)
    decoders = pd.Series([d for _, _, d in decoded]).value_counts().to_dict()
    tmp = tempfile.mkdtemp(prefix="fs-bench-extract-")
    try:
        store = FeatureStore(f"{tmp}/store.zarr", mode="a")
        before = client.run(batch_counts)
        with UtilisationSampler() as sampler:
            summary = run_extraction(manifest, store, config, client, "bench", sorted(manifest["label"].unique()),
                                     progress=progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    after = client.run(batch_counts)
    fill = {}
    for worker, counts in after.items():
        for kind, (rows, batches) in counts.items():
            r0, b0 = before.get(worker, {}).get(kind, (0, 0))
            f = fill.setdefault(kind, [0, 0])
            f[0] += rows - r0
            f[1] += batches - b0
    sizes = get_extractor(resolved, "cpu").batcher.batch_sizes
    batch_fill = {k: {"mean_rows": round(r / b, 1), "batch_size": sizes[k], "batches": b}
                  for k, (r, b) in sorted(fill.items()) if b}
    worker_rss = client.run(_peak_rss_mb)
    gpu = {}
    if config.device.startswith("cuda"):
        gpu = {**sampler.figures(), "peak_gpu_memory_mb_per_worker": max(client.run(_peak_gpu_mb).values())}
    rates = model_rates(config, "cuda" if config.device.startswith("cuda") else "cpu")
    result = {
        "videos": len(paths), "video_seconds": video_seconds,
        "decode_only_video_s_per_s": video_seconds / decode_wall,
        "extraction_video_s_per_s": summary.video_seconds / summary.wall_seconds if summary.wall_seconds else 0.0,
        "failed": summary.failed, "decode_only_decoders": decoders,
        "peak_host_memory_mb_per_worker": max(worker_rss.values()) if worker_rss else _peak_rss_mb(),
        **gpu, "models": rates, "batch_fill": batch_fill,
    }
    result["ratio_extraction_to_ceiling"] = result["extraction_video_s_per_s"] / result["decode_only_video_s_per_s"]
    say(f"decode-only ceiling   {result['decode_only_video_s_per_s']:8.2f} video-s per wall-s  (decoded: "
        + ", ".join(f"{n} {d}" for d, n in decoders.items()) + ")")
    say(f"full extraction       {result['extraction_video_s_per_s']:8.2f} video-s per wall-s  "
        f"(ratio to ceiling {100 * result['ratio_extraction_to_ceiling']:.1f} %; {summary.failed} failed)")
    for r in rates:
        say(f"{r.name:<21} {r.video_seconds_per_second:8.2f} video-s per wall-s  ({r.items_per_second:.1f} items/s alone)")
    say("mean batch            " + ", ".join(f"{k} {v['mean_rows']:g} of {v['batch_size']} ({v['batches']} batches)"
                                          for k, v in batch_fill.items()))
    say(f"peak host memory      {result['peak_host_memory_mb_per_worker']:.0f} MB per worker")
    for k, v in gpu.items():
        say(f"{k:<21} {v}")
    return result
