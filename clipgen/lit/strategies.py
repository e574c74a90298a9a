"""Distributed strategies built from config."""

from __future__ import annotations

from collections.abc import Sequence

from hydra.utils import get_class
from pytorch_lightning.strategies import FSDPStrategy


def fsdp_strategy(wrap: Sequence[str], activation_checkpointing: bool = False,
                  sharding_strategy: str = "FULL_SHARD", **kwargs) -> FSDPStrategy:
    """FSDP wrapping each module of the named classes (e.g. GPT-2 blocks) in its own unit,
    optionally with activation checkpointing of the same blocks."""
    classes = {get_class(name) for name in wrap}
    return FSDPStrategy(auto_wrap_policy=classes, sharding_strategy=sharding_strategy,
                        activation_checkpointing_policy=classes if activation_checkpointing
                        else None, **kwargs)
