"""``fs train-head``: the per-step classifier the baselines average, trained on the training split's steps."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from featurestore.store import FeatureStore
from models.heads import StepClassifier
from pipelines.data import load_checkpoint, load_split, save_checkpoint
from pipelines.train import fit, index_batches

FEATURE_DIMS = {"fused": 512, "r2p1d": 512, "image": 256, "audio": 256}


def fit_step_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int, batch_size: int, lr: float,
                        milestones: tuple[int, ...], seed: int, report: Callable[[dict], None] | None = None
                        ) -> tuple[StepClassifier, list[dict]]:
    """A :class:`StepClassifier` fitted on rows ``x`` (steps) with labels ``y``; SGD Nesterov, step decay."""
    torch.manual_seed(seed)
    head = StepClassifier(x.shape[1], num_classes)

    def loss_fn(idx):
        logits = head(x[idx])
        return F.cross_entropy(logits, y[idx]), logits, y[idx]

    history = fit(head, index_batches(len(x), batch_size), loss_fn, epochs, lr, milestones, seed, report)
    return head.eval(), history


def train_head(store: FeatureStore, out: Path, features: str = "fused", epochs: int = 15, batch_size: int = 256,
               lr: float = 0.01, milestones: tuple[int, ...] = (10,), seed: int = 0,
               report: Callable[[dict], None] | None = None) -> tuple[StepClassifier, list[dict]]:
    """Every training step labelled with its video's label; SGD Nesterov. Saves a checkpoint at ``out``."""
    if features not in FEATURE_DIMS:
        raise ValueError(f"--features must be one of {', '.join(FEATURE_DIMS)}")
    data = load_split(store, "train", (features,))
    x = torch.cat(data.tensors(features))
    y = torch.cat([torch.full((len(v.arrays[features]),), int(lab)) for v, lab in zip(data.videos, data.labels)])
    head, history = fit_step_classifier(x, y, len(data.classes), epochs, batch_size, lr, milestones, seed, report)
    save_checkpoint(out, "head", head, store, {"features": features, "in_dim": FEATURE_DIMS[features],
                                                "num_classes": len(data.classes)}, history)
    return head, history


def load_head(store: FeatureStore, path: Path) -> tuple[StepClassifier, dict]:
    ckpt = load_checkpoint(path, "head", store)
    head = StepClassifier(ckpt["config"]["in_dim"], ckpt["config"]["num_classes"])
    head.load_state_dict(ckpt["state_dict"])
    return head.eval(), ckpt["config"]


def step_head(store: FeatureStore, runs: Path, features: str, say: Callable[[str], None] = print) -> StepClassifier:
    """The per-step head on ``features`` from ``runs``, trained with the defaults on first use."""
    path = runs / f"head-{features}.pt"
    if not path.is_file():
        say(f"no per-step head at {path}: training it now (fs train-head --features {features})")
        train_head(store, path, features)
    return load_head(store, path)[0]
