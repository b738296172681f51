"""Dask cluster set-up for extraction: a local CPU cluster, one worker per GPU, or an existing scheduler."""
from __future__ import annotations

import logging
import warnings

import torch
from distributed import Client, LocalCluster


class ClusterError(RuntimeError):
    """The requested cluster cannot be started here."""


def make_client(gpus: int = 0, workers: int = 1, scheduler: str | None = None, processes: bool = True,
                threads_per_worker: int = 1) -> Client:
    """A dask.distributed client.

    * ``scheduler``: connect to an existing cluster (many machines) at that address;
    * ``gpus > 0``: one worker per GPU — dask-cuda's ``LocalCUDACluster`` when installed, else a ``LocalCluster``
      whose tasks pick ``cuda:<worker index>``;
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
            cluster = LocalCluster(n_workers=gpus, threads_per_worker=threads_per_worker, processes=True,
                                   dashboard_address=None)
        else:
            cluster = LocalCUDACluster(n_workers=gpus, threads_per_worker=threads_per_worker,
                                       dashboard_address=None)
        return Client(cluster)
    if workers < 1:
        raise ClusterError(f"--workers must be at least 1, got {workers}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=processes,
                               dashboard_address=None)
    return Client(cluster)


def close_client(client: Client) -> None:
    """Close the client and the local cluster it runs on (an external scheduler is left running)."""
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()
