"""Reading the store for trainers and the bench: splits streamed from the packed views (or resident on a GPU),
padding with masks, the device to train on, the models behind it."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from featurestore.constants import KEPT_CLIPS, KEPT_INPUTS, KEPT_MAPS, ROW_WIDTHS
from featurestore.packed import BLOCK_CHUNKS, BlockReader, PackedSplit, open_packed
from featurestore.store import FeatureStore, StoreError, VideoFeatures, require_arrays
from featurestore.text import printable
from featurestore.weights import WeightsError, load_recorded
from manifests.schema import parse_segments
from models.imgaud import Fusion
from models.selection import VideoBlock

INPUT_ARRAYS = KEPT_INPUTS + KEPT_MAPS + KEPT_CLIPS   # kept inputs are read from the groups; descriptors packed
READ_BUDGET_BYTES = int(os.environ.get("FS_READ_BUDGET_MB", "512")) << 20
"""Rows a streamed split keeps decoded, over all its arrays: the memory bound of a trainer's or the bench's reads."""


def resolve_device(device: str = "auto") -> str:
    """``auto``: the first GPU when torch sees one, else the CPU; anything else is checked and returned."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no GPU here (use --device cpu or auto)")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"--device must be auto, cpu or cuda[:N], not {device!r}")
    return device


class _GroupRows:
    """One kept input (frames, mel, image_map, clips) read video by video from the groups: inputs are not packed."""

    def __init__(self, store: FeatureStore, video_ids: list[str], name: str):
        self.store, self.video_ids, self.name = store, video_ids, name
        self._last: tuple[int, np.ndarray] | None = None

    def video(self, i: int) -> np.ndarray:
        if self._last is None or self._last[0] != i:
            self._last = (i, self.store.read_video(self.video_ids[i], [self.name]).arrays[self.name])
        return self._last[1]


class _ResidentRows:
    """One packed array held on a device in float16 (loaded block by block, never as a float32 copy)."""

    def __init__(self, packed: PackedSplit, name: str, device: str):
        arr = packed.array(name)
        dtype = torch.from_numpy(np.zeros(0, arr.dtype)).dtype          # float16 descriptors stay float16, t float32
        self.data = torch.empty(arr.shape, dtype=dtype, device=device)
        step = int(arr.chunks[0]) * BLOCK_CHUNKS
        for i in range(0, arr.shape[0], step):
            rows = packed.read(name, i, i + step)          # checked: a damaged chunk is a one-line StoreError
            self.data[i:i + step] = torch.from_numpy(np.ascontiguousarray(rows)).to(device, dtype)
        self.offsets = packed.offsets

    def video(self, i: int) -> torch.Tensor:
        return self.data[int(self.offsets[i]):int(self.offsets[i + 1])]


