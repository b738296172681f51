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


TRAIN_GLANCES = 12     # the paper's T_G in training: each batch draws 1..12 visible glances of the T sampled steps


def train_avgn(store: FeatureStore, runs: Path, layers: int = 2, heads: int = 4, dim: int = 128, t: int = 16,
               k: int = 4, epochs: int = 30, batch_size: int = 16, lr: float = 1e-3,
               milestones: tuple[int, ...] = (20,),
               audio_tokens: bool = True, mask_loss: bool = True, seed: int = 0,
               report: Callable[[dict], None] | None = None, sized: bool = True, device: str = "auto") -> Trained:
    """Sum of AVGN's losses (L_p, L_V, L_A, L_s, L_mask, L_ord). Each batch draws T_G uniformly from 1..12 (the
    paper's T_G), so one model serves every number of glances at inference; the stored descriptors are
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
    max_glances = min(TRAIN_GLANCES, t)

    def collate(idx, gen):
        idx = idx.tolist()
        picks = [sample_steps(len(images[j]), t, gen) for j in idx]
        e_g = torch.stack([images[j][p] for j, p in zip(idx, picks)])
        e_a = torch.stack([audios[j][p] for j, p in zip(idx, picks)])
        t_g = int(torch.randint(1, max_glances + 1, (1,), generator=gen))
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
                            "batch_size": sched.batch_size, "train_glances": max_glances}, history)
    return Trained(model, history, path, sched)


def build_avgn(c: dict) -> AVTeST:
    """AV-TeST as a checkpoint's config describes it."""
    return AVTeST(c["num_classes"], dim=c["dim"], layers=c["layers"], heads=c["heads"], max_len=c["t"],
                  use_audio_tokens=c["audio_tokens"])


def load_avgn(store: FeatureStore, runs: Path, name: str = "avgn") -> tuple[AVTeST, dict]:
    return load_model(runs, name, "avgn", store, build_avgn)
