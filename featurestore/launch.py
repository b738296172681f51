"""Launch policy of an extraction: the config from the user's options, the Dask cluster, how many videos each
worker decodes at once, and which device each worker uses."""
from __future__ import annotations

import os
import warnings

import torch

from featurestore.config import ExtractConfig
from featurestore.constants import DESCRIPTORS
from featurestore.decode import hwaccels
from featurestore.weights import STUDENT_DEFAULT, TEACHER_DEFAULT


def worker_device(config: ExtractConfig, name=None) -> str:
    """The device this Dask worker (named ``name``, default: the running task's) should use: its own GPU when
    extracting on GPUs, else the CPU."""
    if not config.device.startswith("cuda") or ":" in config.device:
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


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: container CPU limits included), not the host's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_in_flight(gpus: int) -> int:
    """Videos each worker decodes at once. Decoding is CPU work: on a GPU machine each GPU worker gets its share of
    the usable cores; on a CPU worker a second video decodes while the models run (27 vs 20 video-s/s on 2 cores,
    README)."""
    return max(2, usable_cpus() // gpus) if gpus else 2


def launch(gpus: int = 0, workers: int = 1, scheduler: str | None = None, in_flight: int = 0, batch_size: int = 16,
           descriptors: str = ",".join(DESCRIPTORS), teacher_weights: str = TEACHER_DEFAULT,
           student_weights: str = STUDENT_DEFAULT, seed: int = 0, hwaccel: str = "", decode_threads: int = 0,
           keep_inputs: bool = False, keep_clips: bool = False, video_timeout: float | None = None):
    """(ExtractConfig, Dask client) for the options of ``fs extract`` / ``fs bench-extract``.

    A ``hwaccel`` this ffmpeg lacks warns and decodes in software; ``in_flight`` 0 takes :func:`default_in_flight`;
    ``video_timeout`` None takes :meth:`ExtractConfig.video_time_limit`'s default, 0 sets no limit.
    """
    from featurestore.cluster import make_client   # Dask is the client's concern; workers import this module too

    hwaccel = hwaccel.strip()
    if hwaccel and hwaccel not in hwaccels():
        warnings.warn(f"--hwaccel {hwaccel}: this ffmpeg offers {', '.join(hwaccels()) or 'none'}; decoding in "
                      f"software")
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
        video_timeout=video_timeout)
    client = make_client(gpus=gpus, workers=workers, scheduler=scheduler,
                         threads_per_worker=in_flight or default_in_flight(gpus))
    return config, client
