"""The CUDA paths of extraction and bench-extract (issue 18), on a CPU: the GPU host is simulated with environment
variables, fake ``nvidia-smi`` / ``ffmpeg`` scripts on PATH and a monkeypatched ``torch.cuda``. Names introduced by
the fixes are imported inside the tests, so that each test fails on its own against the code before them."""
from __future__ import annotations

import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import featurestore.decode as decode
from featurestore.config import ExtractConfig
from featurestore.extract import run_extraction
from featurestore.store import FeatureStore, StoreError

LIGHT = ExtractConfig(descriptors=("image", "audio", "fused"), batch_size=1, student_weights="random", threads=2)
WORKER_GPU = 5                     # the worker's GPU: PCI index 5 of 8, CUDA ordinal 0 for the worker
UUIDS = [f"GPU-{i:08x}-0000-0000-0000-{i:012x}" for i in range(8)]


def one_video(video_dir, name: str = "tone.mp4") -> pd.DataFrame:
    return pd.DataFrame([{"video_id": name.split(".")[0], "path": str(video_dir / name), "label": "c0",
                          "split": "train", "segments": ""}])


def script(folder, name: str, body: str):
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def gpu_host(tmp_path, monkeypatch):
    """An 8-GPU host whose worker sees one GPU (CUDA_VISIBLE_DEVICES=5): its own at 90 % and 20 GB used (models,
    CUDA contexts, ffmpeg's NVDEC), the other seven idle; torch allocated nothing; no pynvml."""
    lines = "\\n".join(f"{UUIDS[i]}, {90 if i == WORKER_GPU else 0}, {20000 if i == WORKER_GPU else 3}"
                       for i in range(8))
    old = "\\n".join(f"{i}, {90 if i == WORKER_GPU else 0}" for i in range(8))     # the index,utilization.gpu query
    script(tmp_path, "nvidia-smi", f'case "$*" in *uuid*) printf "{lines}\\n";; *) printf "{old}\\n";; esac\n')
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", str(WORKER_GPU))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(uuid=UUIDS[WORKER_GPU].removeprefix("GPU-")))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake H200")
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 0)
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)      # import pynvml raises ImportError

    def client_view(device=None):       # what the old sampler read: the client's view, every GPU it sees
        raise ModuleNotFoundError("pynvml does not seem to be installed")
    monkeypatch.setattr(torch.cuda, "utilization", client_view)


# --- item 2: utilisation of the workers' GPUs, matched by UUID ------------------------------------------------------

def test_utilisation_is_the_workers_own_gpus_matched_by_uuid_not_every_gpu_by_index(gpu_host, client):
    from featurestore.bench_extract import sampling_worker_gpus

    with sampling_worker_gpus(client, replace(LIGHT, device="cuda"), period=0.02) as figures:
        time.sleep(0.3)
    assert figures["gpus_sampled"] == 1
    assert figures["gpu_utilisation_percent"] == 90.0          # not 90/8 (every GPU), not GPU 0's 0 % (CUDA ordinal)
    assert figures["gpu_utilisation_peak_percent"] == 90.0
    assert list(figures["per_gpu"]) == [UUIDS[WORKER_GPU]]
    assert figures["per_gpu"][UUIDS[WORKER_GPU]]["name"] == "Fake H200"


def test_a_gpu_nvidia_smi_does_not_list_is_reported_not_guessed(gpu_host, client, monkeypatch):
    from featurestore.bench_extract import sampling_worker_gpus

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(uuid="elsewhere"))
    with sampling_worker_gpus(client, replace(LIGHT, device="cuda"), period=0.02) as figures:
        time.sleep(0.2)
    assert figures["gpus_sampled"] == 0
    assert figures["gpu_utilisation_percent"].startswith("n/a (RuntimeError: GPU-elsewhere not among")


# --- item 3: device faults are the worker's, not the video's --------------------------------------------------------

