import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cli.main import main
from featurestore.cluster import close_client, make_client
from featurestore.config import ExtractConfig
from featurestore.extract import run_extraction
from featurestore.store import FeatureStore, StoreError
from featurestore.weights import load_student, state_hash
from models.imgaud import distillation_loss, imgaud2vid_student
from pipelines.data import load_split


def test_l1_and_kl_terms_follow_the_equation_on_hand_made_tensors():
    z_t = torch.tensor([[1.0, -2.0], [0.0, 4.0]])
    z_s = torch.tensor([[0.0, -1.0], [1.0, 1.0]])
    lt = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    ls = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    total, l1, kl = distillation_loss(z_t, lt, z_s, ls, lam=100.0)
    assert l1.item() == pytest.approx(((1 + 1) + (1 + 3)) / 2)      # Eq. 3: summed over dimensions, batch mean
    p_t = np.array([[0.5, 0.5], [np.exp(2) / (np.exp(2) + 1), 1 / (np.exp(2) + 1)]])
    p_s = np.array([[np.e / (np.e + 1), 1 / (np.e + 1)], [0.5, 0.5]])
    want_kl = (p_t * np.log(p_t / p_s)).sum(1).mean()
    assert kl.item() == pytest.approx(want_kl, rel=1e-5)
    assert total.item() == pytest.approx(l1.item() + 100 * want_kl, rel=1e-5)
    same = distillation_loss(z_t, lt, z_t, lt)
    assert same[1].item() == 0 and abs(same[2].item()) < 1e-7


def test_a_distillation_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    student = imgaud2vid_student(num_classes=10)
    frames = torch.randint(0, 255, (4, 112, 112, 3), dtype=torch.uint8)
    mel = torch.randn(4, 40, 101)
    z_t, logits_t = torch.rand(4, 512), torch.randn(4, 10)
    opt = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    student.train()
    losses = []
    for _ in range(3):
        _, _, fused, logits = student(frames, mel)
        loss = distillation_loss(z_t, logits_t, fused, logits)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.fixture(scope="module")
def input_store(tmp_path_factory, video_dir):
    path = tmp_path_factory.mktemp("inputs") / "s.zarr"
    df = pd.DataFrame([{"video_id": v, "path": str(video_dir / f"{v}.mp4"), "label": lab, "split": sp}
                       for v, lab, sp in (("tone", "a", "train"), ("pal", "b", "train"), ("silent", "a", "test"))])
    client = make_client(workers=1, processes=False)
    try:
        config = ExtractConfig(student_weights="random", teacher_weights="random", keep_inputs=True, keep_clips=True,
                               batch_size=4)
        run_extraction(df, FeatureStore(path, mode="a"), config, client, "t", ["a", "b"], progress=False)
    finally:
        close_client(client)
    return path


def test_refresh_changes_only_the_named_arrays_and_records_the_checkpoint(tmp_path, input_store):
    import shutil
    path = tmp_path / "s.zarr"
    shutil.copytree(input_store, path)
    before = {v: FeatureStore(path).read_video(v) for v in ("tone", "pal", "silent")}
    new, rec = load_student("random", seed=7)
    torch.save({"state_dict": new.state_dict()}, tmp_path / "student.pt")
    res = CliRunner().invoke(main, ["refresh", "--store", str(path), "--student", str(tmp_path / "student.pt")])
    assert res.exit_code == 0, res.output
    assert "refreshed 3 videos" in res.output
    store = FeatureStore(path)
    for vid, old in before.items():
        now = store.read_video(vid)
        for name in ("t", "r2p1d", "r2p1d_logits", "frames", "mel", "clips"):
            assert np.array_equal(now[name], old[name]), name
        assert not np.array_equal(now["image"], old["image"])
        assert not np.array_equal(now["fused"], old["fused"])
        assert now.attrs["provenance"]["models"]["student"]["sha256"] == state_hash(new)
    assert store.attrs["provenance"]["models"]["student"]["sha256"] == state_hash(new)
    assert not store.read_video("silent")["audio"].any()
    with torch.inference_mode():        # the refreshed features are the new student's on the stored inputs
        tone = store.read_video("tone")
        z_i = new.eval().image_net(torch.from_numpy(tone["frames"]))
    np.testing.assert_allclose(tone["image"].astype(np.float32), z_i.numpy(), rtol=2e-2, atol=2e-2)
    load_split(store, "train", ("fused",))          # consistent provenance: trainers accept it
    again = CliRunner().invoke(main, ["refresh", "--store", str(path), "--student", str(tmp_path / "student.pt")])
    assert "refreshed 0 videos" in again.output


