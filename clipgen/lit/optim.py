"""Optimiser pieces shared by the stages: AdamW groups and warm-up + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn


def decay_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 exclude: tuple[str, ...] = ()) -> list[dict]:
    """AdamW parameter groups: weight decay on matrices only (ndim >= 2), none on biases,
    norms, and any parameter whose name contains one of `exclude`."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(e in name for e in exclude):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup: int, total: int, floor: float = 0.0) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine decay to `floor` at `total` steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def adamw_with_schedule(groups: list[dict], lr: float, betas: tuple[float, float],
                        warmup: int, total: int, eps: float = 1e-8, floor: float = 0.0) -> dict:
    """Lightning's optimiser dict: AdamW stepped by warm-up + cosine every step."""
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, total, floor))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
