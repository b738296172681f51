"""``fs train-head``: the per-step classifier the baselines average, trained on the training split's steps."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from featurestore.store import FeatureStore
from models.heads import StepClassifier
from pipelines.data import load_split, save_checkpoint
from pipelines.train import fit

FEATURE_DIMS = {"fused": 512, "r2p1d": 512, "image": 256, "audio": 256}


def train_head(store: FeatureStore, out: Path, features: str = "fused", epochs: int = 15, batch_size: int = 256,
               lr: float = 0.01, milestones: tuple[int, ...] = (10,), seed: int = 0,
               report: Callable[[dict], None] | None = None) -> tuple[StepClassifier, list[dict]]:
    """Every training step labelled with its video's label; SGD Nesterov. Saves a checkpoint at ``out``."""
    if features not in FEATURE_DIMS:
        raise ValueError(f"--features must be one of {', '.join(FEATURE_DIMS)}")
    data = load_split(store, "train", (features,))
    x = torch.cat(data.tensors(features))
    y = torch.cat([torch.full((len(v.arrays[features]),), int(lab)) for v, lab in zip(data.videos, data.labels)])
    torch.manual_seed(seed)
    head = StepClassifier(FEATURE_DIMS[features], len(data.classes))

    def batches(gen):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            if len(idx) > 1:
                yield x[idx], y[idx]

    def loss_fn(xb, yb):
        logits = head(xb)
        return F.cross_entropy(logits, yb), logits, yb

    history = fit(head, batches, loss_fn, epochs, lr, milestones, seed, report)
    head.eval()
    save_checkpoint(out, "head", head, store, {"features": features, "in_dim": FEATURE_DIMS[features],
                                                "num_classes": len(data.classes)}, history)
    return head, history


def load_head(store: FeatureStore, path: Path) -> tuple[StepClassifier, dict]:
    from pipelines.data import load_checkpoint
    ckpt = load_checkpoint(path, "head", store)
    head = StepClassifier(ckpt["config"]["in_dim"], ckpt["config"]["num_classes"])
    head.load_state_dict(ckpt["state_dict"])
    return head.eval(), ckpt["config"]
