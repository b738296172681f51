"""End-to-end extraction on generated videos, through a threaded Dask cluster so decodes can be counted."""
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

import featurestore.decode as decode
from featurestore.cluster import close_client, make_client
from featurestore.config import ExtractConfig
from featurestore.extract import run_extraction
from featurestore.store import FeatureStore, StoreError

CONFIG = ExtractConfig(batch_size=4, student_weights="random", teacher_weights="random", threads=2)


@pytest.fixture
def decodes(monkeypatch):
    """Count ffmpeg decode processes per input file."""
    counts = Counter()
    real = decode._popen

    def counting(cmd, pass_fds):
        counts[cmd[cmd.index("-i") + 1]] += 1
        return real(cmd, pass_fds)
    monkeypatch.setattr(decode, "_popen", counting)
    return counts


def manifest(video_dir, names):
    return pd.DataFrame([{"video_id": n.split(".")[0], "path": str(video_dir / n), "label": f"c{i % 2}",
                          "split": "train" if i % 2 else "test", "segments": ""} for i, n in enumerate(names)])


def extract(store_path, df, client, config=CONFIG, **kw):
    store = FeatureStore(store_path, mode="a")
    return run_extraction(df, store, config, client, "testset", ["c0", "c1"], progress=False, **kw), store


def test_every_array_has_its_shape_and_dtype_and_each_file_is_decoded_once(tmp_path, video_dir, client, decodes):
    df = manifest(video_dir, ["tone.mp4", "pal.mp4", "silent.mp4"])
    summary, store = extract(tmp_path / "s.zarr", df, client)
    assert summary.stored == 3 and summary.failed == 0
    assert sorted(store.video_ids()) == ["pal", "silent", "tone"]
    assert set(decodes.values()) == {1} and len(decodes) == 3
    for vid, n in (("tone", 4), ("pal", 4), ("silent", 3)):       # ceil(60/16) = 4, ceil(45/16) = 3
        v = store.read_video(vid)
        assert v.n_steps == n
        assert v["t"].shape == (n,) and v["t"].dtype == np.float32
        np.testing.assert_allclose(v["t"], np.arange(n) * 16 / 30, rtol=1e-6)
        for name, dim in (("image", 256), ("audio", 256), ("fused", 512), ("r2p1d", 512), ("r2p1d_logits", 400)):
            assert v[name].shape == (n, dim) and v[name].dtype == np.float16, name
            assert np.isfinite(v[name].astype(np.float32)).all()
        assert v.attrs["provenance"]["models"]["teacher"]["source"] == "random(seed=0)"
    assert store.read_video("tone").attrs["has_audio"] is True
    silent = store.read_video("silent")
    assert silent.attrs["has_audio"] is False and not silent["audio"].any()
    assert store.read_video("tone")["audio"].any()


def test_rerun_does_no_new_work(tmp_path, video_dir, client, decodes):
    df = manifest(video_dir, ["tone.mp4", "silent.mp4"])
    config = ExtractConfig(descriptors=("image", "audio", "fused"), batch_size=4, student_weights="random")
    extract(tmp_path / "s.zarr", df, client, config)
    first = dict(decodes)
    summary, store = extract(tmp_path / "s.zarr", df, client, config)
    assert summary.submitted == 0 and summary.skipped_done == 2
    assert dict(decodes) == first


def test_broken_files_become_failure_rows_and_the_rest_is_stored(tmp_path, video_dir, client, decodes):
    df = manifest(video_dir, ["empty.mp4", "tone.mp4", "truncated.mp4"])
    config = ExtractConfig(descriptors=("image", "audio", "fused"), batch_size=4, student_weights="random")
    summary, store = extract(tmp_path / "s.zarr", df, client, config)
    assert store.video_ids() == ["tone"] and summary.failed == 2
    fails = store.failures().set_index("video_id")
    assert set(fails.index) == {"empty", "truncated"}
    assert "empty file" in fails.loc["empty", "error"]
    assert fails.loc["truncated", "stage"] in ("probe", "decode") and fails.loc["truncated", "error"]
    assert store.partial_ids() == []
    again, _ = extract(tmp_path / "s.zarr", df, client, config)            # failed ones are not retried...
    assert again.submitted == 0 and again.skipped_failed == 2
    retry, _ = extract(tmp_path / "s.zarr", df, client, config, retry_failed=True)   # ...unless asked
    assert retry.submitted == 2 and retry.failed == 2


