"""Launch policy of an extraction: the config from the user's options, the Dask cluster, how many videos each
worker decodes at once, and which device each worker uses."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

from featurestore.config import ExtractConfig
from featurestore.constants import DESCRIPTORS
from featurestore.decode import HW_DOWNLOAD_FORMATS, hwaccels
from featurestore.weights import STUDENT_DEFAULT, TEACHER_DEFAULT


class DeviceError(RuntimeError):
    """A worker cannot compute on the device the extraction asks for (no GPU, or a GPU that keeps faulting); the
    run stops rather than fail its videos one by one."""


# CUDA errors that leave the process's CUDA context unusable ("sticky"): every later kernel fails the same way
DEVICE_FAULT_MARKERS = ("CUDA error", "CUDNN_STATUS_EXECUTION_FAILED", "CUBLAS_STATUS_EXECUTION_FAILED",
                        "device-side assert", "cudaErrorIllegalAddress", "unspecified launch failure")


def is_device_fault(error: BaseException) -> bool:
    """Whether ``error`` is the device's fault (a CUDA error the worker's context does not recover from), not the
    video's. Running out of GPU memory is not: that context stays usable."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)      # torch >= 2.8 raises CUDA errors as this
    if accelerator_error is not None and isinstance(error, accelerator_error):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in DEVICE_FAULT_MARKERS)


def worker_device(config: ExtractConfig, name=None) -> str:
    """The device this Dask worker (named ``name``, default: the running task's) should use: its own GPU when
    extracting on GPUs, else the CPU. Raises :class:`DeviceError` when a GPU is asked for and this process sees
    none."""
    if not config.device.startswith("cuda"):
        return config.device
    if torch.cuda.device_count() == 0:
        raise DeviceError(f"extracting on {config.device} but this worker (pid {os.getpid()}, CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}) sees no CUDA device")
    if ":" in config.device:
        return config.device
    if name is None:
        try:
            from distributed import get_worker
            name = get_worker().name
        except (ImportError, ValueError):
            return "cuda:0"
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        # dask-cuda rotates the list so that the worker's own GPU comes first ("3,4,...,2"); fs's own GPU cluster
        # shows each worker only its GPU: either way the worker's device is the first it sees
        return "cuda:0"
    n = torch.cuda.device_count()
    return f"cuda:{int(name) % n}" if isinstance(name, int) and n else "cuda:0"


def gpu_uuid(device: str) -> str:
    """The NVML UUID ("GPU-…") of CUDA device ``device`` as this process numbers it. NVML and nvidia-smi number GPUs
    by PCI bus and ignore ``CUDA_VISIBLE_DEVICES``; the UUID names the same GPU for all of them."""
    uuid = str(torch.cuda.get_device_properties(torch.device(device)).uuid)
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


@dataclass(frozen=True)
class WorkerDevice:
    """What one worker computes on: its device, and for a GPU its UUID and name; ``problem`` when it cannot."""

    device: str
    uuid: str = ""
    name: str = ""
    problem: str = ""


def describe_worker_device(config: ExtractConfig, dask_worker=None) -> WorkerDevice:
    """This worker's device for ``config`` (run on every worker with ``client.run``)."""
    try:
        device = worker_device(config, dask_worker.name if dask_worker is not None else None)
        if not device.startswith("cuda"):
            return WorkerDevice(device)
        return WorkerDevice(device, gpu_uuid(device), torch.cuda.get_device_name(torch.device(device)))
    except Exception as e:  # noqa: BLE001 - reported to the client, which refuses to start
        return WorkerDevice(config.device, problem=f"{type(e).__name__}: {e}")


def check_worker_devices(client, config: ExtractConfig) -> dict[str, WorkerDevice]:
    """Every connected worker's device, by worker address; raises :class:`DeviceError` before anything is
    submitted when a worker cannot use the device asked for (e.g. a ``--scheduler`` worker without a GPU, whose
    videos would otherwise fail one by one into the failures table); workers sharing one GPU get a warning."""
    devices: dict[str, WorkerDevice] = client.run(describe_worker_device, config)
    if not devices:
        raise DeviceError("no Dask worker is connected")
    bad = {w: d.problem for w, d in devices.items() if d.problem}
    if bad:
        raise DeviceError("; ".join(f"worker {w}: {p}" for w, p in sorted(bad.items())) + ": nothing submitted")
    by_uuid: dict[str, list[str]] = {}
    for w, d in devices.items():
        if d.uuid:
            by_uuid.setdefault(d.uuid, []).append(w)
    for uuid, ws in by_uuid.items():
        if len(ws) > 1:     # it works, but each holds its own models and CUDA context on one GPU
            warnings.warn(f"workers {', '.join(sorted(ws))} all use GPU {uuid}: set CUDA_VISIBLE_DEVICES per worker")
    return devices


