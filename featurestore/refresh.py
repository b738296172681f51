"""``fs refresh``: recompute descriptors from the inputs kept in the store with new weights, never decoding a video.

``image``, ``audio``, ``fused`` (and ``image_map``, AVGN's e^G, where the store keeps it) come from a new student
(stored first frames and log-mels), ``r2p1d`` and
``r2p1d_logits`` from a new teacher (stored clips); each video records which checkpoint produced its arrays.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from featurestore.config import compute_record
from featurestore.constants import KEPT_CLIPS, KEPT_INPUTS
from featurestore.store import FeatureStore, StoreError, require_arrays
from featurestore.weights import load_student, load_teacher


@torch.inference_mode()
def _batched(fn, x: np.ndarray, batch: int = 64) -> list[np.ndarray]:
    outs = [fn(torch.from_numpy(np.ascontiguousarray(x[i:i + batch]))) for i in range(0, len(x), batch)]
    outs = [o if isinstance(o, tuple) else (o,) for o in outs]
    return [torch.cat([o[k] for o in outs]).float().numpy() for k in range(len(outs[0]))]


def student_features(net: nn.Module, frames: np.ndarray, mel: np.ndarray, has_audio: bool,
                     spatial_map: bool = False) -> dict[str, np.ndarray]:
    """z^I, z^A and Psi(z^I, z^A) of stored first frames and log-mels (zero audio features for a silent video);
    with ``spatial_map`` also ``image_map``, AVGN's e^G, from the same pass of the image trunk as z^I."""
    maps = {}
    if spatial_map:
        e_g, z_i = _batched(net.image_net.global_map, frames)
        maps["image_map"] = e_g
    else:
        z_i, = _batched(net.image_net, frames)
    z_a, = _batched(net.audio_net, mel.astype(np.float32)) if has_audio else (np.zeros_like(z_i),)
    with torch.inference_mode():
        fused = net.fusion(torch.from_numpy(z_i), torch.from_numpy(z_a)).numpy()
    return {"image": z_i, "audio": z_a, "fused": fused, **maps}


def refresh(store_path: str | Path, student: str | None = None, teacher: str | None = None,
            progress: Callable[[int, int], None] | None = None) -> int:
    """Recompute the named models' arrays of every video from the stored inputs; returns how many videos changed.

    Root provenance is switched first, so a cut-short refresh leaves videos whose provenance disagrees with the
    store's: trainers refuse them until ``refresh`` is run again (it skips videos already refreshed).

    Refresh computes on the CPU in float32. A store extracted on a GPU (bf16 autocast) is refreshed only when
    every model it holds is named, so that no descriptors of the other precision stay; its compute record then
    says CPU, and a video not yet recomputed on the CPU is recomputed whatever its weights.
    """
    if not student and not teacher:
        raise ValueError("name a --student and/or a --teacher checkpoint")
    store = FeatureStore(store_path, mode="a")
    with store.writer_lock("fs refresh"):
        store.clear_partials()
        prov = store.attrs.get("provenance", {})
        models: dict[str, tuple[nn.Module, dict]] = {}
        if student:
            require_arrays(store, KEPT_INPUTS, "extract it with --keep-inputs")
            models["student"] = load_student(student)
        if teacher:
            require_arrays(store, KEPT_CLIPS, "extract it with --keep-clips")
            models["teacher"] = load_teacher(teacher)
        cpu = compute_record("cpu")
        if prov.get("compute") and _kind(prov) != cpu:
            stays = sorted(set(prov.get("models", {})) - set(models))
            if stays:
                raise StoreError(f"store {store.path} holds descriptors computed on {prov['compute'].get('device')} "
                                 f"in {prov['compute'].get('precision')}; fs refresh computes on the CPU in float32, "
                                 f"so its {' and '.join(stays)} descriptors would stay of the other precision: "
                                 f"refresh them too (--student and --teacher) or extract again")
            prov["compute"] = cpu
        for name, (model, rec) in models.items():
            model.eval()
            prov.setdefault("models", {})[name] = rec
        store.root.attrs["provenance"] = prov
        ids = store.video_ids()
        changed = 0
        for i, vid in enumerate(ids):
            attrs = store.group_attrs(vid)
            vprov = attrs.get("provenance", {})
            other_kind = bool(vprov.get("compute")) and _kind(vprov) != cpu
            todo = [n for n in models if other_kind or
                    vprov.get("models", {}).get(n, {}).get("sha256") != models[n][1]["sha256"]]
            if todo:
                video = store.read_video(vid)
                arrays = dict(video.arrays)
                if "student" in todo:
                    feats = student_features(models["student"][0], video["frames"], video["mel"],
                                             bool(attrs.get("has_audio")), "image_map" in arrays)
                    for n, v in feats.items():
                        if n in arrays:
                            arrays[n] = v.astype(np.float16)
                if "teacher" in todo:
                    z_v, logits = _batched(models["teacher"][0], video["clips"], batch=8)
                    arrays["r2p1d"], arrays["r2p1d_logits"] = z_v.astype(np.float16), logits.astype(np.float16)
                for n in todo:
                    vprov.setdefault("models", {})[n] = models[n][1]
                if vprov.get("compute"):
                    vprov["compute"] = dict(cpu)
                for key in ("complete", "tag"):
                    attrs.pop(key, None)
                store.replace_video(vid, arrays, {**attrs, "provenance": vprov})
                changed += 1
            if progress:
                progress(i + 1, len(ids))
    return changed


def _kind(provenance: dict) -> dict:
    """The device kind and precision a provenance records (a video's also names its GPU)."""
    c = provenance.get("compute") or {}
    return {"device": c.get("device"), "precision": c.get("precision")}