def test_workers_that_see_no_gpu_stop_the_run_before_any_video_is_submitted(tmp_path, video_dir, client, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)     # e.g. a --scheduler worker on a CPU machine
    store = FeatureStore(tmp_path / "s.zarr", mode="a")
    with pytest.raises(RuntimeError, match="sees no CUDA device.*nothing submitted"):
        run_extraction(one_video(video_dir), store, replace(LIGHT, device="cuda"), client, "t", ["c0"],
                       progress=False)
    assert len(store.failures()) == 0 and store.video_ids() == []


@pytest.fixture
def sticky_cuda_error(monkeypatch):
    """The worker's image batches fail with an illegal-address CUDA error until the worker is restarted; returns
    the addresses restarted and a switch to keep the fault across restarts (a broken GPU)."""
    import featurestore.extract as extract
    from featurestore.extractor import _EXTRACTORS, get_extractor

    _EXTRACTORS.clear()
    ex = get_extractor(LIGHT.resolved(get_extractor(LIGHT, "cpu").models), "cpu")     # the one the worker uses
    state = SimpleNamespace(poisoned=True, broken_gpu=False, restarts=[])
    real = ex.batcher.fns["image"]

    def image(frames):
        if state.poisoned:
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be "
                               "asynchronously reported at some other API call")
        return real(frames)
    monkeypatch.setitem(ex.batcher.fns, "image", image)

    def restart(client, address):       # the nanny's restart: a fresh CUDA context
        state.restarts.append(address)
        state.poisoned = state.broken_gpu
    monkeypatch.setattr(extract, "restart_worker", restart, raising=False)
    yield state
    _EXTRACTORS.clear()


def test_a_sticky_cuda_error_restarts_the_worker_and_its_videos_are_stored(tmp_path, video_dir, client,
                                                                          sticky_cuda_error, monkeypatch):
    df = pd.concat([one_video(video_dir, "tone.mp4"), one_video(video_dir, "silent.mp4")], ignore_index=True)
    store = FeatureStore(tmp_path / "s.zarr", mode="a")
    keys, submit = [], client.submit

    def recording(*args, **kwargs):
        keys.append(kwargs["key"])
        return submit(*args, **kwargs)
    monkeypatch.setattr(client, "submit", recording)
    summary = run_extraction(df, store, LIGHT, client, "t", ["c0"], progress=False, max_in_flight=1)
    assert len(store.failures()) == 0, store.failures().to_dict("records")
    assert sorted(store.video_ids()) == ["silent", "tone"] and summary.stored == 2
    assert sticky_cuda_error.restarts == list(client.scheduler_info()["workers"])     # once, that worker
    # the resubmitted video runs under a key of its own, never the released key of its failed attempt
    assert len(keys) == 3 and len(set(keys)) == 3 and keys[0] + "-retry1" in keys


def test_a_worker_that_left_counts_as_restarted_and_one_that_cannot_restart_stops_the_run():
    from featurestore.launch import DeviceError, restart_worker

    def gone(addresses, raise_for_error):
        raise KeyError(addresses[0])           # the nanny already replaced it: its address is unknown now
    restart_worker(SimpleNamespace(restart_workers=gone), "tcp://10.0.0.1:4000")

    def no_nanny(addresses, raise_for_error):
        raise ValueError("workers started without a nanny cannot be restarted")
    with pytest.raises(DeviceError, match="could not be restarted"):
        restart_worker(SimpleNamespace(restart_workers=no_nanny), "tcp://10.0.0.1:4000")


def test_a_worker_restarted_during_bench_extract_reports_no_gpu_figures_instead_of_crashing():
    from featurestore.bench_extract import _stop_sampling, gpu_figures

    figures = gpu_figures({"tcp://10.0.0.1:4000": _stop_sampling(SimpleNamespace(address="tcp://10.0.0.1:4000"))})
    assert figures["gpus_sampled"] == 0 and figures["gpu_utilisation_percent"].startswith("a worker restarted")