def test_a_store_refuses_features_from_other_weights(tmp_path, video_dir, client):
    df = manifest(video_dir, ["silent.mp4"])
    config = ExtractConfig(descriptors=("image", "audio", "fused"), student_weights="random", seed=0)
    extract(tmp_path / "s.zarr", df, client, config)
    with pytest.raises(StoreError, match="weights"):
        extract(tmp_path / "s.zarr", df, client, ExtractConfig(descriptors=config.descriptors,
                                                               student_weights="random", seed=1))


def test_batched_and_unbatched_inference_agree(tmp_path, video_dir, client):
    df = manifest(video_dir, ["tone.mp4"])
    _, a = extract(tmp_path / "a.zarr", df, client, ExtractConfig(descriptors=("image", "audio", "fused"),
                                                                   batch_size=1, student_weights="random"))
    _, b = extract(tmp_path / "b.zarr", df, client, ExtractConfig(descriptors=("image", "audio", "fused"),
                                                                   batch_size=3, student_weights="random"))
    for name in ("image", "audio", "fused"):
        np.testing.assert_allclose(a.read_video("tone")[name].astype(np.float32),
                                   b.read_video("tone")[name].astype(np.float32), rtol=1e-2, atol=1e-2)


def test_unknown_descriptor_is_refused():
    with pytest.raises(ValueError, match="--descriptors"):
        ExtractConfig(descriptors=("image", "optical_flow"))


def test_workers_get_the_weights_the_client_resolved():
    cfg = ExtractConfig(teacher_weights="kinetics400", student_weights="imagenet")
    pinned = cfg.resolved({"teacher": {"source": "random(seed=0)"},
                           "student": {"source": "torchvision:ResNet18_Weights.IMAGENET1K_V1+random(seed=0)"}})
    assert pinned.teacher_weights == "random" and pinned.student_weights == "imagenet"


def test_keep_inputs_round_trips_the_decoded_first_frames_bit_exactly(tmp_path, video_dir, client):
    from featurestore.decode import DecodedVideo
    from featurestore.steps import iter_steps

    df = manifest(video_dir, ["tone.mp4", "silent.mp4"])
    config = ExtractConfig(descriptors=("image",), student_weights="random", keep_inputs=True, keep_clips=True)
    _, store = extract(tmp_path / "s.zarr", df, client, config)
    v = store.read_video("tone")
    with DecodedVideo(str(video_dir / "tone.mp4"), with_audio=False) as dec:
        steps = list(iter_steps(dec.frames()))
    assert v["frames"].dtype == np.uint8 and v["frames"].shape == (4, 112, 112, 3)
    assert np.array_equal(v["frames"], np.stack([first for _, first, _ in steps]))
    assert np.array_equal(v["clips"], np.stack([clip for _, _, clip in steps]))
    assert v["mel"].shape == (4, 40, 101) and v["mel"].dtype == np.float16
    assert v["mel"].astype(np.float32).max() > np.log(1e-6) + 10          # the tone is there
    assert not store.read_video("silent")["mel"].any()                    # no audio track: zeros
    assert store.attrs["inputs"] == ["frames", "mel", "clips"]


def test_two_workers_write_the_same_store_as_one(tmp_path, video_dir):
    df = manifest(video_dir, ["tone.mp4", "pal.mp4", "silent.mp4"])
    config = ExtractConfig(descriptors=("image", "audio", "fused"), batch_size=4, student_weights="random", threads=1)
    stores = {}
    for n in (1, 2):
        c = make_client(workers=n, processes=False)
        try:
            _, stores[n] = extract(tmp_path / f"w{n}.zarr", df, c, config)
        finally:
            close_client(c)
    assert stores[1].video_ids() == stores[2].video_ids()
    for vid in stores[1].video_ids():
        a, b = stores[1].read_video(vid), stores[2].read_video(vid)
        for k in a.arrays:
            assert np.array_equal(a[k], b[k]), (vid, k)


