"""Loading the store for trainers and the bench: splits as tensors, padding with masks, checkpoint fingerprints."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featurestore.store import DESCRIPTORS, FeatureStore, StoreError, VideoFeatures, check_video
from featurestore.weights import load_student
from models.imgaud import Fusion

DEFAULT_RUNS = "fs-runs"


def runs_dir(explicit: str | Path | None = None) -> Path:
    """Where checkpoints and bench outputs go: ``--runs``, else ``$FS_RUNS``, else ``./fs-runs``."""
    return Path(explicit or os.environ.get("FS_RUNS") or DEFAULT_RUNS)


@dataclass
class SplitData:
    """The videos of one split, as float32 tensors per array name, with integer labels."""

    videos: list[VideoFeatures]
    labels: torch.Tensor
    classes: list[str]

    def tensors(self, name: str) -> list[torch.Tensor]:
        return [torch.from_numpy(v.arrays[name].astype(np.float32)) for v in self.videos]


def require_arrays(store: FeatureStore, names: tuple[str, ...],
                   how: str = "re-extract with --descriptors including them") -> None:
    """Refuse a store whose videos lack any of ``names`` (descriptors or kept inputs), saying ``how`` to get them."""
    have = store.attrs.get("descriptors", []) + store.attrs.get("inputs", [])
    missing = [n for n in names if n not in have and n not in ("t", "r2p1d_logits")]
    if missing:
        kind = "descriptors" if set(missing) <= set(DESCRIPTORS) else "arrays"
        raise StoreError(f"store {store.path} has no {', '.join(missing)} {kind} (it holds {', '.join(have)}): {how}")


def load_split(store: FeatureStore, split: str, names: tuple[str, ...]) -> SplitData:
    """Every complete video of ``split`` with the arrays ``names``; refuses a store lacking them."""
    require_arrays(store, names)
    classes = list(store.attrs["classes"])
    index = {c: i for i, c in enumerate(classes)}
    videos = []
    for vid in store.video_ids():
        attrs = store.video_attrs(vid)
        if attrs["split"] == split:
            if attrs["label"] not in index:
                raise StoreError(f"video {vid}: label {attrs['label']!r} is not among the store's classes")
            video = store.read_video(vid, names)
            problems = check_video(video, store.attrs, names)
            if problems:
                raise StoreError(f"{problems[0]} (fs verify {store.path} lists every problem)")
            videos.append(video)
    if not videos:
        raise StoreError(f"store {store.path} has no complete {split} videos")
    return SplitData(videos, torch.tensor([index[v.label] for v in videos]), classes)


def pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length (N_i, D) sequences into (B, max N, D) with a (B, max N) validity mask."""
    n = max(len(s) for s in seqs)
    out = seqs[0].new_zeros(len(seqs), n, seqs[0].shape[1])
    mask = torch.zeros(len(seqs), n, dtype=torch.bool)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
        mask[i, : len(s)] = True
    return out, mask


def fingerprint(store: FeatureStore) -> dict:
    """What a checkpoint trained on ``store`` must find again to be used with a store."""
    a = store.attrs
    return {"schema_version": a.get("schema_version"), "dataset": a.get("dataset"), "classes": a.get("classes"),
            "models": {k: v.get("sha256") for k, v in a.get("provenance", {}).get("models", {}).items()}}


def check_fingerprint(saved: dict, store: FeatureStore, what: str) -> None:
    """Refuse a store whose schema, classes or feature-producing weights differ from the checkpoint's."""
    now = fingerprint(store)
    for key in ("schema_version", "dataset", "classes"):
        if saved.get(key) != now.get(key):
            raise StoreError(f"{what} was trained on a store with {key}={saved.get(key)!r:.60}, this store has "
                             f"{now.get(key)!r:.60}: retrain it on this store")
    for model, digest in saved.get("models", {}).items():
        if model in now["models"] and now["models"][model] != digest:
            raise StoreError(f"{what} was trained on {model} features with weights sha256 {digest}; this store's are "
                             f"{now['models'][model]}: retrain it on this store")


def weights_spec(record: dict) -> tuple[str, int]:
    """(spec for the weights loaders, seed) that reproduce a provenance record's weights."""
    source = record["source"]
    seed = int(source.rsplit("seed=", 1)[1].rstrip(")")) if "seed=" in source else 0
    if source.startswith("file:"):
        return source[5:], seed
    if source.startswith("torchvision:"):
        return ("kinetics400" if "R2Plus1D" in source else "imagenet"), seed
    return "random", seed


def store_model(store: FeatureStore, name: str) -> torch.nn.Module:
    """The student or teacher that produced this store's features, rebuilt from provenance and hash-checked."""
    from featurestore.weights import load_teacher

    rec = store.attrs.get("provenance", {}).get("models", {}).get(name)
    if rec is None:
        raise StoreError(f"store {store.path} holds no {name} features")
    spec, seed = weights_spec(rec)
    model, got = (load_student(spec, seed, rec.get("num_classes", 400)) if name == "student"
                  else load_teacher(spec, seed))
    if got["sha256"] != rec["sha256"]:
        raise StoreError(f"cannot rebuild the {name} behind store {store.path}: {rec['source']} now hashes to "
                         f"{got['sha256']}, the store recorded {rec['sha256']}")
    return model


def student_fusion(store: FeatureStore) -> Fusion:
    """The student's Psi that produced this store's ``fused`` features."""
    return store_model(store, "student").fusion


def save_checkpoint(path: Path, kind: str, model: torch.nn.Module, store: FeatureStore, config: dict,
                    history: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    torch.save({"kind": kind, "state_dict": model.state_dict(), "fingerprint": fingerprint(store),
                "config": config, "history": history}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, kind: str, store: FeatureStore) -> dict:
    if not path.is_file():
        raise StoreError(f"no {kind} checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("kind") != kind:
        raise StoreError(f"{path} is a {ckpt.get('kind')} checkpoint, not {kind}")
    check_fingerprint(ckpt["fingerprint"], store, f"{kind} checkpoint {path}")
    return ckpt