def test_videos_a_broken_gpu_fails_are_retried_by_the_next_run(tmp_path, video_dir, client, sticky_cuda_error):
    sticky_cuda_error.broken_gpu = True
    store = FeatureStore(tmp_path / "s.zarr", mode="a")
    summary = run_extraction(one_video(video_dir), store, LIGHT, client, "t", ["c0"], progress=False)
    assert summary.failed == 1 and list(store.failures()["stage"]) == ["device"]
    sticky_cuda_error.broken_gpu = sticky_cuda_error.poisoned = False         # the GPU replaced
    again = run_extraction(one_video(video_dir), store, LIGHT, client, "t", ["c0"], progress=False)
    assert again.skipped_failed == 0 and again.stored == 1 and len(store.failures()) == 0


# --- item 5: compute precision in provenance --------------------------------------------------------------------

def test_a_store_of_float32_cpu_features_refuses_bf16_gpu_ones(tmp_path, video_dir, client, gpu_host):
    gpu = replace(LIGHT, device="cuda")
    store = FeatureStore(tmp_path / "s.zarr", mode="a")
    run_extraction(one_video(video_dir), store, LIGHT, client, "t", ["c0"], progress=False)
    assert store.attrs["provenance"]["compute"] == {"device": "cpu", "precision": "float32"}
    assert store.group_attrs("tone")["provenance"]["compute"] == {"device": "cpu", "precision": "float32"}
    with pytest.raises(StoreError, match="computed on cpu in float32; this run computes on cuda in bfloat16"):
        run_extraction(one_video(video_dir, "silent.mp4"), store, gpu, client, "t", ["c0"],
                       progress=False)
    assert store.video_ids() == ["tone"] and len(store.failures()) == 0


# --- item 6: what really decoded, and GPU memory from nvidia-smi -------------------------------------------------

@pytest.fixture
def nvdec(tmp_path, monkeypatch):
    """Fake ffmpeg builds whose NVDEC does or does not support the stream. Both accept -hwaccel cuda and decode in
    software (as ffmpeg silently does for a stream NVDEC lacks); the supporting one also lets frames through
    ``hwdownload`` as if they were GPU frames."""
    monkeypatch.setattr(decode, "_HWACCEL_FAILED", {})
    strip = ('out=(); while [ $# -gt 0 ]; do case "$1" in -hwaccel|-hwaccel_output_format|-hwaccel_device) shift 2;'
             ' continue;; esac; out+=("${1%s}"); shift; done; exec /usr/bin/ffmpeg "${out[@]}"\n')
    return {"supported": str(script(tmp_path, "ffmpeg-nvdec", strip % "//hwdownload/null")),
            "lacking": str(script(tmp_path, "ffmpeg-no-nvdec-codec", strip % ""))}


def test_a_stream_nvdec_lacks_is_recorded_as_software_decoded(video_dir, nvdec, monkeypatch):
    from featurestore.bench_extract import decode_only_task
    from featurestore.extractor import get_extractor

    path = str(video_dir / "tone.mp4")
    monkeypatch.setenv("FS_FFMPEG", nvdec["supported"])
    assert decode_only_task(path, hwaccel="cuda")[2] == "cuda"
    monkeypatch.setenv("FS_FFMPEG", nvdec["lacking"])
    seconds, _, decoder = decode_only_task(path, hwaccel="cuda")
    assert decoder == "software" and seconds == pytest.approx(2.0)
    monkeypatch.setattr(decode, "_HWACCEL_FAILED", {})
    arrays, attrs = get_extractor(replace(LIGHT, hwaccel="cuda"), "cpu").extract(path, ["load"])
    assert attrs["decoder"] == "software" and len(arrays["image"]) == 4


def test_a_stream_nvdec_lacks_falls_back_for_that_file_only_and_a_missing_device_for_good(video_dir, nvdec,
                                                                                        tmp_path, monkeypatch):
    from featurestore.bench_extract import decode_only_task

    path = str(video_dir / "tone.mp4")
    monkeypatch.setenv("FS_FFMPEG", nvdec["lacking"])
    assert decode_only_task(path, hwaccel="cuda")[2] == "software"
    assert decode.hwaccel_failure("cuda") == ""                       # the next file tries NVDEC again
    monkeypatch.setenv("FS_FFMPEG", nvdec["supported"])
    assert decode_only_task(path, hwaccel="cuda")[2] == "cuda"
    no_driver = script(tmp_path, "ffmpeg-no-driver", 'case "$*" in *-hwaccel*) echo "Device setup failed for decoder '
                       'on input stream #0:0 : Operation not permitted" >&2; exit 1;; esac; exec /usr/bin/ffmpeg "$@"\n')
    monkeypatch.setenv("FS_FFMPEG", str(no_driver))
    assert decode_only_task(path, hwaccel="cuda")[2] == "software"
    assert decode.hwaccel_failure("cuda").endswith("decoding in software from now on")


