"""``fs train-sampler``: SCSampler's light rankers trained on stored descriptors.

The clip classifier f whose scores define the SAL-CL / SAL-RANK pseudo-labels is the R(2+1)D-18 head over the
stored ``r2p1d`` descriptors, fitted on the training split (``fs train-head --features r2p1d``; trained here on first
use): the teacher's own logits are over Kinetics classes, not the dataset's. A store extracted without the teacher
(CPU users skip it) uses the student's per-step head on ``fused`` as f instead, and says so.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from featurestore.constants import ROW_WIDTHS, SIGNALS
from featurestore.store import FeatureStore, require_arrays
from models.scsampler import (JOINT_MODALITIES, MODALITY_FEATURE, JointSampler, SaliencySampler, k_tr_fraction,
                              modality_features, modality_parts, sal_cl_loss, sal_rank_loss)

log = logging.getLogger(__name__)

MODALITIES = tuple(MODALITY_FEATURE) + tuple(JOINT_MODALITIES)
"""What ``--modality`` may name: visual, audio, motion, spectrum, and the joint av (image + audio), av-motion (motion +
audio) and av-cheap (motion + spectrum)."""
from pipelines.checkpoints import checkpoint_path, load_model, save_checkpoint
from pipelines.data import load_split, resolve_device
from pipelines.train import Trained, fit, minibatches, sized_schedule
from pipelines.train_head import step_head


def clip_feature(store: FeatureStore) -> str:
    """The stored descriptor SCSampler's clip classifier f reads: ``r2p1d``, else ``fused``."""
    return "r2p1d" if store.has_descriptor("r2p1d") else "fused"


def clip_classifier(store: FeatureStore, runs: Path, say: Callable[[str], None] = log.info):
    """f: the R(2+1)D head on stored ``r2p1d`` descriptors, or the student's head on ``fused`` in a store without
    them (trained on first use)."""
    return step_head(store, runs, clip_feature(store), say)


def modalities(modality: str) -> list[str]:
    """The modalities a sampler reads: av, av-motion and av-cheap (AV-joint-training) read two."""
    if modality not in MODALITIES:
        raise ValueError(f"--modality must be one of {', '.join(MODALITIES)}")
    return list(modality_parts(modality))


def feature_width(feature: str) -> int:
    """The row width of a stored array a sampler reads: a descriptor's, or a signal's (motion, spectrum)."""
    return ROW_WIDTHS[feature]


def build_sampler(modality: str, loss: str, num_classes: int) -> torch.nn.Module:
    """One :class:`SaliencySampler` per modality read, joined for the joint modalities."""
    samplers = [SaliencySampler(feature_width(MODALITY_FEATURE[m]), loss, num_classes) for m in modalities(modality)]
    return JointSampler(*samplers) if modality in JOINT_MODALITIES else samplers[0]


def checkpoint_name(modality: str, loss: str) -> str:
    return f"sampler-{modality}-{loss}"


