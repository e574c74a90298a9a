"""Which process this is: rank and world size under torch.distributed, SLURM or torchrun."""

from __future__ import annotations

import os

import torch


def process_rank() -> tuple[int, int]:
    """(rank, world size) from torch.distributed, SLURM or torchrun's environment."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    for rank_var, world_var in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_var in os.environ and world_var in os.environ:
            return int(os.environ[rank_var]), int(os.environ[world_var])
    return 0, 1
