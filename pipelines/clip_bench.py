"""``fs bench --clip-level``: clip-level recognition of the teacher, image-only, audio-only and image+audio students,
undistilled and distilled (Listen to Look Fig. 5), on the test split's action clips, from the store alone.

Each representation gets the same linear head (BN + FC) trained on the training split's action clips; features of
the undistilled and distilled students are computed from the first frames and log-mels kept in the store."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from featurestore.cost import unit_gflops
from featurestore.manifest import parse_segments
from featurestore.store import FeatureStore, StoreError
from featurestore.weights import load_student
from models.heads import StepClassifier
from pipelines.data import load_split
from pipelines.distill import _need, student_features
from pipelines.train import fit


def action_steps(video) -> np.ndarray:
    """Indices of the steps that start inside a ground-truth action segment (all steps when none are annotated)."""
    segs = parse_segments(video.attrs.get("segments", "") or "")
    t = video.arrays["t"]
    if not segs:
        return np.arange(len(t))
    return np.flatnonzero(np.any([(t >= s) & (t < e) for s, e in segs], axis=0))


def _fit_head(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int = 30, seed: int = 0) -> StepClassifier:
    torch.manual_seed(seed)
    head = StepClassifier(x.shape[1], num_classes)

    def batches(g):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            if len(order[i:i + 64]) > 1:
                yield (order[i:i + 64],)

    def loss_fn(idx):
        logits = head(x[idx])
        return F.cross_entropy(logits, y[idx]), logits, y[idx]
    fit(head, batches, loss_fn, epochs, 0.01, (20,), seed)
    return head.eval()


def clip_level_bench(store: FeatureStore, student_ckpt: Path | None, out: Path,
                     say: Callable[[str], None] = print) -> pd.DataFrame:
    """Accuracy and counted GFLOPs per clip for each representation; writes ``clip_bench.csv`` into ``out``."""
    _need(store, ("frames", "mel"), "--keep-inputs")
    has_teacher = "r2p1d" in store.attrs.get("descriptors", [])
    names = ("t", "frames", "mel") + (("r2p1d",) if has_teacher else ())
    splits = {s: load_split(store, s, names) for s in ("train", "test")}
    students = {"undistilled": load_student("imagenet", 0)[0].eval()}
    if student_ckpt is not None:
        if not Path(student_ckpt).is_file():
            raise StoreError(f"no distilled student at {student_ckpt} (fs train-distill)")
        students["distilled"] = load_student(str(student_ckpt))[0].eval()
    else:
        say("no distilled student given: only undistilled rows (fs train-distill, then --student PATH)")
    feats: dict[str, dict[str, list]] = {s: {} for s in splits}
    labels: dict[str, list] = {s: [] for s in splits}
    for split, data in splits.items():
        for video, y in zip(data.videos, data.labels):
            steps = action_steps(video)
            if not len(steps):
                continue
            labels[split].append(np.full(len(steps), int(y)))
            if has_teacher:
                feats[split].setdefault("teacher", []).append(video.arrays["r2p1d"][steps].astype(np.float32))
            for kind, net in students.items():
                for name, z in student_features(net, video.arrays["frames"][steps], video.arrays["mel"][steps],
                                                      bool(video.attrs.get("has_audio"))).items():
                    feats[split].setdefault(f"{name}/{kind}", []).append(z)
    u = unit_gflops()
    cost = {"teacher": u["clip"], "image": u["image"], "audio": u["audio"], "fused": u["pair"]}
    title = {"teacher": "teacher R(2+1)D-18 (clip)", "image": "image-only (first frame)",
             "audio": "audio-only (1 s log-mel)", "fused": "image+audio"}
    y_train, y_test = (torch.from_numpy(np.concatenate(labels[s])) for s in ("train", "test"))
    n_classes = len(splits["train"].classes)
    rows = []
    for key in feats["train"]:
        x_train = torch.from_numpy(np.concatenate(feats["train"][key]))
        x_test = torch.from_numpy(np.concatenate(feats["test"][key]))
        head = _fit_head(x_train, y_train, n_classes)
        with torch.inference_mode():
            acc = float((head(x_test).argmax(1) == y_test).float().mean())
        name, _, kind = key.partition("/")
        rows.append({"model": title[name] + (f", {kind}" if kind else ""), "top1": acc,
                     "gflops_per_clip": cost[name], "train_clips": len(y_train), "test_clips": len(y_test)})
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "clip_bench.csv", index=False)
    return table