def test_videos_in_flight_share_model_batches_and_store_the_per_video_arrays(tmp_path, video_dir, decodes):
    from featurestore.extractor import batch_counts

    df = manifest(video_dir, ["tone.mp4", "pal.mp4", "silent.mp4", "tone.mp4"])
    df.loc[3, "video_id"] = "tone_again"
    config = ExtractConfig(batch_size=2, student_weights="random", teacher_weights="random", threads=1)
    stores, batches = {}, {}
    for in_flight in (1, 4):
        before = batch_counts()
        c = make_client(workers=1, processes=False, threads_per_worker=in_flight)
        try:
            summary, stores[in_flight] = extract(tmp_path / f"f{in_flight}.zarr", df, c, config)
        finally:
            close_client(c)
        assert summary.stored == 4
        batches[in_flight] = {k: [v[0] - before.get(k, [0, 0])[0], v[1] - before.get(k, [0, 0])[1]]
                              for k, v in batch_counts().items()}
    assert sorted(decodes.values()) == [2, 2, 4]              # once per row and run, whatever the number in flight
    for vid in stores[1].video_ids():
        a, b = stores[1].read_video(vid), stores[4].read_video(vid)
        assert set(a.arrays) == set(b.arrays)
        for k in a.arrays:
            np.testing.assert_allclose(a[k].astype(np.float32), b[k].astype(np.float32), rtol=1e-2, atol=1e-2,
                                       err_msg=f"{vid}/{k}")
    # 15 steps, each through each model once; one at a time, a video's rows fill its own batches only:
    # image/fused batches of 8 (one per video), clip batches of 2 (4-step videos: 2, the 3-step one: 2)
    for in_flight in (1, 4):
        assert batches[in_flight]["clip"][0] == batches[in_flight]["image"][0] == 15
    assert batches[1] == {"image": [15, 4], "clip": [15, 8], "fused": [15, 4], "audio": [12, 3]}


def test_hwaccel_that_cannot_run_here_falls_back_to_software_and_says_so(tmp_path, video_dir, client):
    import torch
    from featurestore.decode import hwaccels

    if "cuda" not in hwaccels():
        pytest.skip("this ffmpeg build offers no cuda hwaccel (the CLI drops --hwaccel with a warning)")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: hardware decoding may work, so there is no fallback to see")
    df = manifest(video_dir, ["tone.mp4", "silent.mp4"])
    soft = ExtractConfig(descriptors=("image", "audio", "fused"), student_weights="random", keep_inputs=True)
    hard = ExtractConfig(descriptors=soft.descriptors, student_weights="random", keep_inputs=True, hwaccel="cuda")
    _, a = extract(tmp_path / "soft.zarr", df, client, soft)
    summary, b = extract(tmp_path / "hard.zarr", df, client, hard)
    assert summary.stored == 2 and summary.failed == 0
    assert summary.hwaccel_error.startswith("--hwaccel cuda failed (ffmpeg exited")
    assert summary.hwaccel_error.endswith("decoding in software from now on")
    for vid in ("tone", "silent"):
        assert b.read_video(vid).attrs["decoder"] == "software"
        for k in ("frames", "mel", "image"):
            assert np.array_equal(a.read_video(vid)[k], b.read_video(vid)[k]), (vid, k)


def test_bench_extract_reports_ceiling_extraction_and_models(tmp_path, video_dir):
    from click.testing import CliRunner
    from cli.main import main
    pd.DataFrame([{"video_id": "tone", "path": str(video_dir / "tone.mp4"), "label": "a", "split": "train"}]
                 ).to_csv(tmp_path / "m.csv", index=False)
    res = CliRunner().invoke(main, ["bench-extract", "--manifest", str(tmp_path / "m.csv"), "--descriptors",
                                    "image,audio,fused", "--weights", "random", "--in-flight", "2",
                                    "--out", str(tmp_path / "b.json")])
    assert res.exit_code == 0, res.output
    for line in ("x 2 video(s) in flight", "warmed up", "decode-only ceiling", "full extraction", "ratio to ceiling",
                 "image ResNet-18", "audio ResNet-18", "mean batch", "peak host memory"):
        assert line in res.output
    figures = json.loads((tmp_path / "b.json").read_text())
    assert figures["failed"] == 0 and figures["video_seconds"] == pytest.approx(2.0)
    assert figures["decode_only_video_s_per_s"] > 0 and figures["extraction_video_s_per_s"] > 0
    assert figures["batch_fill"]["image"]["batches"] >= 1


