"""Cross-video batching: one inference thread per process and device owns the models.

The decode threads of the videos in flight (a Dask worker's threads) hand it their step inputs as requests of any
size and get futures back; it packs the rows of the queued requests of one kind into full batches, so one batch can
hold steps of several videos. A partial batch runs only when no request has arrived for ``max_wait`` seconds, i.e.
when the device would otherwise idle. The decode threads write their finished videos themselves, off the device's
critical path.
"""
from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

BatchFn = Callable[..., tuple[torch.Tensor, ...]]


@dataclass(eq=False)      # identity, not array comparison, when removed from a queue
class _Request:
    kind: str
    arrays: tuple[np.ndarray, ...]
    future: Future
    done: int = 0                                   # rows already sent to the device
    parts: list[tuple[np.ndarray, ...]] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.arrays[0])


class CrossVideoBatcher:
    """Batched inference over requests from many threads.

    ``fns[kind](*tensors)`` runs one batch of that kind on ``device`` and returns a tuple of tensors whose first
    dimension is the batch; ``batch_sizes[kind]`` is its full batch. :meth:`submit` returns a future of the outputs
    (numpy float32, one per returned tensor) for the request's rows, in order.
    """

    def __init__(self, fns: dict[str, BatchFn], batch_sizes: dict[str, int], device: torch.device | str,
                 max_wait: float = 0.005):
        self.fns, self.batch_sizes = fns, batch_sizes
        self.device = torch.device(device)
        self.max_wait = max_wait
        self.batches_run: dict[str, int] = {k: 0 for k in fns}
        self.rows_run: dict[str, int] = {k: 0 for k in fns}
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict[str, deque[_Request]] = {k: deque() for k in fns}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, kind: str, *arrays: np.ndarray) -> Future:
        """Queue ``arrays`` (same first dimension) for the ``kind`` model; an empty request resolves at once."""
        if kind not in self.fns:
            raise KeyError(f"no model for {kind!r}; have {', '.join(self.fns)}")
        fut: Future = Future()
        if len(arrays[0]) == 0:
            fut.set_result(())
            return fut
        self._start()
        self._queue.put(_Request(kind, tuple(np.ascontiguousarray(a) for a in arrays), fut))
        return fut

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="fs-inference", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        with torch.inference_mode():
            while True:
                try:
                    self._step()
                except Exception as e:  # noqa: BLE001 - a bug here must fail the waiting videos, not hang them
                    for reqs in self._pending.values():
                        while reqs:
                            reqs.popleft().future.set_exception(e)

    def _step(self) -> None:
        """Take what has arrived; run every full batch, or the fullest partial one after ``max_wait`` idle."""
        waiting = any(self._pending.values())
        try:
            req = self._queue.get(timeout=self.max_wait) if waiting else self._queue.get()
        except queue.Empty:
            # nothing new while rows wait: run the fullest kind rather than let the device idle
            kind = max(self._pending, key=lambda k: sum(r.rows - r.done for r in self._pending[k]))
            self._run_batch(kind)
            return
        self._add(req)
        while True:      # take everything already queued before choosing what to run
            try:
                self._add(self._queue.get_nowait())
            except queue.Empty:
                break
        for kind, reqs in self._pending.items():
            while sum(r.rows - r.done for r in reqs) >= self.batch_sizes[kind]:
                self._run_batch(kind)

    def _add(self, req: _Request) -> None:
        self._pending[req.kind].append(req)

    def _run_batch(self, kind: str) -> None:
        reqs = self._pending[kind]
        size = self.batch_sizes[kind]
        taken: list[tuple[_Request, int, int]] = []        # (request, first row, last row + 1)
        n = 0
        for req in reqs:
            if n == size:
                break
            k = min(size - n, req.rows - req.done)
            taken.append((req, req.done, req.done + k))
            n += k
        try:
            inputs = [np.concatenate([r.arrays[i][a:b] for r, a, b in taken]) for i in range(len(taken[0][0].arrays))]
            outputs = [o.float().cpu().numpy() for o in self.fns[kind](*[self.to_device(x) for x in inputs])]
            if any(len(o) != n for o in outputs):
                raise ValueError(f"the {kind} model returned {[len(o) for o in outputs]} rows for a batch of {n}")
        except Exception as e:  # noqa: BLE001 - the requests in this batch fail; the others go on
            for req, _, _ in taken:
                if req in reqs:
                    reqs.remove(req)
                req.future.set_exception(e)
            return
        self.batches_run[kind] += 1
        self.rows_run[kind] += n
        offset = 0
        for req, a, b in taken:
            req.parts.append(tuple(o[offset:offset + b - a] for o in outputs))
            offset += b - a
            req.done = b
            if req.done == req.rows:
                reqs.remove(req)
                req.future.set_result(tuple(np.concatenate(col) for col in zip(*req.parts)))

    def to_device(self, x: np.ndarray) -> torch.Tensor:
        """``x`` on the device. A plain copy: pinning would add a host copy per batch for nothing, since every
        batch ends in a blocking ``.cpu()`` and no other work could overlap the transfer."""
        return torch.from_numpy(x).to(self.device)
