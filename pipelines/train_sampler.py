"""``fs train-sampler``: SCSampler's light rankers trained on stored descriptors.

The clip classifier f whose scores define the SAL-CL / SAL-RANK pseudo-labels is the R(2+1)D-18 head over the
stored ``r2p1d`` descriptors, fitted on the training split (``fs train-head --features r2p1d``; trained here on first
use): the teacher's own logits are over Kinetics classes, not the dataset's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from featurestore.constants import FEATURE_DIMS, MODALITY_FEATURE
from featurestore.store import FeatureStore, StoreError
from models.scsampler import JointSampler, SaliencySampler, sal_cl_loss, sal_rank_loss
from pipelines.checkpoints import load_model, save_checkpoint
from pipelines.data import load_split
from pipelines.train import fit, minibatches
from pipelines.train_head import step_head


def clip_classifier(store: FeatureStore, runs: Path, say: Callable[[str], None] = print):
    """f: the R(2+1)D head on stored ``r2p1d`` descriptors (trained on first use)."""
    if "r2p1d" not in store.attrs.get("descriptors", []):
        raise StoreError(f"store {store.path} has no r2p1d descriptors: SCSampler's clip classifier f needs them "
                         f"(fs extract --descriptors image,audio,fused,r2p1d)")
    return step_head(store, runs, "r2p1d", say)


def modalities(modality: str) -> list[str]:
    """The modalities a sampler reads: av (AV-joint-training) reads both."""
    mods = ["visual", "audio"] if modality == "av" else [modality]
    if any(m not in MODALITY_FEATURE for m in mods):
        raise ValueError("--modality must be audio, visual or av")
    return mods


def build_sampler(modality: str, loss: str, num_classes: int) -> torch.nn.Module:
    """One :class:`SaliencySampler` per modality read, joined for av."""
    samplers = [SaliencySampler(FEATURE_DIMS[MODALITY_FEATURE[m]], loss, num_classes) for m in modalities(modality)]
    return JointSampler(*samplers) if modality == "av" else samplers[0]


def checkpoint_name(modality: str, loss: str) -> str:
    return f"sampler-{modality}-{loss}"


def train_sampler(store: FeatureStore, runs: Path, modality: str, loss: str, margin: float = 1.0,
                  epochs: int = 15, batch_size: int = 16, lr: float = 0.01, milestones: tuple[int, ...] = (10,),
                  seed: int = 0, report: Callable[[dict], None] | None = None,
                  say: Callable[[str], None] = print) -> tuple[torch.nn.Module, list[dict]]:
    """Train one sampler (``modality`` visual, audio, or av = AV-joint-training) with ``loss``; batches are videos,
    since SAL-CL labels and SAL-RANK pairs are defined within a video."""
    feats = tuple(MODALITY_FEATURE[m] for m in modalities(modality))
    data = load_split(store, "train", feats + ("r2p1d",))
    f = clip_classifier(store, runs, say)
    with torch.no_grad():
        f_true = [F.softmax(f(z), 1)[:, int(y)] for z, y in zip(data.tensors("r2p1d"), data.labels)]
    seqs = {n: data.tensors(n) for n in feats}
    torch.manual_seed(seed)
    model = build_sampler(modality, loss, len(data.classes))

    def loss_fn(idx):
        idx = idx.tolist()
        outs = [model(*[seqs[n][j] for n in feats]) for j in idx]
        if loss == "ac":
            logits = torch.cat(outs)
            steps_y = torch.cat([torch.full((len(o),), int(data.labels[j])) for o, j in zip(outs, idx)])
            return F.cross_entropy(logits, steps_y), logits, steps_y
        if loss == "sal-cl":
            total = torch.stack([sal_cl_loss(o, f_true[j]) for o, j in zip(outs, idx)]).mean()
        else:
            total = torch.stack([sal_rank_loss(o, f_true[j], margin) for o, j in zip(outs, idx)]).mean()
        # "accuracy" for saliency losses: is the top-scored step one of f's top half for the true class?
        hits = torch.tensor([float(f_true[j][o.argmax()] >= f_true[j].median()) for o, j in zip(outs, idx)])
        return total, torch.stack([1 - hits, hits], 1), torch.ones(len(idx), dtype=torch.long)

    history = fit(model, minibatches(len(data.labels), batch_size), loss_fn, epochs, lr, milestones, seed, report)
    model.eval()
    save_checkpoint(runs, checkpoint_name(modality, loss), "sampler", model, store,
                    {"modality": modality, "loss": loss, "margin": margin, "num_classes": len(data.classes)}, history)
    return model, history


def load_sampler(store: FeatureStore, runs: Path, name: str) -> tuple[torch.nn.Module, dict]:
    return load_model(runs, name, "sampler", store,
                      lambda c: build_sampler(c["modality"], c["loss"], c["num_classes"]))