def test_without_dask_cuda_each_gpu_worker_process_sees_only_its_own_gpu(monkeypatch):
    import os
    from distributed import Client

    from featurestore.cluster import ClusterError, gpu_worker_env, per_gpu_cluster
    from featurestore.launch import worker_device

    assert gpu_worker_env(2) == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    assert gpu_worker_env(2, "3, 5,7") == [{"CUDA_VISIBLE_DEVICES": "3"}, {"CUDA_VISIBLE_DEVICES": "5"}]
    with pytest.raises(ClusterError, match="names 1"):
        gpu_worker_env(2, "4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "6,2")
    cluster = per_gpu_cluster(2, threads_per_worker=3)     # real worker processes; no GPU needed to start them
    client = Client(cluster)
    try:
        seen = client.run(lambda dask_worker: (dask_worker.name, os.environ["CUDA_VISIBLE_DEVICES"],
                                               dask_worker.state.nthreads))
        assert sorted(seen.values()) == [(0, "6", 3), (1, "2", 3)]
        def one_visible_gpu(dask_worker):       # what torch would see in each worker process on a GPU machine
            import torch
            torch.cuda.device_count = lambda: 1
            return worker_device(ExtractConfig(device="cuda"), dask_worker.name)
        devices = client.run(one_visible_gpu)
        assert set(devices.values()) == {"cuda:0"}          # one visible GPU each: its own is cuda:0
    finally:
        client.close()
        cluster.close()


def test_threads_starting_at_once_share_one_extractor_with_the_seeded_weights():
    import threading
    from featurestore.extractor import _EXTRACTORS, get_extractor
    from featurestore.weights import load_student

    config = ExtractConfig(descriptors=("image", "audio", "fused"), student_weights="random", seed=11)
    _EXTRACTORS.pop((config, "cpu"), None)
    got, barrier = [], threading.Barrier(4)

    def first_task() -> None:
        barrier.wait()                       # a Dask worker's first tasks all ask for the models at once
        got.append(get_extractor(config, "cpu"))
    threads = [threading.Thread(target=first_task) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(e) for e in got}) == 1
    assert got[0].models["student"]["sha256"] == load_student("random", 11)[1]["sha256"]


def test_seeded_random_weights_do_not_depend_on_other_threads_building_models():
    import threading
    from featurestore.weights import load_student, load_teacher

    want = load_student("random", 3)[1]["sha256"]
    hashes, barrier = [], threading.Barrier(3)

    def build(kind: str) -> None:
        barrier.wait()
        hashes.append((kind, (load_student("random", 3) if kind == "student" else load_teacher("random", 3))[1]["sha256"]))
    threads = [threading.Thread(target=build, args=(k,)) for k in ("student", "teacher", "student")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [h for k, h in hashes if k == "student"] == [want, want]


def test_a_worker_whose_weights_differ_from_the_clients_writes_nothing(tmp_path, video_dir, client):
    df = manifest(video_dir, ["tone.mp4"])
    config = ExtractConfig(descriptors=("image",), student_weights="random", seed=4)
    store = FeatureStore(tmp_path / "s.zarr", mode="a")
    store.initialise("testset", ["c0", "c1"], config.descriptors, {"models": {}}, ())
    from featurestore.extract import extract_video_task
    lied = ExtractConfig(descriptors=("image",), student_weights="random", seed=4,
                         weights_sha256=(("student", "0" * 16),))
    res = extract_video_task(df.iloc[0].to_dict(), str(store.path), lied)
    assert not res.ok and res.stage == "load"
    assert "this worker loaded student weights sha256" in res.error and "nothing written" in res.error
    assert store.video_ids() == [] and store.partial_ids() == []


def test_a_dask_cuda_worker_with_a_rotated_device_list_uses_its_first_gpu(monkeypatch):
    import torch

    from featurestore.launch import worker_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    for name in range(8):
        rotated = ",".join(str((name + k) % 8) for k in range(8))      # what LocalCUDACluster gives worker `name`
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", rotated)
        assert worker_device(ExtractConfig(device="cuda"), name) == "cuda:0"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert worker_device(ExtractConfig(device="cuda"), 3) == "cuda:3"     # one process seeing every GPU
    assert worker_device(ExtractConfig(device="cpu"), 3) == "cpu"


def test_negative_gpus_are_refused_and_in_flight_follows_the_usable_cpus(monkeypatch):
    import os

    from featurestore import launch

    with pytest.raises(ValueError, match="--gpus must be 0"):
        launch.launch(gpus=-1)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert launch.usable_cpus() == 4
    assert launch.default_in_flight(2) == 2 and launch.default_in_flight(1) == 4
