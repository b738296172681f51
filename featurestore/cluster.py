"""Dask cluster set-up for extraction: a local CPU cluster, one worker per GPU, or an existing scheduler."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import warnings

import torch
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster


class ClusterError(RuntimeError):
    """The requested cluster cannot be started here."""


def make_client(gpus: int = 0, workers: int = 1, scheduler: str | None = None, processes: bool = True,
                threads_per_worker: int = 1) -> Client:
    """A dask.distributed client.

    * ``scheduler``: connect to an existing cluster (many machines) at that address;
    * ``gpus > 0``: one worker per GPU — dask-cuda's ``LocalCUDACluster`` when installed, else
      :func:`per_gpu_cluster` (each worker process sees only its own GPU through ``CUDA_VISIBLE_DEVICES``);
    * otherwise ``workers`` CPU workers (``processes=False`` keeps them as threads of this process).
    """
    logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler:
        return Client(scheduler, timeout="30s")
    if gpus > 0:
        have = torch.cuda.device_count()
        if have < gpus:
            raise ClusterError(f"--gpus {gpus} asked but torch sees {have} CUDA device(s) here; "
                               f"drop --gpus to extract on the CPU")
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            with workers_ignore_sigint():
                cluster = per_gpu_cluster(gpus, threads_per_worker)
        else:
            with workers_ignore_sigint():
                cluster = LocalCUDACluster(n_workers=gpus, threads_per_worker=threads_per_worker,
                                           dashboard_address=None)
        return Client(cluster)
    if workers < 1:
        raise ClusterError(f"--workers must be at least 1, got {workers}")
    with warnings.catch_warnings(), workers_ignore_sigint():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=processes,
                               dashboard_address=None, silence_logs=logging.ERROR)
    return Client(cluster)


@contextlib.contextmanager
def workers_ignore_sigint():
    """Start worker processes with SIGINT ignored (they inherit it): Ctrl-C reaches the whole process group, and
    the client alone should answer it, stopping the run with one line and closing the cluster, instead of each
    worker process dying with a traceback of its own. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def gpu_worker_env(gpus: int, visible: str | None = None) -> list[dict[str, str]]:
    """Each GPU worker's environment: ``CUDA_VISIBLE_DEVICES`` naming one of the GPUs this process may use."""
    allowed = [v.strip() for v in (visible or "").split(",") if v.strip()] or [str(i) for i in range(gpus)]
    if len(allowed) < gpus:
        raise ClusterError(f"--gpus {gpus} asked but CUDA_VISIBLE_DEVICES={visible} names {len(allowed)}")
    return [{"CUDA_VISIBLE_DEVICES": allowed[i]} for i in range(gpus)]


def per_gpu_cluster(gpus: int, threads_per_worker: int = 1) -> SpecCluster:
    """One worker process per GPU, named 0..gpus-1, each seeing only its own GPU (dask-cuda's layout, without it)."""
    envs = gpu_worker_env(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    workers = {i: {"cls": Nanny, "options": {"nthreads": threads_per_worker, "env": env, "name": i}}
               for i, env in enumerate(envs)}
    return SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard_address": None}}, workers=workers,
                       silence_logs=logging.ERROR)


def close_client(client: Client) -> None:
    """Close the client and the local cluster it runs on (an external scheduler is left running)."""
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()
