"""``fs train-skim``: ImgAud-Skimming (and the LSTM / NON-RECURRENT baselines) trained on stored features only."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from featurestore.store import FeatureStore
from models.baselines import LSTMBaseline
from models.imgaud import Fusion
from models.skim import ImgAudSkimmer
from pipelines.checkpoints import load_model, save_checkpoint
from pipelines.data import load_split, pad, student_fusion
from pipelines.train import fit, minibatches

# model name -> (indexing mode of the skimmer, or None for the LSTM baseline)
SKIM_MODELS = {"skim": "audio-visual", "skim-visual": "visual", "skim-single": "single",
               "non-recurrent": "audio-visual", "lstm": None}


def _needs(model: str) -> tuple[str, ...]:
    return ("fused",) if model in ("skim-single", "lstm") else ("image", "audio")


def build_skim_model(model: str, fusion: Fusion, num_classes: int) -> torch.nn.Module:
    if model not in SKIM_MODELS:
        raise ValueError(f"--model must be one of {', '.join(SKIM_MODELS)}")
    if model == "lstm":
        return LSTMBaseline(num_classes)
    return ImgAudSkimmer(fusion, num_classes, indexing=SKIM_MODELS[model])


def train_skim(store: FeatureStore, runs: Path, model: str = "skim", epochs: int = 25, batch_size: int = 256,
               lr: float = 1e-2, milestones: tuple[int, ...] = (15, 20), steps: int = 10, freeze_fusion: bool = False,
               device: str = "cpu", seed: int = 0, report: Callable[[dict], None] | None = None
               ) -> tuple[torch.nn.Module, list[dict]]:
    """Train on the training split and save ``<runs>/<model>.pt``; videos of different length are padded and
    masked, never truncated. NON-RECURRENT is the skimmer trained with a single query step (``steps`` is forced
    to 1)."""
    names = _needs(model)
    data = load_split(store, "train", names)
    torch.manual_seed(seed)
    fusion = student_fusion(store)
    net = build_skim_model(model, fusion, len(data.classes)).to(device)
    if freeze_fusion:
        for p in fusion.parameters():
            p.requires_grad_(False)
    t_steps = 1 if model == "non-recurrent" else steps
    seqs = {n: data.tensors(n) for n in names}
    labels = data.labels

    def collate(idx, gen):
        idx = idx.tolist()
        padded = [pad([seqs[n][j] for j in idx]) for n in names]
        return [p[0].to(device) for p in padded], padded[0][1].to(device), labels[idx].to(device)

    def loss_fn(feats, mask, y):
        if model == "lstm":
            logits = net(feats[0], mask)
        elif model == "skim-single":
            logits = net(None, None, mask, t_steps, z_fused=feats[0]).logits
        else:
            logits = net(feats[0], feats[1], mask, t_steps).logits
        return F.cross_entropy(logits, y), logits, y

    history = fit(net, minibatches(len(labels), batch_size, collate), loss_fn, epochs, lr, milestones, seed, report)
    net.eval().cpu()
    save_checkpoint(runs, model, model, net, store,
                    {"model": model, "steps": t_steps, "num_classes": len(data.classes), "freeze_fusion": freeze_fusion,
                     "epochs": epochs, "batch_size": batch_size, "lr": lr, "milestones": list(milestones)}, history)
    return net, history


def load_skim_model(store: FeatureStore, runs: Path, model: str) -> tuple[torch.nn.Module, dict]:
    """A trained skimmer / baseline ``<runs>/<model>.pt``, refused when trained on a store that does not match."""
    return load_model(runs, model, model, store,
                      lambda c: build_skim_model(model, student_fusion(store), c["num_classes"]))
