"""``fs train-head``: the per-step classifier the baselines average, trained on the training split's steps."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from featurestore.constants import FEATURE_DIMS
from featurestore.store import FeatureStore
from models.baselines import StepClassifier
from pipelines.checkpoints import checkpoint_path, load_model, save_checkpoint
from pipelines.data import SplitData, load_split, resolve_device, step_batches
from pipelines.train import Schedule, Trained, fit, minibatches, sized_schedule

log = logging.getLogger(__name__)


def checkpoint_name(features: str = "fused") -> str:
    return f"head-{features}"


def fit_step_classifier(x: torch.Tensor | SplitData, y: torch.Tensor | None, num_classes: int, epochs: int,
                        batch_size: int, lr: float, milestones: tuple[int, ...], seed: int,
                        report: Callable[[dict], None] | None = None, sized: bool = True,
                        features: str = "fused", device: str = "cpu") -> tuple[StepClassifier, list[dict], Schedule]:
    """A :class:`StepClassifier` fitted on rows ``x`` (steps) with labels ``y``, or on every step of a split's
    array ``features`` (``x`` a :class:`SplitData`, ``y`` None; streamed when it exceeds the read budget); SGD
    Nesterov, step decay, the schedule sized to the rows. Returns (head, history, schedule)."""
    torch.manual_seed(seed)
    if isinstance(x, SplitData):
        data = x
        if data.fits(float32_copy=True):
            x = torch.cat(list(data.tensors(features)))
            y = torch.cat([torch.full((int(n),), int(lab)) for n, lab in zip(data.n_steps, data.labels)])
    in_memory = isinstance(x, torch.Tensor)
    rows, width = (len(x), x.shape[1]) if in_memory else (int(data.n_steps.sum()), FEATURE_DIMS[features])
    head = StepClassifier(width, num_classes).to(device)
    sched = sized_schedule(rows, batch_size, epochs, milestones, sized)
    if in_memory:
        x, y = x.to(device), y.to(device)
        batches = minibatches(rows, sched.batch_size, lambda idx, gen: (x[idx], y[idx]))
    else:
        batches = step_batches(data, features, sched.batch_size)

    def loss_fn(xb, yb):
        logits = head(xb)
        return F.cross_entropy(logits, yb), logits, yb

    history = fit(head, batches, loss_fn, sched.epochs, lr, sched.milestones, seed, report)
    return head.eval().cpu(), history, sched


def train_head(store: FeatureStore, runs: Path, features: str = "fused", epochs: int = 15, batch_size: int = 256,
               lr: float = 0.01, milestones: tuple[int, ...] = (10,), seed: int = 0,
               report: Callable[[dict], None] | None = None, sized: bool = True, device: str = "auto") -> Trained:
    """Every training step labelled with its video's label; SGD Nesterov. Saves ``<runs>/head-<features>.pt``."""
    if features not in FEATURE_DIMS:
        raise ValueError(f"--features must be one of {', '.join(FEATURE_DIMS)}")
    device = resolve_device(device)
    data = load_split(store, "train", (features,), device)
    head, history, sched = fit_step_classifier(data, None, len(data.classes), epochs, batch_size, lr, milestones, seed,
                                               report, sized, features, device)
    path = save_checkpoint(runs, checkpoint_name(features), "head", head, store,
                           {"features": features, "in_dim": FEATURE_DIMS[features], "num_classes": len(data.classes)},
                           history)
    return Trained(head, history, path, sched)


def load_head(store: FeatureStore, runs: Path, features: str = "fused") -> tuple[StepClassifier, dict]:
    return load_model(runs, checkpoint_name(features), "head", store,
                      lambda c: StepClassifier(c["in_dim"], c["num_classes"]))


def step_head(store: FeatureStore, runs: Path, features: str, say: Callable[[str], None] = log.info) -> StepClassifier:
    """The per-step head on ``features`` from ``runs``, trained with the defaults on first use."""
    path = checkpoint_path(runs, checkpoint_name(features))
    if not path.is_file():
        say(f"no per-step head at {path}: training it now (fs train-head --features {features})")
        train_head(store, runs, features)
    return load_head(store, runs, features)[0]
