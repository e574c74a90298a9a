"""A check that data-parallel ranks hold the same weights: DDP keeps them equal only while
every rank applies the same averaged gradients, and a rank-dependent bug (a step skipped on one
rank, a parameter updated outside the optimizer) makes them drift without any error."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


def weights_checksum(module: torch.nn.Module) -> torch.Tensor:
    """Two float64 numbers that change with any weight: the plain sum and a position-weighted
    sum of every parameter and buffer."""
    plain = torch.zeros((), dtype=torch.float64)
    weighted = torch.zeros((), dtype=torch.float64)
    for tensor in module.state_dict().values():
        if tensor.is_floating_point():
            flat = tensor.detach().double().flatten().cpu()
            plain += flat.sum()
            weighted += (flat * torch.linspace(1, 2, len(flat), dtype=torch.float64)).sum()
    return torch.stack([plain, weighted])


class CheckRanksInSync(pl.Callback):
    """At the end of training, gather every rank's weight checksum and fail unless they are
    identical (`check_rank_sync=true` in the training config)."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        local = weights_checksum(pl_module).to(pl_module.device)
        gathered = trainer.strategy.all_gather(local).cpu().view(-1, 2)
        if not (gathered == gathered[0]).all():
            raise RuntimeError(f"ranks hold different weights after training (checksums per "
                               f"rank: {gathered.tolist()})")
        if trainer.is_global_zero:
            message = f"weights identical on {len(gathered)} rank(s) (checksum " \
                      f"{gathered[0, 1].item():.10g})"
            print(message)
            log.info(message)
