"""``fs bench-extract``: how close extraction runs to the speed of decoding, on the same files, in one run.

Measures, with the same Dask parallelism: the decode-only ceiling (the same single ffmpeg decode, scale and crop,
frames and audio read, no models), the full extraction into a scratch store, and each model alone on synthetic
batches; prints video-seconds per wall-second for each, the ratio extraction / ceiling, GPU utilisation (when a GPU
and NVML are there) and peak host / GPU memory.
"""
from __future__ import annotations

import contextlib
import logging
import resource
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch

from featurestore.decode import DecodedVideo, DecodeError, decode_with_fallback, probe
from featurestore.config import ExtractConfig
from featurestore.constants import FPS, STEP_FRAMES
from featurestore.extract import run_extraction
from featurestore.extractor import Extractor, batch_counts, get_extractor
from featurestore.launch import DeviceError, WorkerDevice, check_worker_devices, describe_worker_device, worker_device
from featurestore.progress import progress_bar
from featurestore.store import FeatureStore

log = logging.getLogger(__name__)

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


def _worker_name(dask_worker) -> object:
    return dask_worker.name if dask_worker is not None else None


def _warm_worker(config: ExtractConfig, dask_worker=None) -> str:
    """Load this worker's models and run each at every batch size it will run, so the timed run measures the
    steady state."""
    device = worker_device(config, _worker_name(dask_worker))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the client already warned about any weight fallback
        get_extractor(config, device).warm_up()
    return device


def _peak_gpu_mb() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized() else 0.0


# --- GPU utilisation and memory, of the workers' own GPUs ------------------------------------------------------

@dataclass(frozen=True)
class GpuReading:
    """One GPU now: utilisation (%) and memory used by every process on it (MB)."""

    utilisation_percent: float
    memory_used_mb: float


