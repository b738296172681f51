"""``fs train-avgn``: AV-TeST (AVGN's temporal glance) trained on stored image and audio descriptors."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from featurestore.constants import MAP_DIM
from featurestore.store import FeatureStore
from models.avgn import AVTeST, avgn_losses, sample_steps
from pipelines.checkpoints import checkpoint_path, load_model, save_checkpoint
from pipelines.data import load_split, resolve_device, streamed_moments
from pipelines.train import Trained, fit, minibatches, sized_schedule

log = logging.getLogger(__name__)


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


def sampled_pairs(images, audios, idx: torch.Tensor, t: int, gen: torch.Generator):
    """A batch's t sampled steps per video in glance order (:func:`sample_steps`): (video indices, picks, e_g
    (B, t, image_dim), e_a (B, t, audio_dim))."""
    idx = idx.tolist()
    picks = [sample_steps(len(images[j]), t, gen) for j in idx]
    e_g = torch.stack([images[j][p] for j, p in zip(idx, picks)])
    e_a = torch.stack([audios[j][p] for j, p in zip(idx, picks)])
    return idx, picks, e_g, e_a


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
        idx, picks, e_g, e_a = sampled_pairs(images, audios, idx, t, gen)
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


SPATIAL_CHECKPOINTS = {"aespa": "avgn-spatial", "pi": "avgn-spatial-pi", "centre": "avgn-spatial-centre",
                       "random": "avgn-spatial-random"}
"""The checkpoint of each spatial-glance variant (Table 6's rows): AESPA + pi, pi alone, a centre or a random patch."""


def train_avgn_spatial(store: FeatureStore, runs: Path, spatial: str = "aespa", layers: int = 2, heads: int = 4,
                       dim: int = 128, t: int = 16, k: int = 4, epochs: int = 30, batch_size: int = 16,
                       lr: float = 1e-3, milestones: tuple[int, ...] = (20,), mask_loss: bool = True, seed: int = 0,
                       report: Callable[[dict], None] | None = None, sized: bool = True, device: str = "auto",
                       patch: int | None = None, freeze_temporal: bool = False) -> Trained:
    """AVGN with both glances (§3.1-3.4), trained from the store alone: per video t sampled steps (glance order)
    with their stored ``image``, ``audio``, ``image_map`` (e^G's map) and ``frames``; the spatial glance of kind
    ``spatial`` crops a P x P patch of each frame for f_L; every loss of the paper (L_p, L_V, L_A, L_s, L_mask,
    L_ord), and for the patch-network variants AdaFocusV2's random-patch branch (FC^L on a random patch; without it
    pi often stays at the centre while f_L learns the centre patch). T_G is drawn per batch as for the temporal glance. The temporal part starts from ``<runs>/avgn.pt`` when
    it exists (same sizes), else from scratch; ``freeze_temporal`` keeps it as loaded (AV-TeST, psi and the audio
    heads are not trained: the spatial glance then sees exactly the steps the temporal glance alone would choose).
    Saves ``<runs>/<SPATIAL_CHECKPOINTS[spatial]>.pt`` (``-frozen`` appended when frozen)."""
    from featurestore.store import require_spatial
    from models.avgn_spatial import PATCH, SpatialAVGN, spatial_losses

    random_patches = spatial in ("aespa", "pi")    # f_L also learns on random patches: pi gets a gradient early
    if spatial not in SPATIAL_CHECKPOINTS:
        raise ValueError(f"--spatial must be one of {', '.join(SPATIAL_CHECKPOINTS)}, not {spatial!r}")
    require_spatial(store)
    device = resolve_device(device)
    patch = patch or PATCH
    data = load_split(store, "train", ("image", "audio", "frames", "image_map"), device)
    images, audios = data.tensors("image"), data.tensors("audio")
    frames_of, maps_of = data.sources["frames"], data.sources["image_map"]
    torch.manual_seed(seed)
    model = SpatialAVGN(len(data.classes), spatial, dim=dim, layers=layers, heads=heads, max_len=t, patch=patch,
                        seed=seed)
    model.temporal.norm_g.set_moments(*data.moments("image"))
    model.temporal.norm_a.set_moments(*data.moments("audio"))
    model.norm_map.set_moments(*_map_moments(maps_of, len(data)))
    warm = checkpoint_path(runs, checkpoint_name())
    if warm.is_file():
        temporal, cfg = load_avgn(store, runs)
        if (cfg["dim"], cfg["layers"], cfg["heads"], cfg["t"]) == (dim, layers, heads, t) and cfg["audio_tokens"]:
            model.temporal.load_state_dict(temporal.state_dict())
            log.info("spatial glance: the temporal glance starts from %s", warm)
    if freeze_temporal:
        if not warm.is_file():
            raise ValueError(f"--freeze-temporal keeps a trained temporal glance: train it first (fs train-avgn), "
                             f"no checkpoint at {warm}")
        model.temporal.requires_grad_(False)
    model.to(device)
    labels = data.labels.to(device)
    sched = sized_schedule(len(images), batch_size, epochs, milestones, sized)

    def collate(idx, gen):
        idx, picks, e_g, e_a = sampled_pairs(images, audios, idx, t, gen)
        maps = torch.stack([torch.from_numpy(np.asarray(maps_of.video(j), np.float32))[p] for j, p in zip(idx, picks)])
        frames = torch.stack([torch.from_numpy(np.asarray(frames_of.video(j)))[p] for j, p in zip(idx, picks)])
        return e_g, e_a, maps.to(device), frames.to(device), labels[idx], draw_glances(t, gen), \
            int(torch.randint(1 << 30, (1,), generator=gen))

    def loss_fn(e_g, e_a, maps, frames, y, t_g, draw):
        gen = torch.Generator(device=frames.device).manual_seed(draw)
        losses = spatial_losses(model, e_g, e_a, maps, frames, y, t_g, k, use_mask_loss=mask_loss, generator=gen,
                                random_patches=random_patches)
        with torch.no_grad():
            logits = model(e_g, e_a, maps, frames, generator=gen)
        return sum(losses.values()), logits, y

    history = fit(model, minibatches(data.order, sched.batch_size, collate), loss_fn, sched.epochs, lr,
                  sched.milestones, seed, report, optimizer="adamw")
    model.eval().cpu()
    if freeze_temporal:
        model.temporal.requires_grad_(True)
    name = SPATIAL_CHECKPOINTS[spatial] + ("-frozen" if freeze_temporal else "")
    path = save_checkpoint(runs, name, "avgn-spatial", model, store,
                           {"num_classes": len(data.classes), "spatial": spatial, "dim": dim, "layers": layers,
                            "heads": heads, "t": t, "k": k, "patch": patch, "mask_loss": mask_loss, "seed": seed,
                            "random_patches": random_patches, "freeze_temporal": freeze_temporal,
                            "epochs": sched.epochs, "batch_size": sched.batch_size,
                            "train_glances": list(training_glances(t))}, history)
    return Trained(model, history, path, sched)


def _map_moments(maps_of, videos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the global map's D_G features over every cell of every training step, read
    video by video (the maps are not packed)."""
    return streamed_moments(torch.from_numpy(np.asarray(maps_of.video(j))).reshape(-1, MAP_DIM)
                            for j in range(videos))


def build_avgn_spatial(c: dict):
    """AVGN with both glances as a checkpoint's config describes it."""
    from models.avgn_spatial import SpatialAVGN
    return SpatialAVGN(c["num_classes"], c["spatial"], dim=c["dim"], layers=c["layers"], heads=c["heads"],
                       max_len=c["t"], patch=c["patch"], seed=c.get("seed", 0))


def load_avgn_spatial(store: FeatureStore, runs: Path, name: str = "avgn-spatial"):
    return load_model(runs, name, "avgn-spatial", store, build_avgn_spatial)
