"""``fs train-head``: the per-step classifier the baselines average, trained on the training split's steps."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from featurestore.constants import FEATURE_DIMS
from featurestore.store import FeatureStore
from models.baselines import StepClassifier
from pipelines.checkpoints import checkpoint_path, load_model, save_checkpoint
from pipelines.data import load_split
from pipelines.train import Schedule, Trained, fit, minibatches, sized_schedule


def checkpoint_name(features: str = "fused") -> str:
    return f"head-{features}"


def fit_step_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int, batch_size: int, lr: float,
                        milestones: tuple[int, ...], seed: int, report: Callable[[dict], None] | None = None,
                        sized: bool = True) -> tuple[StepClassifier, list[dict], Schedule]:
    """A :class:`StepClassifier` fitted on rows ``x`` (steps) with labels ``y``; SGD Nesterov, step decay, the
    schedule sized to the rows. Returns (head, history, schedule)."""
    torch.manual_seed(seed)
    head = StepClassifier(x.shape[1], num_classes)
    sched = sized_schedule(len(x), batch_size, epochs, milestones, sized)

    def loss_fn(idx):
        logits = head(x[idx])
        return F.cross_entropy(logits, y[idx]), logits, y[idx]

    history = fit(head, minibatches(len(x), sched.batch_size), loss_fn, sched.epochs, lr, sched.milestones, seed,
                  report)
    return head.eval(), history, sched


def train_head(store: FeatureStore, runs: Path, features: str = "fused", epochs: int = 15, batch_size: int = 256,
               lr: float = 0.01, milestones: tuple[int, ...] = (10,), seed: int = 0,
               report: Callable[[dict], None] | None = None, sized: bool = True) -> Trained:
    """Every training step labelled with its video's label; SGD Nesterov. Saves ``<runs>/head-<features>.pt``."""
    if features not in FEATURE_DIMS:
        raise ValueError(f"--features must be one of {', '.join(FEATURE_DIMS)}")
    data = load_split(store, "train", (features,))
    x = torch.cat(data.tensors(features))
    y = torch.cat([torch.full((len(v.arrays[features]),), int(lab)) for v, lab in zip(data.videos, data.labels)])
    head, history, sched = fit_step_classifier(x, y, len(data.classes), epochs, batch_size, lr, milestones, seed,
                                               report, sized)
    path = save_checkpoint(runs, checkpoint_name(features), "head", head, store,
                           {"features": features, "in_dim": FEATURE_DIMS[features], "num_classes": len(data.classes)},
                           history)
    return Trained(head, history, path, sched)


def load_head(store: FeatureStore, runs: Path, features: str = "fused") -> tuple[StepClassifier, dict]:
    return load_model(runs, checkpoint_name(features), "head", store,
                      lambda c: StepClassifier(c["in_dim"], c["num_classes"]))


def step_head(store: FeatureStore, runs: Path, features: str, say: Callable[[str], None] = print) -> StepClassifier:
    """The per-step head on ``features`` from ``runs``, trained with the defaults on first use."""
    path = checkpoint_path(runs, checkpoint_name(features))
    if not path.is_file():
        say(f"no per-step head at {path}: training it now (fs train-head --features {features})")
        train_head(store, runs, features)
    return load_head(store, runs, features)[0]
