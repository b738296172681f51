"""``fs train-avgn``: AV-TeST (AVGN's temporal glance) trained on stored image and audio descriptors."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from featurestore.store import FeatureStore
from models.avgn import AVTeST, avgn_losses, sample_steps
from pipelines.checkpoints import load_model, save_checkpoint
from pipelines.data import load_split, resolve_device
from pipelines.train import Trained, fit, minibatches, sized_schedule


def checkpoint_name(audio_tokens: bool = True, mask_loss: bool = True) -> str:
    return "avgn" + ("" if audio_tokens else "-no-audio") + ("" if mask_loss else "-no-mask")


TRAIN_GLANCES = 12     # the paper's T_G ("set to 12 unless stated otherwise"): batches draw 1..12 visible glances


def training_glances(t: int) -> tuple[int, ...]:
    """The T_G a training batch draws from, uniformly: 1..12 glances of the ``t`` sampled steps (the paper's T_G) and
    all ``t`` of them, the bench's headline T_G = all (the paper's Table 3 evaluates T_G = 16 of its 16 pairs), so
    the row is read off a number of glances the model was trained on (all t: no mask token, no L_mask)."""
    if t < 1:
        raise ValueError(f"AVGN samples at least one step, got t={t}")
    return tuple(range(1, min(TRAIN_GLANCES, t) + 1)) + ((t,) if t > TRAIN_GLANCES else ())


def draw_glances(t: int, generator: torch.Generator) -> int:
    """One batch's T_G, uniform over :func:`training_glances`."""
    glances = training_glances(t)
    return glances[int(torch.randint(len(glances), (1,), generator=generator))]


def train_avgn(store: FeatureStore, runs: Path, layers: int = 2, heads: int = 4, dim: int = 128, t: int = 16,
               k: int = 4, epochs: int = 30, batch_size: int = 16, lr: float = 1e-3,
               milestones: tuple[int, ...] = (20,),
               audio_tokens: bool = True, mask_loss: bool = True, seed: int = 0,
               report: Callable[[dict], None] | None = None, sized: bool = True, device: str = "auto") -> Trained:
    """Sum of AVGN's losses (L_p, L_V, L_A, L_s, L_mask, L_ord). Each batch draws T_G uniformly from 1..12 (the
    paper's T_G) and all t (:func:`training_glances`), so one model serves every number of glances the bench reads,
    T_G = all included; the stored descriptors are
    standardised with the training split's statistics; the schedule is sized to the split. Saves
    ``<runs>/<checkpoint_name(...)>.pt``."""
    device = resolve_device(device)
    data = load_split(store, "train", ("image", "audio"), device)
    images, audios = data.tensors("image"), data.tensors("audio")
    torch.manual_seed(seed)
    model = AVTeST(len(data.classes), dim=dim, layers=layers, heads=heads, max_len=t, use_audio_tokens=audio_tokens)
    model.norm_g.set_moments(*data.moments("image"))
    model.norm_a.set_moments(*data.moments("audio"))
    model.to(device)
    labels = data.labels.to(device)
    sched = sized_schedule(len(images), batch_size, epochs, milestones, sized)

    def collate(idx, gen):
        idx = idx.tolist()
        picks = [sample_steps(len(images[j]), t, gen) for j in idx]
        e_g = torch.stack([images[j][p] for j, p in zip(idx, picks)])
        e_a = torch.stack([audios[j][p] for j, p in zip(idx, picks)])
        t_g = draw_glances(t, gen)
        return e_g, e_a, labels[idx], t_g

    def loss_fn(e_g, e_a, y, t_g):
        losses = avgn_losses(model, e_g, e_a, y, t_g, k, use_mask_loss=mask_loss)
        with torch.no_grad():
            logits = model.classify(e_g, e_a)
        return sum(losses.values()), logits, y

    history = fit(model, minibatches(data.order, sched.batch_size, collate), loss_fn, sched.epochs, lr,
                  sched.milestones, seed, report, optimizer="adamw")
    model.eval().cpu()
    path = save_checkpoint(runs, checkpoint_name(audio_tokens, mask_loss), "avgn", model, store,
                           {"num_classes": len(data.classes), "dim": dim, "layers": layers, "heads": heads, "t": t,
                            "k": k, "audio_tokens": audio_tokens, "mask_loss": mask_loss, "epochs": sched.epochs,
                            "batch_size": sched.batch_size, "train_glances": list(training_glances(t))}, history)
    return Trained(model, history, path, sched)


def build_avgn(c: dict) -> AVTeST:
    """AV-TeST as a checkpoint's config describes it."""
    return AVTeST(c["num_classes"], dim=c["dim"], layers=c["layers"], heads=c["heads"], max_len=c["t"],
                  use_audio_tokens=c["audio_tokens"])


def load_avgn(store: FeatureStore, runs: Path, name: str = "avgn") -> tuple[AVTeST, dict]:
    return load_model(runs, name, "avgn", store, build_avgn)