class _Videos(Sequence):
    """The split's videos as :class:`VideoFeatures`, read lazily (numpy arrays, on the CPU)."""

    def __init__(self, split: "SplitData"):
        self.split = split

    def __len__(self) -> int:
        return len(self.split.video_ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        s = self.split
        return VideoFeatures(s.video_ids[i], s.attrs[i], _LazyArrays(s, i))


class _LazyArrays(Mapping):
    def __init__(self, split: "SplitData", i: int):
        self.split, self.i = split, i

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.split.sources:
            raise KeyError(name)
        rows = self.split.sources[name].video(self.i)
        return rows.cpu().numpy() if isinstance(rows, torch.Tensor) else rows

    def __iter__(self):
        return iter(self.split.sources)

    def __len__(self) -> int:
        return len(self.split.sources)


class _Tensors(Sequence):
    """One array of every video as float32 tensors, read lazily (on ``device``)."""

    def __init__(self, split: "SplitData", name: str):
        self.split, self.name = split, name

    def __len__(self) -> int:
        return len(self.split.video_ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        rows = self.split.sources[self.name].video(int(i))
        if isinstance(rows, torch.Tensor):
            return rows.float()
        return torch.from_numpy(np.asarray(rows, np.float32)).to(self.split.device)


class SplitData:
    """The videos of one split with integer labels, read from the store's packed view (descriptors) and, for kept
    inputs, from the groups.

    Streamed (default): each array is read in blocks through a cache of about ``budget`` bytes in all, and
    :meth:`order` shuffles windows of consecutive videos that fit that cache, so memory stays bounded whatever
    the split's size; a split that fits the budget is shuffled as a whole. Resident (``resident=True``): the packed
    descriptors are loaded once into ``device`` memory as float16 and every order is a full permutation.
    """

    def __init__(self, store: FeatureStore, split: str, names: tuple[str, ...], device: str = "cpu",
                 resident: bool = False, budget: int = READ_BUDGET_BYTES,
                 progress: Callable[[int, int], None] | None = None):
        packed_names = tuple(n for n in names if n not in INPUT_ARRAYS)
        self.packed = open_packed(store, split, packed_names or ("t",), progress)
        self.video_ids = self.packed.video_ids
        self.attrs = self.packed.entries
        self.classes = list(store.attrs["classes"])
        index = {c: i for i, c in enumerate(self.classes)}
        for vid, a in zip(self.video_ids, self.attrs):
            if a["label"] not in index:
                raise StoreError(f"video {vid}: label {a['label']!r} is not among the store's classes")
        self.labels = torch.tensor([index[a["label"]] for a in self.attrs])
        self.n_steps = np.diff(self.packed.offsets)
        self.device = device
        self.resident = resident
        self.names = names
        self.row_bytes = sum(self.packed.reader(n).row_bytes for n in packed_names) or 1
        self.budget = budget
        self.window_rows = max(int(self.n_steps.max()), budget // self.row_bytes)
        self.sources: dict = {}
        for n in names:
            if n in INPUT_ARRAYS:
                self.sources[n] = _GroupRows(store, self.video_ids, n)
            elif resident:
                self.sources[n] = _ResidentRows(self.packed, n, device)
            else:
                self.sources[n] = self.packed.reader(n, self.window_rows)
        self.videos = _Videos(self)

    def __len__(self) -> int:
        return len(self.video_ids)

    def tensors(self, name: str) -> Sequence[torch.Tensor]:
        """Array ``name`` of every video as float32 tensors on the split's device, read on access."""
        return _Tensors(self, name)

    def order(self, gen: torch.Generator) -> torch.Tensor:
        """An epoch's order of the videos: a permutation when the split fits the read budget (or is resident), else
        windows of consecutive videos (cut at a random offset each epoch) in random order, each shuffled inside,
        so that every batch reads from a window the cache holds."""
        return torch.cat(self.windows(gen))

    def windows(self, gen: torch.Generator) -> list[torch.Tensor]:
        """:meth:`order` as its windows (one, a permutation of all, when the split fits the read budget)."""
        n = len(self)
        if self.fits():
            return [torch.randperm(n, generator=gen)]
        starts = self.packed.offsets[:-1]
        shift = int(torch.randint(self.window_rows, (1,), generator=gen))
        window = torch.from_numpy((starts + shift) // self.window_rows)
        groups = [torch.nonzero(window == w).flatten() for w in torch.unique(window)]
        return [g[torch.randperm(len(g), generator=gen)] for g in
                (groups[int(k)] for k in torch.randperm(len(groups), generator=gen))]

    def fits(self, float32_copy: bool = False) -> bool:
        """Whether the whole split fits the read budget (then it is read once and shuffled as a whole); with
        ``float32_copy``, whether a float32 copy of all its rows does too (then a trainer may concatenate them)."""
        rows = int(self.packed.offsets[-1])
        if float32_copy:
            return rows * self.row_bytes * 2 <= self.budget // 2
        return self.resident or rows <= self.window_rows

    def padded(self, name: str, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Array ``name`` of the videos ``idx`` as one zero-padded float32 batch (B, max N, D) on the split's device
        and its (B, max N) validity mask: filled in the stored dtype, converted once (no per-video float32 copies)."""
        src = self.sources[name]
        if isinstance(src, _ResidentRows):
            out, mask = pad([src.video(j) for j in idx])
            return out.float(), mask
        lengths = torch.as_tensor(self.n_steps[idx], dtype=torch.long)
        n = int(lengths.max())
        first = src.video(idx[0])
        buf = np.zeros((len(idx), n) + first.shape[1:], first.dtype)
        for i, j in enumerate(idx):
            rows = src.video(j)
            buf[i, :len(rows)] = rows
        out = torch.from_numpy(buf).to(self.device).float()
        return out, torch.arange(n, device=out.device)[None, :] < lengths.to(out.device)[:, None]

    def block(self, idx: Sequence[int], device: str | None = None) -> VideoBlock:
        """The videos ``idx`` as one :class:`~models.selection.VideoBlock` (padded arrays with a mask) on ``device``
        (the split's own by default), for the selectors' ``select_batch``."""
        idx = [int(i) for i in idx]
        device = device or self.device

        def load(name: str) -> torch.Tensor:
            return self.padded(name, idx)[0].to(device)
        return VideoBlock([self.video_ids[i] for i in idx], [self.attrs[i] for i in idx],
                          torch.as_tensor(self.n_steps[idx], dtype=torch.long), load,
                          lambda i: self.videos[idx[i]], device)

    def blocks(self, videos: int = 128, values: int = 32 << 20) -> Iterator[np.ndarray]:
        """The split cut into blocks of video indices for selection: consecutive windows that the read cache holds,
        each sorted by length (so a block pads little) and cut into blocks of at most ``videos`` videos whose padded
        size (videos x longest x 1024, about the widest rows read together) stays under ``values``. Every video is
        in exactly one block."""
        n_steps = self.n_steps
        starts = self.packed.offsets[:-1]
        window = starts // max(self.window_rows, 1) if not self.fits() else np.zeros(len(self), np.int64)
        for w in np.unique(window):
            members = np.nonzero(window == w)[0]
            members = members[np.argsort(n_steps[members], kind="stable")]
            i = 0
            while i < len(members):
                j = i + 1
                while j < len(members) and j - i < videos and (j - i + 1) * n_steps[members[j]] * 1024 <= values:
                    j += 1
                yield members[i:j]
                i = j

    def moments(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased standard deviation of array ``name`` over every step of the split (on the CPU): from
        the rows at once when the split fits the budget, else accumulated video by video in float64."""
        if self.fits(float32_copy=True):
            x = torch.cat(list(self.tensors(name))).cpu()
            return x.mean(0), x.std(0)
        return streamed_moments(self.tensors(name))

    def cache_bytes(self) -> int:
        """The most bytes the streamed readers keep decoded."""
        return sum(s.cache_bytes for s in self.sources.values() if isinstance(s, BlockReader))


def streamed_moments(rows: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased standard deviation over the rows of every (N_i, D) tensor of ``rows``, accumulated one
    tensor at a time in float64 (nothing but sums held), on the CPU."""
    total = total_sq = None
    count = 0
    for z in rows:
        z = z.double().cpu()
        total = z.sum(0) if total is None else total + z.sum(0)
        total_sq = (z * z).sum(0) if total_sq is None else total_sq + (z * z).sum(0)
        count += len(z)
    mean = total / count
    var = (total_sq - count * mean * mean) / max(count - 1, 1)
    return mean.float(), var.clamp(min=0).sqrt().float()


def step_batches(data: SplitData, name: str, batch_size: int) -> Callable[[torch.Generator], Iterator[tuple]]:
    """``batches`` for :func:`~pipelines.train.fit` over the steps of a split too large for the read budget: the
    epoch's video order (:meth:`SplitData.order`) is cut into pools of about a quarter of the budget, each pool's
    steps are shuffled and cut into batches of (features, labels); a batch of one row is dropped."""
    pool_rows = max(batch_size, data.window_rows // 4)

    def batches(gen: torch.Generator):
        order = data.order(gen).tolist()
        tensors = data.tensors(name)
        i = 0
        while i < len(order):
            pool, rows = [], 0
            while i < len(order) and (not pool or rows + int(data.n_steps[order[i]]) <= pool_rows):
                pool.append(order[i])
                rows += int(data.n_steps[order[i]])
                i += 1
            x = torch.cat([tensors[j] for j in pool])
            y = torch.cat([torch.full((int(data.n_steps[j]),), int(data.labels[j])) for j in pool]).to(x.device)
            perm = torch.randperm(len(x), generator=gen).to(x.device)
            for k in range(0, len(x), batch_size):
                idx = perm[k:k + batch_size]
                if len(idx) > 1:
                    yield x[idx], y[idx]
    return batches


def load_split(store: FeatureStore, split: str, names: tuple[str, ...], device: str = "cpu",
               resident: bool | None = None, progress: Callable[[int, int], None] | None = None) -> SplitData:
    """Every complete video of ``split`` with the arrays ``names``; refuses a store lacking them. Descriptors come
    from the packed view (built or brought up to date first). ``resident`` None: resident on a GPU device when the
    split's packed float16 arrays fit in half of its free memory, else streamed."""
    require_arrays(store, names)
    if resident is None:
        resident = False
        if device.startswith("cuda"):
            need = _packed_bytes(store, split, names)
            free, _ = torch.cuda.mem_get_info(torch.device(device))
            resident = need <= free // 2
    return SplitData(store, split, names, device, resident, progress=progress)


def _packed_bytes(store: FeatureStore, split: str, names: tuple[str, ...]) -> int:
    """Bytes of the split's descriptors ``names`` in float16 (from the index: rows x widths; ``t`` and ``loudness``
    one float32 a row)."""
    rows = sum(int(e["n_steps"]) for e in store.entries().values() if e.get("split") == split)
    return rows * sum(2 * ROW_WIDTHS[n] if n in ROW_WIDTHS else 4 for n in names if n not in INPUT_ARRAYS)


def action_segments(video_id: str, attrs: Mapping) -> list[tuple[float, float]]:
    """A video's ground-truth action segments that count: a segment starting at or after the video's end (a store
    extracted before extraction fitted segments to the decoded duration) does not."""
    try:
        segs = parse_segments(attrs.get("segments", "") or "")
    except ValueError as e:            # a store extracted before segments were validated ("1-inf")
        raise StoreError(f"video {printable(video_id, 80)}: {e}") from None
    duration = attrs.get("duration")
    return [(s, e) for s, e in segs if duration is None or s < float(duration)]


def action_mask(video: VideoFeatures) -> np.ndarray | None:
    """For each step, whether it starts inside a ground-truth action segment (:func:`action_segments`); None when
    the video has none annotated (needs the ``t`` array)."""
    segs = action_segments(video.video_id, video.attrs)
    if not segs:
        return None
    t = video.arrays["t"]
    return np.any([(t >= s) & (t < e) for s, e in segs], axis=0)


def pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length (N_i, D) sequences into (B, max N, D) with a (B, max N) validity mask."""
    n = max(len(s) for s in seqs)
    out = seqs[0].new_zeros((len(seqs), n) + tuple(seqs[0].shape[1:]))
    mask = torch.zeros(len(seqs), n, dtype=torch.bool, device=seqs[0].device)
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
