"""ImgAud2Vid distillation, teacher fine-tuning and ``fs refresh`` — from the inputs kept in the store, never the videos.

* ``train_teacher``: fine-tune R(2+1)D-18 on the target classes from stored clips (``--keep-clips``).
* ``train_distill``: train the student (image ResNet-18 + audio ResNet-18 + Psi) against the stored teacher
  descriptors and logits with L1 + lambda KL (Eq. 4), from stored first frames and log-mels (``--keep-inputs``);
  optionally fine-tune it on the target labels.
* ``refresh``: recompute ``image``, ``audio``, ``fused`` (new student) and ``r2p1d``, ``r2p1d_logits`` (new teacher)
  from the stored inputs, recording which checkpoint produced each array.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from featurestore.store import FeatureStore
from featurestore.weights import load_student, load_teacher
from models.imgaud import distillation_loss
from pipelines.data import load_split, require_arrays, save_checkpoint, store_model
from pipelines.train import fit, index_batches


def _steps(data, names: tuple[str, ...]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every step of every video, flattened, as tensors per name, with the video's label per step."""
    cols = [torch.cat([torch.from_numpy(np.ascontiguousarray(v.arrays[n])) for v in data.videos]) for n in names]
    labels = torch.cat([torch.full((v.n_steps,), int(y)) for v, y in zip(data.videos, data.labels)])
    return cols, labels


def train_teacher(store: FeatureStore, out: Path, epochs: int = 10, batch_size: int = 8, lr: float = 1e-3,
                  milestones: tuple[int, ...] = (6,), seed: int = 0, device: str = "cpu",
                  report: Callable[[dict], None] | None = None, clips_per_video: int = 0
                  ) -> tuple[nn.Module, list[dict]]:
    """Fine-tune the store's R(2+1)D-18 on the dataset's classes from stored clips (the SCSampler setting: f trained on
    the training split); every clip is labelled with its video's label. ``clips_per_video`` > 0 draws that many
    clips of each video afresh every epoch (a CPU-sized epoch); 0 uses every clip."""
    require_arrays(store, ("clips",), "extract it with --keep-clips")
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

    def sampled(g):
        if not clips_per_video:
            yield from index_batches(len(labels), batch_size)(g)
            return
        idx = torch.cat([a + torch.randperm(int(b - a), generator=g)[:clips_per_video]
                         for a, b in zip(bounds[:-1], bounds[1:])])
        idx = idx[torch.randperm(len(idx), generator=g)]
        for i in range(0, len(idx), batch_size):
            if len(idx[i:i + batch_size]) > 1:
                yield (idx[i:i + batch_size],)

    history = fit(teacher, sampled, loss_fn, epochs, lr, milestones, seed, report)
    teacher.eval().cpu()
    save_checkpoint(out, "teacher", teacher, store, {"num_classes": len(data.classes), "epochs": epochs}, history)
    return teacher, history


def train_distill(store: FeatureStore, out: Path, epochs: int = 60, batch_size: int = 16, lr: float = 1e-3,
                  milestones: tuple[int, ...] = (30, 50), lam: float = 100.0, finetune_epochs: int = 0,
                  seed: int = 0, device: str = "cpu", report: Callable[[dict], None] | None = None
                  ) -> tuple[nn.Module, list[dict]]:
    """Distil the stored teacher (descriptor z^V and logits) into the student from stored frames and log-mels, then
    (``finetune_epochs`` > 0) fine-tune it on the target labels with a fresh C-way classifier."""
    require_arrays(store, ("frames", "mel", "r2p1d"), "extract it with --keep-inputs and r2p1d in --descriptors")
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

    history = fit(student, index_batches(len(labels), batch_size), distil, epochs, lr, milestones, seed, report)
    if finetune_epochs:
        student.classifier = nn.Linear(student.classifier.in_features, len(data.classes)).to(device)

        def finetune(idx):
            _, _, _, logits = student(frames[idx].to(device), mel[idx].to(device))
            y = labels[idx].to(device)
            return F.cross_entropy(logits, y), logits, y
        history += [dict(r, stage="finetune") for r in fit(student, index_batches(len(labels), batch_size), finetune,
                                                           finetune_epochs, lr, (), seed, report)]
    student.eval().cpu()
    save_checkpoint(out, "student", student, store, {"lambda": lam, "epochs": epochs, "finetune_epochs": finetune_epochs,
                                           "num_classes": student.classifier.out_features}, history)
    return student, history


