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


SKIMMERS = ("skim", "skim-visual", "skim-single")   # the recurrent skimmer family: the models --protocol applies to
PROTOCOLS = ("paper", "fs")
DEFAULT_PROTOCOL = "paper"
"""The skimmers' training protocol. ``paper``, the documented reproduction: Listen to Look §3.3 optimises "for a fixed
number of T steps during training" (the cross-entropy of Eq. 9's m_T only) and treats early stopping and sparse
indexing features as inference-time options; one subsampling factor s for the whole run (PAPER_SUBSAMPLE unless
asked: the authors' released command trains with --subsample_factor 1); BatchNorm statistics of m_T alone.
``fs``, fs's earlier recipe: prefix losses m_1..m_{T-1} beside m_T (early stopping), s drawn from TRAIN_SUBSAMPLE per
batch (sparse features), BatchNorm statistics of m_T and the prefix means alike. Saved as ``<model>-fs.pt`` beside
the paper's ``<model>.pt`` (:func:`checkpoint_name`)."""
PAPER_SUBSAMPLE = 1
TRAIN_SUBSAMPLE = (1, 2, 5, 10)   # the fs protocol's s, drawn per batch: the skimmer learns sparse features too
FS_SUFFIX = "-fs"


def checkpoint_name(model: str, protocol: str = DEFAULT_PROTOCOL) -> str:
    """``<model>`` for the paper's protocol and the baselines (lstm, non-recurrent: one recipe each), ``<model>-fs``
    for a skimmer trained with the fs protocol: both protocols' checkpoints coexist in one runs folder."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return model + FS_SUFFIX if protocol == "fs" and model in SKIMMERS else model


def checkpoint_model(name: str) -> tuple[str, str | None]:
    """(model, protocol its name stands for; None for a baseline) of a checkpoint name from :func:`checkpoint_name`."""
    if name.endswith(FS_SUFFIX) and name[:-len(FS_SUFFIX)] in SKIMMERS:
        return name[:-len(FS_SUFFIX)], "fs"
    if name not in SKIM_MODELS:
        raise ValueError(f"{name!r} is not a train-skim checkpoint name ({', '.join(SKIM_MODELS)}, or a skimmer's "
                         f"name + {FS_SUFFIX!r})")
    return name, DEFAULT_PROTOCOL if name in SKIMMERS else None


def train_command(name: str) -> str:
    """The ``fs train-skim`` command that writes checkpoint ``name``."""
    model, protocol = checkpoint_model(name)
    return f"fs train-skim --model {model}" + (" --protocol fs" if protocol == "fs" else "")


def checkpoint_note(name: str, config: dict) -> str | None:
    """A line for the bench when checkpoint ``name`` was trained otherwise than its name now means: a skimmer
    written before --protocol (the fs protocol, under the paper's name), a NON-RECURRENT trained with T = 2."""
    model, protocol = checkpoint_model(name)
    if protocol is not None and config.get("protocol", "fs") != protocol:
        return (f"note: {name}.pt was trained with the {config.get('protocol', 'fs')} protocol, its rows are labelled "
                f"as the {protocol} protocol's: retrain it ({train_command(name)})")
    if model == "non-recurrent" and "objective" not in config:
        return (f"note: {name}.pt was trained with T = 2, not on the top-{BUDGET} input it is evaluated on: retrain "
                f"it ({train_command(name)})")
    return None
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


def skim_loss(net: ImgAudSkimmer, model: str, feats: list[torch.Tensor], real: list[torch.Tensor],
              mask: torch.Tensor, y: torch.Tensor, steps: int, prefixes: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits of m_T) of a skimmer (``model`` in SKIMMERS) skimming T = ``steps`` over indexing features
    ``feats`` (the real ``real`` looked up at chosen steps): the cross-entropy of m_T (Eq. 9), plus with ``prefixes``
    (the fs protocol) the mean cross-entropy of every shorter prefix m_1..m_{T-1}, classified by the same layer."""
    if model == "skim-single":
        out = net(None, None, mask, steps, z_fused=feats[0], lookup=real)
    else:
        out = net(feats[0], feats[1], mask, steps, lookup=real)
    loss = F.cross_entropy(out.logits, y)
    if prefixes and steps > 1:
        means = out.prefix_means()[:, :-1]
        prefix_logits = net.classify(means.reshape(-1, means.shape[-1]))
        loss = loss + F.cross_entropy(prefix_logits, y.repeat_interleave(means.shape[1]))
    return loss, out.logits


def train_skim(store: FeatureStore, runs: Path, model: str = "skim", epochs: int = 25, batch_size: int = 256,
               lr: float = 1e-2, milestones: tuple[int, ...] = (15, 20), steps: int = 10,
               finetune_fusion: bool = False, device: str = "auto", seed: int = 0,
               report: Callable[[dict], None] | None = None, sized: bool = True,
               protocol: str = DEFAULT_PROTOCOL, subsample: int | None = None) -> Trained:
    """Train on the training split and save ``<runs>/<checkpoint_name(model, protocol)>.pt``; videos of different
    length are padded and masked, never truncated, and batched with videos of similar length
    (:func:`~pipelines.train.similar_length_batches`). The schedule is sized to the split
    (:func:`~pipelines.train.sized_schedule`) unless ``sized`` is False.

    The skimmer keeps the student's Psi frozen (as the authors' release) unless ``finetune_fusion``. A skimmer
    (SKIMMERS) trains under ``protocol`` (see DEFAULT_PROTOCOL): ``paper``, the cross-entropy of m_T alone with T =
    ``steps`` and indexing features subsampled by ``subsample`` (default PAPER_SUBSAMPLE) in every batch; ``fs``, each
    batch draws s from TRAIN_SUBSAMPLE (``subsample`` is refused) and the loss adds the prefixes' (:func:`skim_loss`).
    The final BatchNorm recalibration runs the same loss, so its statistics are m_T's under ``paper`` and m_T's and
    the prefixes' under ``fs``. The protocol is recorded in the checkpoint's config. NON-RECURRENT is trained on the
    input it is evaluated on
    (:func:`~models.skim.non_recurrent`): Psi averaged over the real features at the BUDGET steps of largest
    first-query attention, the gradient reaching the attention through a straight-through soft top-k; its indexing
    features are never subsampled (the bench reads them all). The LSTM baseline clips its gradient norm at 5.
    """
    name = checkpoint_name(model, protocol)
    skimmer = model in SKIMMERS                  # the recurrent skimmers: the protocol applies
    if subsample is not None and subsample < 1:
        raise ValueError(f"--subsample must be >= 1, got {subsample}")
    if skimmer and protocol == "fs" and subsample is not None:
        raise ValueError(f"the fs protocol draws s from {', '.join(map(str, TRAIN_SUBSAMPLE))} per batch; "
                         f"--subsample fixes s under --protocol paper")
    draws = (TRAIN_SUBSAMPLE if protocol == "fs" else (subsample or PAPER_SUBSAMPLE,)) if skimmer else (1,)
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

    width = sum(FEATURE_DIMS[n] for n in names)

    def part(idx: list[int], s: int) -> tuple:
        padded = [data.padded(n, idx) for n in names]
        lengths = padded[0][1].sum(1)
        feats = [p[0] for p in padded]
        indexing = [interpolate_padded(z, lengths, s) for z in feats] if s > 1 else feats
        return feats, indexing, padded[0][1], labels[idx]

    def collate(idx, gen):
        idx = idx.tolist()
        s = draws[int(torch.randint(len(draws), (1,), generator=gen))] if len(draws) > 1 else draws[0]
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
        loss, logits = skim_loss(net, model, feats, real, mask, y, t_steps, prefixes=protocol == "fs")
        return loss, logits, y

    batches = similar_length_batches(data.windows, data.n_steps, sched.batch_size, collate)
    history = fit(net, batches, loss_fn, sched.epochs, lr, sched.milestones, seed, report,
                  clip_grad=None if model != "lstm" else 5.0)
    net.eval().cpu()
    path = save_checkpoint(runs, name, model, net, store,
                           {"model": model, "protocol": protocol if skimmer else None, "prefix_loss":
                            skimmer and protocol == "fs", "steps": t_steps, "num_classes": len(data.classes),
                            "finetune_fusion": finetune_fusion, "epochs": sched.epochs,
                            "batch_size": sched.batch_size, "lr": lr, "milestones": list(sched.milestones),
                            "train_subsample": list(draws),
                            **({"objective": "top-k mean, straight-through"} if model == "non-recurrent" else {})},
                           history)
    return Trained(net, history, path, sched)


def load_skim_model(store: FeatureStore, runs: Path, name: str) -> tuple[torch.nn.Module, dict]:
    """A trained skimmer / baseline ``<runs>/<name>.pt`` (``name`` from :func:`checkpoint_name`: a model, or a
    skimmer's name + ``-fs``), refused when trained on a store that does not match."""
    model, _ = checkpoint_model(name)
    return load_model(runs, name, model, store,
                      lambda c: build_skim_model(model, student_fusion(store), c["num_classes"]))
