"""Reading the store for trainers and the bench: splits as tensors, padding with masks, the models behind it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from featurestore.store import FeatureStore, StoreError, VideoFeatures, check_video, require_arrays
from featurestore.weights import WeightsError, load_recorded
from manifests.schema import parse_segments
from models.imgaud import Fusion

@dataclass
class SplitData:
    """The videos of one split, as float32 tensors per array name, with integer labels."""

    videos: list[VideoFeatures]
    labels: torch.Tensor
    classes: list[str]

    def tensors(self, name: str) -> list[torch.Tensor]:
        return [torch.from_numpy(v.arrays[name].astype(np.float32)) for v in self.videos]


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


def action_mask(video: VideoFeatures) -> np.ndarray | None:
    """For each step, whether it starts inside a ground-truth action segment; None when the video has none
    annotated (needs the ``t`` array)."""
    segs = parse_segments(video.attrs.get("segments", "") or "")
    if not segs:
        return None
    t = video.arrays["t"]
    return np.any([(t >= s) & (t < e) for s, e in segs], axis=0)


def pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length (N_i, D) sequences into (B, max N, D) with a (B, max N) validity mask."""
    n = max(len(s) for s in seqs)
    out = seqs[0].new_zeros(len(seqs), n, seqs[0].shape[1])
    mask = torch.zeros(len(seqs), n, dtype=torch.bool)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
        mask[i, : len(s)] = True
    return out, mask


def store_model(store: FeatureStore, name: str) -> torch.nn.Module:
    """The student or teacher that produced this store's features, rebuilt from provenance and hash-checked."""
    rec = store.attrs.get("provenance", {}).get("models", {}).get(name)
    if rec is None:
        raise StoreError(f"store {store.path} holds no {name} features")
    try:
        return load_recorded(name, rec)
    except WeightsError as e:
        raise StoreError(f"cannot rebuild the {name} behind store {store.path}: {e}") from None


def student_fusion(store: FeatureStore) -> Fusion:
    """The student's Psi that produced this store's ``fused`` features."""
    return store_model(store, "student").fusion
