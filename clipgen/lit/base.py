"""What every clipgen LightningModule shares: config and package versions in checkpoints,
image grids written to the run folder and the logger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from torchvision.utils import make_grid

from clipgen.checkpoint import package_versions
from clipgen.data.transforms import to_pil
from clipgen.run_info import git_commit


class ClipgenModule(pl.LightningModule):
    """Base LightningModule: `run_config` (the whole resolved run config as a dict) and the
    installed package versions are stored in every checkpoint under `clipgen`."""

    stage: str = ""
    ddp_unused_parameters: bool = False  # some parameters get no gradient in some steps

    def __init__(self, run_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.run_config = run_config or {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not hasattr(self, "_code_version"):
            self._code_version = git_commit()
        checkpoint["clipgen"] = {"stage": self.stage, "config": self.run_config,
                                 "versions": package_versions(), "git": self._code_version}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Under FSDP, clip by the gradient norm over every shard with FSDP's own
        `clip_grad_norm_` (Lightning's FSDP precision refuses norm clipping); else as
        Lightning does."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        sharded = self._trainer is not None and isinstance(self.trainer.model,
                                                           FullyShardedDataParallel)
        if sharded and gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    @rank_zero_only
    def log_image_grid(self, name: str, images: torch.Tensor, nrow: int, step: int | None = None
                       ) -> Path | None:
        """Save a grid of (N, 3, H, W) images in [-1, 1] as run_dir/images/<name>_<step>.png
        and send it to wandb when that is the logger. `step` defaults to the global step."""
        step = self.global_step if step is None else step
        grid = to_pil(make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow,
                                padding=1, pad_value=1.0))
        run_dir = self.run_config.get("run_dir")
        path = None
        if run_dir:
            path = Path(run_dir) / "images" / f"{name}_{step:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            grid.save(path)
        if isinstance(self.logger, WandbLogger):
            self.logger.log_image(key=name, images=[grid], step=step)
        return path