def test_refresh_of_a_gpu_extracted_store_recomputes_every_model_on_the_cpu_or_refuses(tmp_path, input_store):
    import shutil
    path = tmp_path / "s.zarr"
    shutil.copytree(input_store, path)
    gpu = {"device": "cuda", "precision": "bfloat16-autocast"}

    def as_if_extracted_on_a_gpu() -> FeatureStore:
        store = FeatureStore(path, mode="a")          # the root and every video say so
        store.root.attrs["provenance"] = {**store.attrs["provenance"], "compute": gpu}
        for vid in store.video_ids():
            video = store.read_video(vid)
            attrs = {k: v for k, v in video.attrs.items() if k not in ("complete", "tag")}
            attrs["provenance"] = {**attrs["provenance"], "compute": {**gpu, "gpu": "NVIDIA H200"}}
            store.replace_video(vid, dict(video.arrays), attrs)
        return store

    store = as_if_extracted_on_a_gpu()
    before = {v: store.read_video(v) for v in store.video_ids()}
    new, _ = load_student("random", seed=7)
    torch.save({"state_dict": new.state_dict()}, tmp_path / "student.pt")
    res = CliRunner().invoke(main, ["refresh", "--store", str(path), "--student", str(tmp_path / "student.pt")])
    assert res.exit_code != 0 and "teacher descriptors would stay" in res.output
    assert FeatureStore(path).attrs["provenance"]["compute"] == gpu          # refused before anything changed
    # the same teacher weights, named: its arrays are recomputed anyway, since they were computed in bf16
    res = CliRunner().invoke(main, ["refresh", "--store", str(path), "--student", str(tmp_path / "student.pt"),
                                    "--teacher", "random"])
    assert res.exit_code == 0, res.output
    store = FeatureStore(path)
    cpu = {"device": "cpu", "precision": "float32"}
    assert store.attrs["provenance"]["compute"] == cpu
    for vid, old in before.items():
        now = store.read_video(vid)
        assert now.attrs["provenance"]["compute"] == cpu
        assert not np.array_equal(now["image"], old["image"])
    # a store of CPU features is refreshed as before: one model named is enough, and current videos are skipped
    again = CliRunner().invoke(main, ["refresh", "--store", str(path), "--student", str(tmp_path / "student.pt")])
    assert again.exit_code == 0 and "refreshed 0 videos" in again.output, again.output
    # weights unchanged but bf16 features: every video is recomputed
    as_if_extracted_on_a_gpu()
    res = CliRunner().invoke(main, ["refresh", "--store", str(path), "--student", str(tmp_path / "student.pt"),
                                    "--teacher", "random"])
    assert res.exit_code == 0 and f"refreshed {len(before)} videos" in res.output, res.output


def test_trainers_refuse_a_half_refreshed_store(tmp_path, input_store):
    import shutil
    path = tmp_path / "s.zarr"
    shutil.copytree(input_store, path)
    store = FeatureStore(path, mode="a")
    prov = store.attrs["provenance"]
    prov["models"]["student"] = {"source": "file:/elsewhere.pt", "sha256": "0123456789abcdef"}
    store.root.attrs["provenance"] = prov      # as if refresh had switched the root and stopped
    with pytest.raises(StoreError, match="unfinished fs refresh"):
        load_split(FeatureStore(path), "train", ("fused",))


