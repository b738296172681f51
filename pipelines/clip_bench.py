"""``fs bench --clip-level``: clip-level recognition of the teacher, image-only, audio-only and image+audio students,
undistilled and distilled (Listen to Look Fig. 5), on the test split's action clips, from the store alone.

Each representation gets the same linear head (BN + FC) trained on the training split's action clips; features of
the undistilled and distilled students are computed from the first frames and log-mels kept in the store."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from featurestore.constants import KEPT_INPUTS
from featurestore.cost import unit_gflops
from featurestore.store import FeatureStore, StoreError, require_arrays
from featurestore.weights import load_student
from featurestore.refresh import student_features
from pipelines.data import action_mask, load_split
from pipelines.train_head import fit_step_classifier

log = logging.getLogger(__name__)


def action_steps(video) -> np.ndarray:
    """Indices of the steps that start inside a ground-truth action segment (all steps when none are annotated)."""
    inside = action_mask(video)
    return np.arange(video.n_steps) if inside is None else np.flatnonzero(inside)


def clip_level_bench(store: FeatureStore, student_ckpt: Path | None, out: Path,
                     say: Callable[[str], None] = log.info) -> pd.DataFrame:
    """Accuracy and counted GFLOPs per clip for each representation; writes ``clip_bench.csv`` into ``out``."""
    require_arrays(store, KEPT_INPUTS, "extract it with --keep-inputs")
    has_teacher = store.has_descriptor("r2p1d")
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
    cost = {"teacher": u.clip, "image": u.image, "audio": u.audio, "fused": u.pair}
    title = {"teacher": "teacher R(2+1)D-18 (clip)", "image": "image-only (first frame)",
             "audio": "audio-only (1 s log-mel)", "fused": "image+audio"}
    y_train, y_test = (torch.from_numpy(np.concatenate(labels[s])) for s in ("train", "test"))
    n_classes = len(splits["train"].classes)
    rows = []
    for key in feats["train"]:
        x_train = torch.from_numpy(np.concatenate(feats["train"][key]))
        x_test = torch.from_numpy(np.concatenate(feats["test"][key]))
        head, _, _ = fit_step_classifier(x_train, y_train, n_classes, epochs=30, batch_size=64, lr=0.01,
                                      milestones=(20,), seed=0)
        with torch.inference_mode():
            acc = float((head(x_test).argmax(1) == y_test).float().mean())
        name, _, kind = key.partition("/")
        rows.append({"model": title[name] + (f", {kind}" if kind else ""), "top1": acc,
                     "gflops_per_clip": cost[name], "train_clips": len(y_train), "test_clips": len(y_test)})
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "clip_bench.csv", index=False)
    return table
