"""``fs train-skim``: ImgAud-Skimming (and the LSTM / NON-RECURRENT baselines) trained on stored features only."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from featurestore.constants import FEATURE_DIMS
from featurestore.store import FeatureStore
from models.baselines import LSTMBaseline
from models.imgaud import Fusion
from models.selection import BUDGET
from models.skim import ImgAudSkimmer, interpolate_padded, non_recurrent
from pipelines.checkpoints import load_model, save_checkpoint
from pipelines.data import load_split, resolve_device, student_fusion
from pipelines.train import MicroBatches, Trained, fit, similar_length_batches, sized_schedule

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


TRAIN_SUBSAMPLE = (1, 2, 5, 10)   # indexing-feature subsampling drawn per batch: the skimmer learns sparse features too
CPU_PART_ELEMENTS = 16 << 20   # on the CPU a batch goes forward in parts of at most 16 M padded feature values


def micro_batches(idx: list[int], n_steps, width: int, device: str) -> list[list[int]]:
    """``idx`` cut into consecutive parts whose padded features (rows x longest video x ``width``) stay under
    CPU_PART_ELEMENTS on the CPU, so that the activations of a batch of 256 five-minute videos fit a small machine;
    one part on a GPU. No part holds a single video (its BatchNorm statistics would be undefined)."""
    if device.startswith("cuda"):
        return [idx]
    parts, cur, longest = [], [], 0
    for j in idx:
        n = int(n_steps[j])
        if cur and (len(cur) + 1) * max(longest, n) * width > CPU_PART_ELEMENTS:
            parts.append(cur)
            cur, longest = [], 0
        cur.append(j)
        longest = max(longest, n)
    parts.append(cur)
    if len(parts) > 1 and len(parts[-1]) == 1:     # a part of one video cannot train BatchNorm: borrow or merge
        if len(parts[-2]) > 2:
            parts[-1].insert(0, parts[-2].pop())
        else:
            last = parts.pop()
            parts[-1] += last
    return parts


def train_skim(store: FeatureStore, runs: Path, model: str = "skim", epochs: int = 25, batch_size: int = 256,
               lr: float = 1e-2, milestones: tuple[int, ...] = (15, 20), steps: int = 10,
               finetune_fusion: bool = False, device: str = "auto", seed: int = 0,
               report: Callable[[dict], None] | None = None, sized: bool = True) -> Trained:
    """Train on the training split and save ``<runs>/<model>.pt``; videos of different length are padded and
    masked, never truncated, and batched with videos of similar length
    (:func:`~pipelines.train.similar_length_batches`). The schedule is sized to the split
    (:func:`~pipelines.train.sized_schedule`) unless ``sized`` is False.

    The skimmer keeps the student's Psi frozen (as the authors' release) unless ``finetune_fusion``; each batch
    draws its indexing features' subsampling factor from TRAIN_SUBSAMPLE (sparse features at inference), and the
    loss adds, to the cross-entropy of m over the T inputs (Eq. 9), the mean cross-entropy of every shorter prefix
    m_t (early stopping at inference). NON-RECURRENT is trained on the input it is evaluated on
    (:func:`~models.skim.non_recurrent`): Psi averaged over the real features at the BUDGET steps of largest
    first-query attention, the gradient reaching the attention through a straight-through soft top-k; its indexing
    features are never subsampled (the bench reads them all). The LSTM baseline clips its gradient norm at 5.
    """
    names = _needs(model)
    device = resolve_device(device)
    data = load_split(store, "train", names, device)
    torch.manual_seed(seed)
    fusion = student_fusion(store)
    net = build_skim_model(model, fusion, len(data.classes)).to(device)
    if not finetune_fusion:
        for p in fusion.parameters():
            p.requires_grad_(False)
    t_steps = BUDGET if model == "non-recurrent" else steps
    labels = data.labels.to(device)
    sched = sized_schedule(len(labels), batch_size, epochs, milestones, sized)
    skimmer = model not in ("lstm", "non-recurrent")      # the recurrent skimmers: sparse features, prefixes

    width = sum(FEATURE_DIMS[n] for n in names)

    def part(idx: list[int], s: int) -> tuple:
        padded = [data.padded(n, idx) for n in names]
        lengths = padded[0][1].sum(1)
        feats = [p[0] for p in padded]
        indexing = [interpolate_padded(z, lengths, s) for z in feats] if s > 1 else feats
        return feats, indexing, padded[0][1], labels[idx]

    def collate(idx, gen):
        idx = idx.tolist()
        s = TRAIN_SUBSAMPLE[int(torch.randint(len(TRAIN_SUBSAMPLE), (1,), generator=gen))] if skimmer else 1
        parts = micro_batches(idx, data.n_steps, width, device)
        if len(parts) == 1:
            return part(idx, s)
        return MicroBatches((part(p, s) for p in parts), len(idx))     # built one part at a time

    def loss_fn(real, feats, mask, y):
        if model == "lstm":
            logits = net(feats[0], mask)
            return F.cross_entropy(logits, y), logits, y
        if model == "non-recurrent":
            _, logits = non_recurrent(net, feats[0], feats[1], mask, t_steps, straight_through=torch.is_grad_enabled())
            return F.cross_entropy(logits, y), logits, y
        if model == "skim-single":
            out = net(None, None, mask, t_steps, z_fused=feats[0], lookup=real)
        else:
            out = net(feats[0], feats[1], mask, t_steps, lookup=real)
        loss = F.cross_entropy(out.logits, y)
        if t_steps > 1:
            prefixes = out.prefix_means()[:, :-1]
            prefix_logits = net.classify(prefixes.reshape(-1, prefixes.shape[-1]))
            loss = loss + F.cross_entropy(prefix_logits, y.repeat_interleave(prefixes.shape[1]))
        return loss, out.logits, y

    batches = similar_length_batches(data.windows, data.n_steps, sched.batch_size, collate)
    history = fit(net, batches, loss_fn, sched.epochs, lr, sched.milestones, seed, report,
                  clip_grad=None if model != "lstm" else 5.0)
    net.eval().cpu()
    path = save_checkpoint(runs, model, model, net, store,
                           {"model": model, "steps": t_steps, "num_classes": len(data.classes),
                            "finetune_fusion": finetune_fusion, "epochs": sched.epochs,
                            "batch_size": sched.batch_size, "lr": lr, "milestones": list(sched.milestones),
                            "train_subsample": list(TRAIN_SUBSAMPLE) if skimmer else [1],
                            **({"objective": "top-k mean, straight-through"} if model == "non-recurrent" else {})},
                           history)
    return Trained(net, history, path, sched)


def load_skim_model(store: FeatureStore, runs: Path, model: str) -> tuple[torch.nn.Module, dict]:
    """A trained skimmer / baseline ``<runs>/<model>.pt``, refused when trained on a store that does not match."""
    return load_model(runs, model, model, store,
                      lambda c: build_skim_model(model, student_fusion(store), c["num_classes"]))
