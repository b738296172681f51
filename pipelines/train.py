"""Shared training recipe: SGD with Nesterov momentum, weight decay and step decay (Listen to Look supp. C)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import queue
import threading
import time

import torch

from featurestore.progress import progress_bar

log = logging.getLogger(__name__)


def sgd_schedule(params: Iterable[torch.nn.Parameter], lr: float, milestones: tuple[int, ...],
                 weight_decay: float = 1e-4, momentum: float = 0.9):
    """SGD (Nesterov) and a MultiStepLR dividing the rate by 10 at each milestone epoch."""
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=0.1)


def minibatches(rows: int | Callable[[torch.Generator], torch.Tensor], batch_size: int,
                collate: Callable[[torch.Tensor, torch.Generator], tuple] = lambda idx, gen: (idx,)
                ) -> Callable[[torch.Generator], Iterable[tuple]]:
    """The one shuffle-and-batch loop of every trainer: ``batches`` for :func:`fit`.

    Each epoch takes a fresh order of the rows (a permutation of ``range(rows)``, or ``rows(gen)`` when a trainer
    draws its own indices), cuts it into index batches of ``batch_size`` and yields ``collate(indices, gen)``; a
    last batch of one row is dropped (batch norm needs two)."""
    def batches(gen: torch.Generator):
        order = torch.randperm(rows, generator=gen) if isinstance(rows, int) else rows(gen)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            if len(idx) > 1:
                yield collate(idx, gen)
    return batches


def similar_length_batches(windows: Callable[[torch.Generator], list[torch.Tensor]], lengths, batch_size: int,
                           collate: Callable[[torch.Tensor, torch.Generator], tuple]
                           ) -> Callable[[torch.Generator], Iterable[tuple]]:
    """``batches`` for :func:`fit` over padded sequences: each epoch's windows of shuffled videos
    (:meth:`~pipelines.data.SplitData.windows`) are sorted by length and cut into batches of at most ``batch_size``
    of near-equal size, taken in random order window by window, so that a batch pads little and still reads from
    one window; every video is in one batch an epoch (a window of one video is dropped: batch norm needs two)."""
    lengths = torch.as_tensor(lengths)

    def batches(gen: torch.Generator):
        for w in windows(gen):
            w = w[torch.argsort(lengths[w], stable=True)]       # ties keep the window's random order
            chunks = torch.tensor_split(w, -(-len(w) // batch_size)) if len(w) else []
            for k in torch.randperm(len(chunks), generator=gen).tolist():
                if len(chunks[k]) > 1:
                    yield collate(chunks[k], gen)
    return batches


@dataclass(frozen=True)
class Schedule:
    """Batch size, epochs and lr milestones, as asked or sized to the split (:func:`sized_schedule`)."""

    batch_size: int
    epochs: int
    milestones: tuple[int, ...]

    def steps(self, rows: int) -> int:
        """Optimiser steps this schedule takes on ``rows`` rows (a last batch of one row is dropped)."""
        per_epoch = rows // self.batch_size + (rows % self.batch_size > 1)
        return per_epoch * self.epochs


MIN_STEPS_PER_EPOCH = 10      # a split smaller than 10 batches gets smaller batches ...
MIN_BATCH = 8                 # ... but not below 8 rows (batch norm statistics),
MIN_STEPS = 250               # and at least this many optimiser steps in all (more epochs, milestones scaled)


def sized_schedule(rows: int, batch_size: int, epochs: int, milestones: tuple[int, ...],
                   sized: bool = True) -> Schedule:
    """The schedule asked for, sized by optimiser steps so that it converges on small splits too (``sized``; a
    schedule the user set explicitly is kept as it is).

    The papers' schedules assume large splits (ActivityNet: 10k videos, batch 256, 39 steps an epoch). On a split
    of ``rows`` rows the batch shrinks to give at least MIN_STEPS_PER_EPOCH steps an epoch (not below MIN_BATCH),
    and when that still gives fewer than MIN_STEPS steps, epochs and milestones grow by the same factor. A large
    split keeps the schedule asked for."""
    if not sized:
        return Schedule(batch_size, epochs, tuple(milestones))
    batch = max(2, min(batch_size, max(MIN_BATCH, -(-rows // MIN_STEPS_PER_EPOCH)), rows))
    sched = Schedule(batch, epochs, tuple(milestones))
    total = sched.steps(rows)
    if 0 < total < MIN_STEPS:
        factor = -(-MIN_STEPS // total)
        sched = Schedule(batch, epochs * factor, tuple(m * factor for m in milestones))
    return sched


def bound_heap(mmap_threshold: int = 1 << 20) -> bool:
    """Ask glibc to serve allocations over ``mmap_threshold`` bytes with mmap, returned to the system when freed:
    batches of varying padded shapes otherwise leave the heap fragmented and a trainer's RSS creeps up by GBs over
    an epoch. No-op (False) where the C library is not glibc."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(mmap_threshold)))      # M_MMAP_THRESHOLD; also stops its dynamic growth
    except (OSError, AttributeError):
        return False


def prefetched(batches: Iterable[tuple], depth: int = 1) -> Iterator[tuple]:
    """``batches``, produced on a background thread up to ``depth`` ahead (torch releases the GIL while it copies
    and pads), so collating the next batch overlaps training on this one. An error there is raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(e)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


@dataclass
class MicroBatches:
    """One optimiser step's batch cut into parts (each a loss_fn argument tuple) that go forward and backward one
    at a time, their gradients accumulated in proportion to their rows: the same step in a fraction of the memory
    (BatchNorm normalises each part with its own statistics). ``parts`` may be lazy (a generator): each part is then
    built only when it is needed (or prefetched), so at most a few parts exist at once. ``rows``: the batch's rows."""

    parts: Iterable[tuple]
    rows: int