def _nvml_readings() -> dict[str, GpuReading] | None:
    """Every GPU of this machine by UUID through NVML (pynvml), or None when pynvml is not installed or fails."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        out = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            out[uuid.decode() if isinstance(uuid, bytes) else uuid] = GpuReading(
                float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)
        return out
    except Exception:  # noqa: BLE001 - pynvml present but NVML unusable: nvidia-smi may still answer
        return None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:               # "[N/A]" (e.g. a MIG instance)
        return float("nan")


def _smi_readings() -> dict[str, GpuReading]:
    """Every GPU of this machine by UUID through ``nvidia-smi`` (every driver installs it)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise RuntimeError("neither pynvml nor nvidia-smi is here")
    out = subprocess.run([exe, "--query-gpu=uuid,utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    readings = {}
    for line in out.strip().splitlines():
        uuid, util, mem = (v.strip() for v in line.split(","))
        readings[uuid] = GpuReading(_number(util), _number(mem))
    return readings


def read_gpus(uuids: list[str]) -> dict[str, GpuReading]:
    """The GPUs named by ``uuids`` now, by UUID: NVML through pynvml, else ``nvidia-smi``.

    Matched by UUID, never by index: NVML and nvidia-smi number GPUs by PCI bus and ignore
    ``CUDA_VISIBLE_DEVICES``, while CUDA ordinals follow it (and, by default, speed order).
    """
    readings = _nvml_readings() or _smi_readings()
    by_key = {_uuid_key(u): r for u, r in readings.items()}
    missing = [u for u in uuids if _uuid_key(u) not in by_key]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not among this machine's GPUs ({', '.join(readings) or 'none'})")
    return {u: by_key[_uuid_key(u)] for u in uuids}


def _uuid_key(uuid: str) -> str:
    """A GPU UUID as compared: lower case, without NVML's "GPU-" prefix (torch prints it without)."""
    uuid = uuid.strip().lower()
    return uuid[4:] if uuid.startswith("gpu-") else uuid


class UtilisationSampler:
    """Utilisation and memory used of the GPUs ``uuids``, sampled every ``period`` s while in a ``with`` block."""

    def __init__(self, uuids: list[str], period: float = 0.5):
        self.uuids, self.period = list(uuids), period
        self.samples: list[dict[str, GpuReading]] = []
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fs-gpu-sampler")

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.samples.append(read_gpus(self.uuids))
            except Exception as e:  # noqa: BLE001 - no way to read it: say so rather than guess
                self.error = f"n/a ({type(e).__name__}: {e})"
                return

    def __enter__(self) -> "UtilisationSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def figures(self) -> dict[str, dict]:
        """Per GPU (by UUID): mean and peak utilisation in %, peak memory used in MB; or why there is none."""
        if self.error or not self.samples:
            return {u: {"error": self.error or "n/a (no samples)"} for u in self.uuids}
        out = {}
        for u in self.uuids:
            util = np.array([s[u].utilisation_percent for s in self.samples])
            mem = np.array([s[u].memory_used_mb for s in self.samples])
            out[u] = {"utilisation_mean_percent": round(float(np.nanmean(util)), 1) if np.isfinite(util).any()
                      else "n/a", "utilisation_peak_percent": round(float(np.nanmax(util)), 1)
                      if np.isfinite(util).any() else "n/a",
                      "memory_used_peak_mb": round(float(np.nanmax(mem))) if np.isfinite(mem).any() else "n/a",
                      "samples": len(self.samples)}
        return out


_SAMPLERS: dict[str, tuple[UtilisationSampler, WorkerDevice]] = {}     # by worker address


def _start_sampling(config: ExtractConfig, period: float, dask_worker=None) -> str:
    """Start sampling this worker's own GPU (found by UUID); returns the UUID."""
    address = dask_worker.address if dask_worker is not None else ""
    device = describe_worker_device(config, dask_worker)
    if device.problem:
        raise DeviceError(device.problem)
    sampler = UtilisationSampler([device.uuid], period).__enter__()
    _SAMPLERS[address] = (sampler, device)
    return device.uuid


def _stop_sampling(dask_worker=None) -> dict:
    """This worker's GPU figures since :func:`_start_sampling`, with torch's own peak allocation."""
    entry = _SAMPLERS.pop(dask_worker.address if dask_worker is not None else "", None)
    if entry is None:         # a worker restarted since (a CUDA error): its sampler went with the old process
        return {"uuid": "(restarted worker)", "error": "a worker restarted during the run (CUDA error): no figures"}
    sampler, device = entry
    sampler.__exit__()
    return {"uuid": device.uuid, "name": device.name, "device": device.device, **sampler.figures()[device.uuid],
            "torch_peak_allocated_mb": round(_peak_gpu_mb())}


@contextlib.contextmanager
def sampling_worker_gpus(client, config: ExtractConfig, period: float = 0.5) -> Iterator[dict]:
    """Sample each worker's own GPU every ``period`` s inside the block; the yielded dict is filled with
    :func:`gpu_figures` on exit."""
    figures: dict = {}
    client.run(_start_sampling, config, period)
    try:
        yield figures
    finally:
        figures.update(gpu_figures(client.run(_stop_sampling)))


def gpu_figures(per_worker: dict[str, dict]) -> dict:
    """The run's GPU figures from each worker's :func:`_stop_sampling`: utilisation averaged over the GPUs in use
    (not every GPU of the machine), peaks, and memory by torch (per worker) and by nvidia-smi (per GPU, every
    process on it: the models, each CUDA context, each ffmpeg's NVDEC context)."""
    def values(key):
        return [v[key] for v in per_worker.values() if isinstance(v.get(key), (int, float))]
    util, peaks, used = values("utilisation_mean_percent"), values("utilisation_peak_percent"), values("memory_used_peak_mb")
    errors = sorted({v["error"] for v in per_worker.values() if "error" in v})
    return {
        "gpus_sampled": len(util),
        "gpu_utilisation_percent": round(float(np.mean(util)), 1) if util else (errors[0] if errors else "n/a"),
        "gpu_utilisation_peak_percent": max(peaks) if peaks else "n/a",
        "peak_gpu_memory_mb_per_worker": max(values("torch_peak_allocated_mb"), default=0),
        "peak_gpu_memory_used_mb_per_gpu": max(used) if used else "n/a",
        "per_gpu": {v["uuid"]: {"worker": w, **{k: x for k, x in v.items() if k != "uuid"}}
                    for w, v in sorted(per_worker.items())},
    }


# --- each model alone, as the extraction runs it -----------------------------------------------------------------

MODEL_NAMES = {"image": "image ResNet-18", "audio": "audio ResNet-18 (+ log-mel)", "fused": "fusion Ψ",
               "clip": "R(2+1)D-18 clip"}


@dataclass
class ModelRate:
    """One model alone at the extraction's batch size, per device (one GPU, or one CPU worker)."""

    name: str
    kind: str
    batch: int
    items_per_second: float
    video_seconds_per_second: float
    per: str = "CPU worker"          # what one figure covers: "GPU" or "CPU worker"
    workers: int = 1
    total_items_per_second: float = 0.0


@torch.inference_mode()
def model_rates(ex: Extractor, repeats: int = 3) -> list[ModelRate]:
    """Each model of ``ex`` alone on zeros of its real input shape: the batcher's own functions (precision, layout,
    log-mel) at the extraction's full batch sizes, on ``ex``'s device (median of ``repeats`` after one call)."""
    gpu = ex.device.type == "cuda"
    rates = []
    for kind, size in ex.batcher.batch_sizes.items():
        fn = ex.batcher.fns[kind]
        x = [ex.batcher.to_device(a) for a in ex.sample_inputs(kind, size)]
        fn(*x)
        times = []
        for _ in range(repeats):
            if gpu:
                torch.cuda.synchronize(ex.device)
            t0 = time.perf_counter()
            fn(*x)
            if gpu:
                torch.cuda.synchronize(ex.device)
            times.append(time.perf_counter() - t0)
        per_s = size / float(np.median(times))
        name = MODEL_NAMES[kind] if kind != "audio" or ex.student is not None else "log-mel"
        rates.append(ModelRate(name, kind, size, per_s, per_s / STEPS_PER_VIDEO_SECOND,
                               "GPU" if gpu else "CPU worker", 1, per_s))
    return rates


def _worker_model_rates(config: ExtractConfig, repeats: int = 3, dask_worker=None) -> list[ModelRate]:
    """:func:`model_rates` of this worker's extractor for ``config`` (the resolved one the extraction used)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model_rates(get_extractor(config, worker_device(config, _worker_name(dask_worker))), repeats)


def combine_rates(per_worker: dict[str, list[ModelRate]]) -> list[ModelRate]:
    """One rate per model: the median over the workers (each one GPU or one CPU worker), their sum as the total."""
    by_kind: dict[str, list[ModelRate]] = {}
    for rates in per_worker.values():
        for r in rates:
            by_kind.setdefault(r.kind, []).append(r)
    out = []
    for kind, rs in by_kind.items():
        ips = [r.items_per_second for r in rs]
        med = float(np.median(ips))
        out.append(ModelRate(rs[0].name, kind, rs[0].batch, med, med / STEPS_PER_VIDEO_SECOND, rs[0].per, len(rs),
                             float(np.sum(ips))))
    return out


def bench_extract(manifest: pd.DataFrame, config: ExtractConfig, client, say: Callable[[str], None] | None = None, progress: bool = True,
                  sample_period: float = 0.5) -> dict:
    """Run the three measurements on ``manifest``'s files; returns the figures (also printed through ``say``).

    Figures "per GPU" / "per worker" are one device's; the ceiling and the extraction are the whole cluster's.
    ``say`` defaults to this module's logger at INFO.
    """
    from distributed import as_completed

    say = say or log.info

    paths = manifest["path"].tolist()
    workers = client.scheduler_info()["workers"]
    in_flight = max((w.get("nthreads", 1) for w in workers.values()), default=1)
    gpu = config.device.startswith("cuda")
    say(f"{len(paths)} videos, {len(workers)} worker(s) x {in_flight} video(s) in flight, device {config.device}"
        f"{', hwaccel ' + config.hwaccel if config.hwaccel else ''}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resolved = config.resolved(get_extractor(config, "cpu").models)
    if gpu:
        for w, d in sorted(check_worker_devices(client, resolved).items()):
            say(f"worker {w}: {d.device} = {d.name} {d.uuid}")
    t_warm = time.perf_counter()
    devices = client.run(_warm_worker, resolved)
    say(f"models loaded and warmed up on {', '.join(sorted(set(devices.values())))} in "
        f"{time.perf_counter() - t_warm:.1f} s (every batch size a run meets, on a GPU)")
    t0 = time.perf_counter()
    futures = client.map(decode_only_task, paths, hwaccel=config.hwaccel, threads=config.decode_threads, pure=False)
    with progress_bar(len(futures), "decode only", disable=not progress) as bar:
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
        with sampling_worker_gpus(client, resolved, sample_period) if gpu else contextlib.nullcontext({}) as gpu_figs:
            summary = run_extraction(manifest, store, config, client, "bench", sorted(manifest["label"].unique()),
                                     progress=progress)
        extraction_decoders = pd.Series([store.group_attrs(v).get("decoder", "?") for v in store.video_ids()],
                                        dtype=object).value_counts().to_dict()
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
    rates = combine_rates(client.run(_worker_model_rates, resolved))
    result = {
        "videos": len(paths), "video_seconds": video_seconds, "workers": len(workers),
        "decode_only_video_s_per_s": video_seconds / decode_wall,
        "extraction_video_s_per_s": summary.video_seconds / summary.wall_seconds if summary.wall_seconds else 0.0,
        "failed": summary.failed, "decode_only_decoders": decoders, "extraction_decoders": extraction_decoders,
        "hwaccel_error": summary.hwaccel_error,
        "peak_host_memory_mb_per_worker": max(worker_rss.values()) if worker_rss else _peak_rss_mb(),
        **gpu_figs, "models": rates, "batch_fill": batch_fill,
    }
    result["ratio_extraction_to_ceiling"] = (result["extraction_video_s_per_s"] / result["decode_only_video_s_per_s"]
                                             if result["decode_only_video_s_per_s"] else 0.0)
    say(f"decode-only ceiling   {result['decode_only_video_s_per_s']:8.2f} video-s per wall-s, all workers  "
        "(decoded: " + ", ".join(f"{n} {d}" for d, n in decoders.items()) + ")")
    say(f"full extraction       {result['extraction_video_s_per_s']:8.2f} video-s per wall-s, all workers  "
        f"(ratio to ceiling {100 * result['ratio_extraction_to_ceiling']:.1f} %; {summary.failed} failed; decoded: "
        + ", ".join(f"{n} {d}" for d, n in extraction_decoders.items()) + ")")
    if summary.hwaccel_error:
        say(f"hwaccel fallback      {summary.hwaccel_error}")
    for r in rates:
        together = f"; {r.workers} {r.per}s together {r.total_items_per_second:.1f}" if r.workers > 1 else ""
        say(f"{r.name:<27} {r.video_seconds_per_second:8.2f} video-s per wall-s per {r.per}  "
            f"(alone, batch {r.batch}: {r.items_per_second:.1f} items/s{together})")
    say("mean batch            " + ", ".join(f"{k} {v['mean_rows']:g} of {v['batch_size']} ({v['batches']} batches)"
                                          for k, v in batch_fill.items()))
    say(f"peak host memory      {result['peak_host_memory_mb_per_worker']:.0f} MB per worker")
    if gpu:
        say(f"GPU utilisation       mean {gpu_figs['gpu_utilisation_percent']} %, peak "
            f"{gpu_figs['gpu_utilisation_peak_percent']} % ({gpu_figs['gpus_sampled']} GPU(s) in use, sampled every "
            f"{sample_period:g} s by UUID)")
        say(f"GPU memory            torch peak {gpu_figs['peak_gpu_memory_mb_per_worker']} MB per worker; nvidia-smi "
            f"peak {gpu_figs['peak_gpu_memory_used_mb_per_gpu']} MB per GPU (every process: models, CUDA contexts, "
            f"NVDEC)")
        for uuid, v in gpu_figs["per_gpu"].items():
            say(f"  {uuid} ({v.get('name', '?')}, worker {v['worker']}): " + (v["error"] if "error" in v else
                f"utilisation mean {v['utilisation_mean_percent']} %, peak {v['utilisation_peak_percent']} %, "
                f"memory used peak {v['memory_used_peak_mb']} MB, torch {v['torch_peak_allocated_mb']} MB"))
    return result