@torch.inference_mode()
def _batched(fn, x: np.ndarray, batch: int = 64) -> list[np.ndarray]:
    outs = [fn(torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))) for i in range(0, len(x), batch)]
    outs = [o if isinstance(o, tuple) else (o,) for o in outs]
    return [torch.cat([o[k] for o in outs]).float().numpy() for k in range(len(outs[0]))]


def student_features(net: nn.Module, frames: np.ndarray, mel: np.ndarray, has_audio: bool) -> dict[str, np.ndarray]:
    """z^I, z^A and Psi(z^I, z^A) of stored first frames and log-mels (zero audio features for a silent video)."""
    z_i, = _batched(net.image_net, frames)
    z_a, = _batched(net.audio_net, mel.astype(np.float32)) if has_audio else (np.zeros_like(z_i),)
    with torch.inference_mode():
        fused = net.fusion(torch.from_numpy(z_i), torch.from_numpy(z_a)).numpy()
    return {"image": z_i, "audio": z_a, "fused": fused}


def refresh(store_path: str | Path, student: str | None = None, teacher: str | None = None,
            progress: Callable[[int, int], None] | None = None) -> int:
    """Recompute the named models' arrays of every video from the stored inputs; returns how many videos changed.

    Root provenance is switched first, so a cut-short refresh leaves videos whose provenance disagrees with the
    store's: trainers refuse them until ``refresh`` is run again (it skips videos already refreshed).
    """
    if not student and not teacher:
        raise ValueError("name a --student and/or a --teacher checkpoint")
    store = FeatureStore(store_path, mode="a")
    with store.writer_lock("fs refresh"):
        store.clear_partials()
        prov = store.attrs.get("provenance", {})
        models: dict[str, tuple[nn.Module, dict]] = {}
        if student:
            require_arrays(store, ("frames", "mel"), "extract it with --keep-inputs")
            models["student"] = load_student(student)
        if teacher:
            require_arrays(store, ("clips",), "extract it with --keep-clips")
            models["teacher"] = load_teacher(teacher)
        for name, (model, rec) in models.items():
            model.eval()
            prov.setdefault("models", {})[name] = rec
        store.root.attrs["provenance"] = prov
        ids = store.video_ids()
        changed = 0
        for i, vid in enumerate(ids):
            attrs = store.video_attrs(vid)
            vprov = attrs.get("provenance", {})
            todo = [n for n in models if vprov.get("models", {}).get(n, {}).get("sha256") != models[n][1]["sha256"]]
            if todo:
                video = store.read_video(vid)
                arrays = dict(video.arrays)
                if "student" in todo:
                    feats = student_features(models["student"][0], video["frames"], video["mel"],
                                             bool(attrs.get("has_audio")))
                    for n, v in feats.items():
                        if n in arrays:
                            arrays[n] = v.astype(np.float16)
                if "teacher" in todo:
                    z_v, logits = _batched(models["teacher"][0], video["clips"], batch=8)
                    arrays["r2p1d"], arrays["r2p1d_logits"] = z_v.astype(np.float16), logits.astype(np.float16)
                for n in todo:
                    vprov.setdefault("models", {})[n] = models[n][1]
                attrs.pop("complete", None)
                store.replace_video(vid, arrays, {**attrs, "provenance": vprov})
                changed += 1
            if progress:
                progress(i + 1, len(ids))
    return changed

