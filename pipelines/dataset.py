"""A split of the store as a ``torch.utils.data.Dataset`` for your own training scripts.

Each item is one video: ``{array: (N, ...) tensor for each array asked, "label": int, "video_id": str,
"n_steps": int}``; :func:`collate_videos` pads a list of them into one batch with a validity mask (the padding the
trainers use). Rows stream from the store's packed view through :class:`~pipelines.data.SplitData`'s bounded read
cache; :class:`WindowSampler` gives an epoch order that stays inside that cache (a plain shuffle reads a whole block
per video once the split outgrows the cache).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from featurestore.store import FeatureStore, require_arrays
from pipelines.data import READ_BUDGET_BYTES, SplitData, pad

META_KEYS = ("label", "video_id", "n_steps")   # what an item holds besides its arrays


class VideoDataset(Dataset):
    """The complete videos of ``split`` with the arrays ``arrays`` (descriptors, signals, ``t``; kept inputs are
    read from the video groups), labels as indices into ``classes`` (the store's class list).

    ``dtype``: the tensors' dtype (stored descriptors are float16; float32 by default, as the trainers compute).
    Memory stays within ``budget`` bytes of decoded rows whatever the split's size."""

    def __init__(self, store: FeatureStore, split: str, arrays: Sequence[str] = ("image", "audio"),
                 dtype: torch.dtype = torch.float32, budget: int = READ_BUDGET_BYTES):
        if isinstance(arrays, str):
            arrays = tuple(a.strip() for a in arrays.split(",") if a.strip())
        clash = set(arrays) & set(META_KEYS + ("mask",))
        if clash:
            raise ValueError(f"array name(s) {', '.join(sorted(clash))} clash with the item's own keys")
        if not arrays:
            raise ValueError("name at least one array (e.g. image, audio, fused)")
        self.arrays = tuple(arrays)
        self.dtype = dtype
        require_arrays(store, self.arrays)
        self.data = SplitData(store, split, self.arrays, budget=budget)
        self.split = split
        self.classes: list[str] = self.data.classes
        self._tensors = {n: self.data.tensors(n) for n in self.arrays}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"video index {i} out of range for {len(self)} videos")
        i = int(i) % len(self)
        item: dict = {n: self._tensors[n][i].to(self.dtype) for n in self.arrays}
        item.update(label=int(self.data.labels[i]), video_id=self.data.video_ids[i],
                    n_steps=int(self.data.n_steps[i]))
        return item

    @property
    def video_ids(self) -> list[str]:
        return list(self.data.video_ids)

    @property
    def labels(self) -> torch.Tensor:
        """(V,) class indices of every video, in dataset order."""
        return self.data.labels.clone()


class WindowSampler(Sampler[int]):
    """Video indices of one epoch in :meth:`SplitData.order`: a full permutation when the split fits the read
    cache, else windows of consecutive videos in random order, shuffled inside; a new order every epoch
    (``seed`` + epoch)."""

    def __init__(self, dataset: VideoDataset, seed: int = 0):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        return iter(self.dataset.data.order(gen).tolist())


def collate_videos(batch: list[dict]) -> dict:
    """Pad a list of :class:`VideoDataset` items into one batch: each array (B, max N, ...) zero-padded, ``mask``
    (B, max N) True on real steps, ``label`` (B,) long, ``n_steps`` (B,) long, ``video_id`` a list."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    names = [k for k in batch[0] if k not in META_KEYS]
    out: dict = {}
    mask = None
    for n in names:
        out[n], m = pad([item[n] for item in batch])
        mask = m if mask is None else mask
    out["mask"] = mask
    out["label"] = torch.tensor([item["label"] for item in batch], dtype=torch.long)
    out["n_steps"] = torch.tensor([item["n_steps"] for item in batch], dtype=torch.long)
    out["video_id"] = [item["video_id"] for item in batch]
    return out