def test_gpu_memory_comes_from_nvidia_smi_too_not_only_torch(gpu_host, client):
    from featurestore.bench_extract import sampling_worker_gpus

    with sampling_worker_gpus(client, replace(LIGHT, device="cuda"), period=0.02) as figures:
        time.sleep(0.2)
    assert figures["peak_gpu_memory_mb_per_worker"] == 0                # torch's allocator: the models only
    assert figures["peak_gpu_memory_used_mb_per_gpu"] == 20000          # the GPU's: every context on it, NVDEC's too
    assert figures["per_gpu"][UUIDS[WORKER_GPU]]["memory_used_peak_mb"] == 20000


# --- item 7: model rates comparable to the extraction -----------------------------------------------------------

def test_model_rates_run_on_the_workers_at_the_extractions_batch_sizes(tmp_path, video_dir, client):
    from featurestore.bench_extract import bench_extract

    lines = []
    figures = bench_extract(one_video(video_dir), replace(LIGHT, batch_size=2), client, say=lines.append,
                            progress=False)
    rates = {m.kind: m for m in figures["models"]}
    sizes = {k: v["batch_size"] for k, v in figures["batch_fill"].items()}
    assert {k: m.batch for k, m in rates.items()} == {"image": 8, "audio": 8, "fused": 8} == sizes
    assert {m.per for m in rates.values()} == {"CPU worker"} and {m.workers for m in rates.values()} == {1}
    assert any("image ResNet-18" in line and "per CPU worker" in line and "batch 8" in line for line in lines)
    assert any(line.startswith("full extraction") and "all workers" in line and "1 software" in line
               for line in lines)


# --- item 8: no pinning without overlap; warm-up covers the partial batches ----------------------------------------

def test_batches_go_to_the_gpu_unpinned(monkeypatch):
    from featurestore.batching import CrossVideoBatcher

    pinned, moved = [], []
    real_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if args and str(args[0]).startswith("cuda"):
            moved.append(kwargs.get("non_blocking", False))
            return self
        return real_to(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: pinned.append(len(self)) or self)
    batcher = CrossVideoBatcher({"x": lambda t: (t * 2,)}, {"x": 4}, "cpu")
    batcher.device = torch.device("cuda")       # the device the batcher would copy to on a GPU worker
    out = batcher.submit("x", np.arange(6, dtype=np.float32)).result()[0]
    assert np.array_equal(out, 2 * np.arange(6)) and moved and not pinned


def test_warm_up_on_a_gpu_runs_every_batch_size_a_timed_run_can_meet(monkeypatch):
    from featurestore.extractor import Extractor

    ex = Extractor(LIGHT, "cpu")                     # batch sizes: image, audio, fused 4
    monkeypatch.setattr(ex, "device", torch.device("cuda"))
    seen: dict[str, list[int]] = {}
    for kind, fn in list(ex.batcher.fns.items()):
        def recording(*x, _kind=kind, _fn=fn):
            seen.setdefault(_kind, []).append(len(x[0]))
            return _fn(*x)
        ex.batcher.fns[kind] = recording
    ex.warm_up()
    warmed = {k: set(v) for k, v in seen.items()}
    seen.clear()
    ex.batcher.submit("image", np.zeros((3, 112, 112, 3), np.uint8)).result()     # a video's last 3 steps
    ex.batcher.submit("audio", np.zeros((1, 16000), np.float32)).result()
    assert seen == {"image": [3], "audio": [1]}
    assert all(set(v) <= warmed[k] for k, v in seen.items()), warmed
