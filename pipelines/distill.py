"""ImgAud2Vid distillation and teacher fine-tuning — from the inputs kept in the store, never the videos.

* ``train_teacher``: fine-tune R(2+1)D-18 on the target classes from stored clips (``--keep-clips``).
* ``train_distill``: train the student (image ResNet-18 + audio ResNet-18 + Psi) against the stored teacher
  descriptors and logits with L1 + lambda KL (Eq. 4), from stored first frames and log-mels (``--keep-inputs``);
  optionally fine-tune it on the target labels.

``fs refresh`` (:mod:`featurestore.refresh`) then rewrites the store's descriptors with the new weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from featurestore.constants import KEPT_CLIPS
from featurestore.store import FeatureStore, require_arrays
from models.imgaud import distillation_loss
from pipelines.checkpoints import save_checkpoint
from pipelines.data import load_split, resolve_device, store_model
from pipelines.train import Schedule, Trained, fit, minibatches


def _steps(data, names: tuple[str, ...]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every step of every video, flattened, as tensors per name, with the video's label per step."""
    cols = [torch.cat([torch.from_numpy(np.ascontiguousarray(v.arrays[n])) for v in data.videos]) for n in names]
    labels = torch.cat([torch.full((v.n_steps,), int(y)) for v, y in zip(data.videos, data.labels)])
    return cols, labels


def train_teacher(store: FeatureStore, runs: Path, epochs: int = 10, batch_size: int = 8, lr: float = 1e-3,
                  milestones: tuple[int, ...] = (6,), seed: int = 0, device: str = "auto",
                  report: Callable[[dict], None] | None = None, clips_per_video: int = 0) -> Trained:
    """Fine-tune the store's R(2+1)D-18 on the dataset's classes from stored clips (the SCSampler setting: f trained on
    the training split); every clip is labelled with its video's label. ``clips_per_video`` > 0 draws that many
    clips of each video afresh every epoch (a CPU-sized epoch); 0 uses every clip. Saves ``<runs>/teacher.pt``.
    The schedule is the one asked for: rows are clips, plenty even for small stores, and each costs a 3D CNN pass."""
    require_arrays(store, KEPT_CLIPS, "extract it with --keep-clips")
    device = resolve_device(device)
    data = load_split(store, "train", ("clips",))
    (clips,), labels = _steps(data, ("clips",))
    torch.manual_seed(seed)
    teacher = store_model(store, "teacher")
    teacher.fc = nn.Linear(teacher.fc.in_features, len(data.classes))
    teacher.num_classes = len(data.classes)
    teacher.to(device)

    def loss_fn(idx):
        _, logits = teacher(clips[idx].to(device))
        y = labels[idx].to(device)
        return F.cross_entropy(logits, y), logits, y

    bounds = np.cumsum([0] + [v.n_steps for v in data.videos])

    def draw(g):
        """``clips_per_video`` clips of each video, in a random order."""
        idx = torch.cat([a + torch.randperm(int(b - a), generator=g)[:clips_per_video]
                         for a, b in zip(bounds[:-1], bounds[1:])])
        return idx[torch.randperm(len(idx), generator=g)]

    batches = minibatches(draw if clips_per_video else len(labels), batch_size)
    history = fit(teacher, batches, loss_fn, epochs, lr, milestones, seed, report)
    teacher.eval().cpu()
    path = save_checkpoint(runs, "teacher", "teacher", teacher, store,
                           {"num_classes": len(data.classes), "epochs": epochs}, history)
    return Trained(teacher, history, path, Schedule(batch_size, epochs, tuple(milestones)))


def train_distill(store: FeatureStore, runs: Path, epochs: int = 60, batch_size: int = 16, lr: float = 1e-3,
                  milestones: tuple[int, ...] = (30, 50), lam: float = 100.0, finetune_epochs: int = 0,
                  seed: int = 0, device: str = "auto", report: Callable[[dict], None] | None = None) -> Trained:
    """Distil the stored teacher (descriptor z^V and logits) into the student from stored frames and log-mels, then
    (``finetune_epochs`` > 0) fine-tune it on the target labels with a fresh C-way classifier. Saves
    ``<runs>/student.pt``."""
    require_arrays(store, ("frames", "mel", "r2p1d"), "extract it with --keep-inputs and r2p1d in --descriptors")
    device = resolve_device(device)
    data = load_split(store, "train", ("frames", "mel", "r2p1d", "r2p1d_logits"))
    (frames, mel, z_v, logits_v), labels = _steps(data, ("frames", "mel", "r2p1d", "r2p1d_logits"))
    mel, z_v, logits_v = mel.float(), z_v.float(), logits_v.float()
    torch.manual_seed(seed)
    student = store_model(store, "student")
    if student.classifier.out_features != logits_v.shape[1]:
        student.classifier = nn.Linear(student.classifier.in_features, logits_v.shape[1])
    student.to(device)

    def distil(idx):
        _, _, fused, logits = student(frames[idx].to(device), mel[idx].to(device))
        total, l1, kl = distillation_loss(z_v[idx].to(device), logits_v[idx].to(device), fused, logits, lam)
        return total, logits, logits_v[idx].argmax(1).to(device)   # "accuracy": agreement with the teacher

    history = fit(student, minibatches(len(labels), batch_size), distil, epochs, lr, milestones, seed, report)
    if finetune_epochs:
        student.classifier = nn.Linear(student.classifier.in_features, len(data.classes)).to(device)

        def finetune(idx):
            _, _, _, logits = student(frames[idx].to(device), mel[idx].to(device))
            y = labels[idx].to(device)
            return F.cross_entropy(logits, y), logits, y
        history += [dict(r, stage="finetune") for r in fit(student, minibatches(len(labels), batch_size), finetune,
                                                           finetune_epochs, lr, (), seed, report)]
    student.eval().cpu()
    path = save_checkpoint(runs, "student", "student", student, store,
                           {"lambda": lam, "epochs": epochs, "finetune_epochs": finetune_epochs,
                            "num_classes": student.classifier.out_features}, history)
    return Trained(student, history, path, Schedule(batch_size, epochs, tuple(milestones)))