def restart_worker(client, address: str) -> None:
    """Restart the worker at ``address`` (through its nanny) so that it gets a fresh CUDA context; raises
    :class:`DeviceError` when it cannot be restarted."""
    try:
        client.restart_workers([address], raise_for_error=True)
    except KeyError:        # the address has left the cluster: its nanny has already started a fresh worker
        return
    except Exception as e:  # noqa: BLE001 - e.g. a worker started with --no-nanny
        raise DeviceError(f"worker {address} hit a CUDA error and could not be restarted ({type(e).__name__}: {e}); "
                          f"restart it and run again") from e


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: container CPU limits included), not the host's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_in_flight(gpus: int) -> int:
    """Videos each worker decodes at once. Decoding is CPU work: on a GPU machine each GPU worker gets its share of
    the usable cores; on a CPU worker a second video decodes while the models run (27 vs 20 video-s/s on 2 cores,
    docs/extraction.md)."""
    return max(2, usable_cpus() // gpus) if gpus else 2


def launch(gpus: int = 0, workers: int = 1, scheduler: str | None = None, in_flight: int = 0, batch_size: int = 16,
           descriptors: str = ",".join(DESCRIPTORS), teacher_weights: str = TEACHER_DEFAULT,
           student_weights: str = STUDENT_DEFAULT, seed: int = 0, hwaccel: str = "", decode_threads: int = 0,
           keep_inputs: bool = False, keep_clips: bool = False, video_timeout: float | None = None,
           spatial_map: bool = False):
    """(ExtractConfig, Dask client) for the options of ``fs extract`` / ``fs bench-extract``.

    A ``hwaccel`` this ffmpeg lacks warns and decodes in software; ``in_flight`` 0 takes :func:`default_in_flight`;
    ``video_timeout`` None takes :meth:`ExtractConfig.video_time_limit`'s default, 0 sets no limit; ``spatial_map``
    also keeps each step's ``image_map`` (AVGN's e^G) and implies ``keep_inputs``.
    """
    from featurestore.cluster import make_client   # Dask is the client's concern; workers import this module too

    hwaccel = hwaccel.strip()
    if hwaccel and hwaccel not in hwaccels():
        warnings.warn(f"--hwaccel {hwaccel}: this ffmpeg offers {', '.join(hwaccels()) or 'none'}; decoding in "
                      f"software")
        hwaccel = ""
    if hwaccel and hwaccel not in HW_DOWNLOAD_FORMATS:
        warnings.warn(f"--hwaccel {hwaccel}: fs decodes on hardware with {', '.join(HW_DOWNLOAD_FORMATS)} only (it "
                      f"must tell a hardware decode from ffmpeg's silent software fallback); decoding in software")
        hwaccel = ""
    if gpus < 0:
        raise ValueError(f"--gpus must be 0 (CPU) or a number of GPUs, got {gpus}")
    if in_flight < 0:
        raise ValueError(f"--in-flight must be at least 1 (or 0 for the default), got {in_flight}")
    config = ExtractConfig(
        descriptors=tuple(d.strip() for d in descriptors.split(",") if d.strip()), batch_size=batch_size,
        device="cuda" if gpus else "cpu", teacher_weights=teacher_weights, student_weights=student_weights, seed=seed,
        threads=0 if gpus else max(1, usable_cpus() // max(1, workers)),
        keep_inputs=keep_inputs, keep_clips=keep_clips, hwaccel=hwaccel, decode_threads=decode_threads,
        video_timeout=video_timeout, spatial_map=spatial_map)
    client = make_client(gpus=gpus, workers=workers, scheduler=scheduler,
                         threads_per_worker=in_flight or default_in_flight(gpus))
    return config, client