def test_distill_and_teacher_training_from_stored_inputs(tmp_path, input_store):
    runs = tmp_path / "runs"
    cli = CliRunner()
    res = cli.invoke(main, ["train-distill", "--store", str(input_store), "--runs", str(runs), "--epochs", "2",
                            "--batch-size", "4", "--finetune", "1"])
    assert res.exit_code == 0, res.output
    student, rec = load_student(str(runs / "student.pt"))
    assert student.classifier.out_features == 2          # fine-tuned on the two target classes
    res = cli.invoke(main, ["train-teacher", "--store", str(input_store), "--runs", str(runs), "--epochs", "1",
                            "--clips-per-video", "2",
                            "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    from featurestore.weights import load_teacher
    teacher, trec = load_teacher(str(runs / "teacher.pt"))
    assert trec["num_classes"] == 2


def test_distillation_needs_kept_inputs(tmp_path):
    from tests.test_bench import fabricate_store
    store = fabricate_store(tmp_path / "f.zarr", n_videos=6)
    res = CliRunner().invoke(main, ["train-distill", "--store", str(store.path), "--runs", str(tmp_path)])
    assert res.exit_code != 0 and "--keep-inputs" in res.output


def test_clip_level_bench_compares_teacher_and_students(tmp_path, input_store):
    import shutil
    path = tmp_path / "s.zarr"
    shutil.copytree(input_store, path)
    student, _ = load_student("random", seed=3)
    torch.save({"state_dict": student.state_dict()}, tmp_path / "student.pt")
    res = CliRunner().invoke(main, ["bench", "--clip-level", "--store", str(path), "--runs", str(tmp_path),
                                    "--student", str(tmp_path / "student.pt")])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "bench" / "clip_bench.csv").set_index("model")
    assert {"teacher R(2+1)D-18 (clip)", "image+audio, undistilled", "image+audio, distilled",
            "image-only (first frame), undistilled", "audio-only (1 s log-mel), distilled"} <= set(table.index)
    assert table.loc["teacher R(2+1)D-18 (clip)", "gflops_per_clip"] > 50 * table.loc["image+audio, distilled",
                                                                                      "gflops_per_clip"]
    # every row is scored on the same test clips: the steps of the test split's videos (no segments annotated)
    store = FeatureStore(path)
    n_test = sum(store.read_video(v).n_steps for v in store.video_ids() if store.read_video(v).attrs["split"] == "test")
    n_train = sum(store.read_video(v).n_steps for v in store.video_ids()
                  if store.read_video(v).attrs["split"] == "train")
    assert (table["test_clips"] == n_test).all() and (table["train_clips"] == n_train).all()
    right = table["top1"] * n_test
    assert np.allclose(right, right.round())                      # a count of right clips over n_test
    from featurestore.cost import unit_gflops
    u = unit_gflops()
    want = {"teacher R(2+1)D-18 (clip)": u.clip, "image+audio, distilled": u.image + u.audio + u.fusion,
            "image-only (first frame), undistilled": u.image, "audio-only (1 s log-mel), distilled": u.audio}
    for model, g in want.items():
        assert table.loc[model, "gflops_per_clip"] == pytest.approx(g, rel=1e-12), model


def test_refresh_cut_between_its_two_renames_is_put_back_by_the_next_run(tmp_path, input_store, monkeypatch):
    import os
    import shutil

    from featurestore.store import verify
    path, clean = tmp_path / "s.zarr", tmp_path / "clean.zarr"
    shutil.copytree(input_store, path)
    shutil.copytree(input_store, clean)
    new, _ = load_student("random", seed=7)
    torch.save({"state_dict": new.state_dict()}, tmp_path / "student.pt")
    args = ["--student", str(tmp_path / "student.pt")]
    assert CliRunner().invoke(main, ["refresh", "--store", str(clean), *args]).exit_code == 0

    real_rename = os.rename

    def cut(src, dst):          # the second rename of "silent" (its new copy into videos/) never happens
        if str(dst).endswith(os.path.join("videos", "silent")) and "partial" in str(src):
            raise KeyboardInterrupt("power cut")
        return real_rename(src, dst)
    monkeypatch.setattr(os, "rename", cut)
    res = CliRunner().invoke(main, ["refresh", "--store", str(path), *args])
    monkeypatch.setattr(os, "rename", real_rename)
    assert res.exit_code != 0
    store = FeatureStore(path)
    assert not store.has_video("silent")                   # between the renames: only partial/ holds it
    left = [p.name for p in (path / "partial").iterdir() if p.is_dir()]
    assert sorted(n.endswith("-old") for n in left) == [False, True]      # the new copy and the old, both complete
    # what any next writer does first: the old complete copy goes back under videos/ and into the index
    shutil.copytree(path, tmp_path / "restored.zarr")
    restored = FeatureStore(tmp_path / "restored.zarr", mode="a")
    restored.clear_partials()
    assert restored.has_video("silent") and "silent" in FeatureStore(tmp_path / "restored.zarr").entries()
    problems = verify(FeatureStore(tmp_path / "restored.zarr"))[0]   # only the two videos still to refresh
    assert len(problems) == 2 and all("unfinished fs refresh" in p for p in problems), problems
    original = FeatureStore(input_store).read_video("silent")
    for name in original.arrays:
        assert np.array_equal(restored.read_video("silent")[name], original[name]), name

    res = CliRunner().invoke(main, ["refresh", "--store", str(path), *args])
    assert res.exit_code == 0, res.output
    store, want = FeatureStore(path), FeatureStore(clean)
    assert sorted(store.video_ids()) == ["pal", "silent", "tone"]
    assert not any(p.is_dir() for p in (path / "partial").iterdir())
    assert sorted(store.entries()) == ["pal", "silent", "tone"]
    for vid in ("pal", "silent", "tone"):
        got, ref = store.read_video(vid), want.read_video(vid)
        assert sorted(got.arrays) == sorted(ref.arrays)
        for name in ref.arrays:                             # what an uninterrupted refresh gives
            assert np.array_equal(got[name], ref[name]), (vid, name)
        assert got.attrs["provenance"]["models"]["student"]["sha256"] == state_hash(new)
    assert verify(store)[0] == []
    load_split(store, "train", ("fused",))
