"""Distributed strategies built from config."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hydra.utils import get_class
from pytorch_lightning.strategies import FSDPStrategy
from pytorch_lightning.strategies.fsdp import _setup_activation_checkpointing
from torch import nn


class ShardedStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, also on CPU processes (gloo). On GPUs it is FSDPStrategy as
    is. On CPUs two things refuse FSDP although torch's FSDP shards and trains there when told
    the device: Lightning's Trainer, which rejects the FSDPStrategy class itself with a CPU
    accelerator (`_check_strategy_and_fallback` compares the exact type; a subclass passes),
    and FSDP's device detection, which raises "FSDP needs a non-CPU accelerator device" unless
    `device_id` names the CPU (Lightning passes the device index, None on CPU)."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from torch.distributed.fsdp import FullyShardedDataParallel

        if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            raise ValueError("the model is already wrapped in FSDP; give the unwrapped module")
        model = FullyShardedDataParallel(
            module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs)
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model


def fsdp_strategy(wrap: Sequence[str], activation_checkpointing: bool = False,
                  sharding_strategy: str = "FULL_SHARD", **kwargs) -> FSDPStrategy:
    """FSDP wrapping each module of the named classes (e.g. GPT-2 blocks) in its own unit,
    optionally with activation checkpointing of the same blocks."""
    classes = {get_class(name) for name in wrap}
    return ShardedStrategy(auto_wrap_policy=classes, sharding_strategy=sharding_strategy,
                           activation_checkpointing_policy=classes if activation_checkpointing
                           else None, **kwargs)