def _flatten(batches: Iterable) -> Iterator[tuple[tuple, int | None, bool]]:
    """(loss_fn arguments, the batch's rows or None for a whole batch, whether the step ends here) per part."""
    for batch in batches:
        if isinstance(batch, MicroBatches):
            pending = None
            for part in batch.parts:
                if pending is not None:
                    yield pending, batch.rows, False
                pending = part
            if pending is not None:
                yield pending, batch.rows, True
        else:
            yield batch, None, True


def _parts(batches: Iterable) -> Iterator[tuple]:
    for part, _, _ in _flatten(batches):
        yield part


def _batchnorms(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, batches: Iterable[tuple], loss_fn: Callable) -> None:
    """Running statistics of every BatchNorm set to the training data under the final weights: reset, then one pass
    in train mode with a cumulative average (momentum None), as evaluation will normalise with them."""
    norms = _batchnorms(model)
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for part in _parts(batches):
        loss_fn(*part)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


@torch.no_grad()
def evaluate_fit(model: torch.nn.Module, batches: Iterable[tuple], loss_fn: Callable) -> dict:
    """Loss and accuracy on ``batches`` in eval mode: the way the bench will use the model."""
    model.eval()
    total = correct = seen = 0.0
    for part in _parts(batches):
        loss, logits, labels = loss_fn(*part)
        total += loss.item() * len(labels)
        correct += (logits.argmax(-1) == labels).sum().item()
        seen += len(labels)
    return {"loss": total / max(seen, 1), "acc": correct / max(seen, 1)}


def fit(model: torch.nn.Module, batches: Callable[[torch.Generator], Iterable[tuple]], loss_fn: Callable,
        epochs: int, lr: float, milestones: tuple[int, ...], seed: int,
        report: Callable[[dict], None] | None = None, optimizer: str = "sgd",
        clip_grad: float | None = None, prefetch: bool = True) -> list[dict]:
    """Train ``model`` for ``epochs``; ``batches(gen)`` yields loss_fn argument tuples. Returns per-epoch history.

    ``optimizer``: "sgd" (the papers' recipe) or "adamw" (for the transformer of AVGN); ``clip_grad`` clips the
    gradient norm. After the last epoch the BatchNorm statistics are recomputed on the training data and the final
    row gains ``final_loss`` and ``final_train_acc``: the training split evaluated in eval mode, as the bench does.
    A batch may be :class:`MicroBatches` (parts accumulated into one step). Per-epoch ``train_acc`` is the running
    accuracy in train mode; ``data_seconds`` is the time spent waiting for
    batches (reading, collating), ``compute_seconds`` the forward, backward and optimiser steps. The epochs show
    as a progress bar (:func:`featurestore.progress.progress_bar`)."""
    bound_heap()
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=0.1)
    else:
        opt, sched = sgd_schedule(params, lr, milestones)
    history = []
    bar = progress_bar(epochs, "train", unit="epoch", logger=log)
    for epoch in range(1, epochs + 1):
        model.train()
        total = correct = seen = 0.0
        data_s = compute_s = 0.0
        t0 = time.perf_counter()
        stream = _flatten(batches(gen))
        opt.zero_grad(set_to_none=True)
        for part, rows, last in (prefetched(stream) if prefetch else stream):
            t1 = time.perf_counter()
            data_s += t1 - t0
            loss, logits, labels = loss_fn(*part)
            (loss * (len(labels) / rows) if rows else loss).backward()
            total += loss.item() * len(labels)
            correct += (logits.argmax(-1) == labels).sum().item()
            seen += len(labels)
            del part, loss, logits
            if last:
                if clip_grad:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad)
                opt.step()
                opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            compute_s += t0 - t1
        sched.step()
        row = {"epoch": epoch, "loss": total / max(seen, 1), "train_acc": correct / max(seen, 1),
               "lr": opt.param_groups[0]["lr"], "data_seconds": data_s, "compute_seconds": compute_s}
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{100 * row['train_acc']:.1f}%", refresh=False)
        bar.update(1)
        if report:
            report(row)
    bar.close()
    final_gen = torch.Generator().manual_seed(seed + 1)
    recalibrate_batchnorm(model, batches(final_gen), loss_fn)
    final = evaluate_fit(model, batches(torch.Generator().manual_seed(seed + 1)), loss_fn)
    if history:
        history[-1].update(final_loss=final["loss"], final_train_acc=final["acc"])
    return history


@dataclass
class Trained:
    """What a trainer returns: the network (eval mode), its history, the checkpoint written and the schedule run."""

    model: torch.nn.Module
    history: list[dict]
    path: Path
    schedule: Schedule

    def summary(self) -> str:
        """One line for the user: where it went, the schedule, and the fit measured as the bench will use it."""
        last = self.history[-1] if self.history else {}
        fit_text = (f"; final training loss {last['final_loss']:.4f}, training accuracy "
                    f"{100 * last['final_train_acc']:.1f}% in eval mode" if "final_train_acc" in last else "")
        return (f"saved {self.path} (batch {self.schedule.batch_size}, {self.schedule.epochs} epochs, milestones "
                f"{','.join(map(str, self.schedule.milestones)) or 'none'}{fit_text})")