def train_sampler(store: FeatureStore, runs: Path, modality: str, loss: str, margin: float = 1.0,
                  epochs: int = 15, batch_size: int = 16, lr: float = 0.01, milestones: tuple[int, ...] = (10,),
                  seed: int = 0, report: Callable[[dict], None] | None = None,
                  say: Callable[[str], None] = log.info, sized: bool = True, device: str = "auto",
                  k_tr: float | None = None) -> Trained:
    """Train one sampler (``modality`` visual, audio, motion, spectrum, or av / av-motion / av-cheap =
    AV-joint-training of a visual side, the image descriptor's or the motion signal's sampler, and an audio side, the
    audio descriptor's or the spectrum signal's) with ``loss``; batches are videos, since SAL-CL labels and
    SAL-RANK pairs are defined within a video, and the sampler runs once over all steps of a batch's videos (its
    BatchNorm sees the same mix of videos in training as its running statistics will hold). AV-joint-training
    starts from the trained samplers of its two parts with the same loss (trained first when missing) and
    fine-tunes both through their averaged output. SAL-CL labels the top ``k_tr`` of each video's steps salient
    (None: :func:`~models.scsampler.k_tr_fraction`, L/4 for audio and spectrum, L/2 otherwise, as SCSampler App.
    C.1 finds best); the fraction used is recorded in the checkpoint's config."""
    modalities(modality)
    k_tr = k_tr_fraction(modality) if k_tr is None else float(k_tr)
    if not 0.0 < k_tr <= 1.0:
        raise ValueError(f"--k-tr must be a fraction in (0, 1], got {k_tr}")
    feats = modality_features(modality)
    require_arrays(store, tuple(f for f in feats if f in SIGNALS), "a store built before the signal arrays lacks "
                   "them: re-extract into a new store (fs extract --store NEW)")
    f_feature = clip_feature(store)
    device = resolve_device(device)
    data = load_split(store, "train", feats + (f_feature,), device)
    if f_feature != "r2p1d" and loss != "ac":
        say(f"store {store.path} has no r2p1d descriptors: SCSampler's clip classifier f is the student's per-step "
            f"head on fused (extract with --descriptors ...,r2p1d for the R(2+1)D head)")
    f = clip_classifier(store, runs, say).to(device)
    with torch.no_grad():
        f_true = [F.softmax(f(z), 1)[:, int(y)] for z, y in zip(data.tensors(f_feature), data.labels)]
    f.cpu()
    seqs = {n: data.tensors(n) for n in feats}
    torch.manual_seed(seed)
    if modality in JOINT_MODALITIES:
        parts = []
        for m in modalities(modality):
            if not checkpoint_path(runs, checkpoint_name(m, loss)).is_file():
                say(f"AV-joint-training starts from the {m} sampler: training it first (fs train-sampler "
                    f"--modality {m} --loss {loss})")
                train_sampler(store, runs, m, loss, margin, epochs, batch_size, lr, milestones, seed, None, say, sized,
                              device)
            parts.append(load_sampler(store, runs, checkpoint_name(m, loss))[0])
        model = JointSampler(*parts)
    else:
        model = build_sampler(modality, loss, len(data.classes))
    model.to(device)
    labels = data.labels.to(device)
    sched = sized_schedule(len(data.labels), batch_size, epochs, milestones, sized)

    def loss_fn(idx):
        idx = idx.tolist()
        lengths = [len(seqs[feats[0]][j]) for j in idx]
        out = model(*[torch.cat([seqs[n][j] for j in idx]) for n in feats])      # one pass: BN over the batch
        outs = list(torch.split(out, lengths))
        if loss == "ac":
            steps_y = torch.cat([torch.full((n,), int(data.labels[j]), device=labels.device)
                                 for n, j in zip(lengths, idx)])
            return F.cross_entropy(out, steps_y), out, steps_y
        if loss == "sal-cl":
            total = torch.stack([sal_cl_loss(o, f_true[j], k_tr) for o, j in zip(outs, idx)]).mean()
        else:
            total = torch.stack([sal_rank_loss(o, f_true[j], margin) for o, j in zip(outs, idx)]).mean()
        # "accuracy" for saliency losses: is the top-scored step one of f's top half for the true class?
        hits = torch.tensor([float(f_true[j][o.argmax()] >= f_true[j].median()) for o, j in zip(outs, idx)])
        return total, torch.stack([1 - hits, hits], 1), torch.ones(len(idx), dtype=torch.long)

    history = fit(model, minibatches(data.order, sched.batch_size), loss_fn, sched.epochs, lr, sched.milestones,
                  seed, report)
    model.eval().cpu()
    path = save_checkpoint(runs, checkpoint_name(modality, loss), "sampler", model, store,
                           {"modality": modality, "loss": loss, "margin": margin, "num_classes": len(data.classes),
                            "clip_classifier": f_feature, "k_tr": k_tr if loss == "sal-cl" else None}, history)
    return Trained(model, history, path, sched)


def load_sampler(store: FeatureStore, runs: Path, name: str) -> tuple[torch.nn.Module, dict]:
    return load_model(runs, name, "sampler", store,
                      lambda c: build_sampler(c["modality"], c["loss"], c["num_classes"]))
