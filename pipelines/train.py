"""Shared training recipe: SGD with Nesterov momentum, weight decay and step decay (Listen to Look supp. C)."""
from __future__ import annotations

from typing import Callable, Iterable

import torch


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


def fit(model: torch.nn.Module, batches: Callable[[torch.Generator], Iterable[tuple]], loss_fn: Callable,
        epochs: int, lr: float, milestones: tuple[int, ...], seed: int,
        report: Callable[[dict], None] | None = None, optimizer: str = "sgd") -> list[dict]:
    """Train ``model`` for ``epochs``; ``batches(gen)`` yields loss_fn argument tuples. Returns per-epoch history.

    ``optimizer``: "sgd" (the papers' recipe) or "adamw" (for the transformer of AVGN)."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=0.1)
    else:
        opt, sched = sgd_schedule(params, lr, milestones)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        total = correct = seen = 0.0
        for batch in batches(gen):
            loss, logits, labels = loss_fn(*batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            seen += len(labels)
        sched.step()
        row = {"epoch": epoch, "loss": total / max(seen, 1), "train_acc": correct / max(seen, 1),
               "lr": opt.param_groups[0]["lr"]}
        history.append(row)
        if report:
            report(row)
    return history
