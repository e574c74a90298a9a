"""Stage 1: the VQGAN LightningModule (Lightning 2.x manual optimisation, two optimisers); the
objective is `clipgen.models.vqgan_loss.VQGANLoss`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from clipgen.checkpoint import dataclass_from_dict
from clipgen.lit.base import ClipgenModule
from clipgen.metrics.reconstruction import codebook_stats, psnr
from clipgen.models.vqgan import VQGAN, VQGANConfig
from clipgen.models.vqgan_loss import VQGANLoss, VQGANLossConfig


class VQGANModule(ClipgenModule):
    """Trains the VQGAN and its discriminator. Built by Hydra from `configs/stage/vqgan.yaml`."""

    stage = "vqgan"
    # the generator step leaves the discriminator without gradients (and vice versa)
    ddp_unused_parameters = True

    def __init__(self, model: VQGANConfig | Mapping[str, Any],
                 loss: VQGANLossConfig | Mapping[str, Any], lr: float = 4.5e-6,
                 betas: tuple[float, float] = (0.5, 0.9), ema_decay: float | None = None,
                 grad_clip: float | None = None, image_log_every: int = 500,
                 resolution: int | None = None,
                 run_config: dict[str, Any] | None = None) -> None:
        super().__init__(run_config)
        if isinstance(model, Mapping):
            model = VQGANConfig.from_dict(model)
        if isinstance(loss, Mapping):
            loss = dataclass_from_dict(VQGANLossConfig, loss, "vqgan loss")
        check_resolution(model, resolution)
        self.automatic_optimization = False
        self.model = VQGAN(model)
        self.loss = VQGANLoss(loss)
        self.lr, self.betas = lr, tuple(betas)
        self.grad_clip = grad_clip
        self.image_log_every = image_log_every
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))
                    if ema_decay else None)
        self.register_buffer("val_counts", torch.zeros(model.n_embed, dtype=torch.long),
                             persistent=False)

    # --- optimisation -------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        opt_ae = torch.optim.Adam(self.model.parameters(), lr=self.lr, betas=self.betas)
        opt_disc = torch.optim.Adam(self.loss.discriminator.parameters(), lr=self.lr,
                                    betas=self.betas)
        return [opt_ae, opt_disc]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if not batch:  # every sample of this batch was unreadable (skipped and counted)
            return None
        x = batch["image"]
        step = self.global_step  # before the optimiser steps advance it
        opt_ae, opt_disc = self.optimizers()
        xrec, qloss, indices = self.model(x)
        loss, parts = self.loss.generator_loss(x, xrec, qloss, step, self.model.last_layer)
        if "g_loss" in parts:
            self.log_dict({"train/g_loss": parts["g_loss"].detach(),
                           "train/d_weight": parts["d_weight"]})
        opt_ae.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.grad_clip:
            self.clip_gradients(opt_ae, gradient_clip_val=self.grad_clip)
        opt_ae.step()
        if self.loss.disc_active(step):
            d_loss, logits = self.loss.discriminator_loss(x, xrec)
            opt_disc.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            # Step the raw optimiser so that Lightning's global_step counts one step per
            # batch (it counts every LightningOptimizer.step call).
            opt_disc.optimizer.step()
            self.log_dict({"train/d_loss": d_loss.detach(),
                           **{f"train/{k}": v for k, v in logits.items()}})
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        used = torch.unique(indices).numel() / self.model.config.n_embed
        self.log_dict({"train/loss": loss.detach(), "train/rec_loss": parts["rec_loss"].detach(),
                       "train/q_loss": qloss.detach(), "train/psnr": psnr(x, xrec).mean(),
                       "train/batch_code_usage": used}, prog_bar=True)
        if self.image_log_every and step % self.image_log_every == 0:
            self.log_image_grid("train_recon", _pairs(x, xrec), nrow=8, step=step)
        return loss.detach()

    # --- validation ---------------------------------------------------------------------
    def eval_model(self) -> VQGAN:
        """The weights to evaluate and export: the EMA copy when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def on_validation_epoch_start(self) -> None:
        self.val_counts.zero_()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if not batch:  # every sample of this batch was unreadable (skipped and counted)
            return None
        x = batch["image"]
        xrec, _, indices = self.eval_model()(x)
        self.val_counts += torch.bincount(indices.flatten(), minlength=self.val_counts.numel())
        self.log("val/psnr", psnr(x, xrec).mean(), prog_bar=True, sync_dist=True,
                 batch_size=x.shape[0])
        self.log("val/rec_loss", (x - xrec).abs().mean(), sync_dist=True, batch_size=x.shape[0])
        if batch_idx == 0:
            self.log_image_grid("val_recon", _pairs(x, xrec), nrow=8)

    def on_validation_epoch_end(self) -> None:
        counts = self.val_counts.clone()
        if self.trainer.world_size > 1:
            counts = self.all_gather(counts).sum(0)
        usage, perplexity = codebook_stats(counts)
        self.log_dict({"val/codebook_usage": usage, "val/perplexity": perplexity},
                      prog_bar=True, rank_zero_only=True)


def _pairs(x: torch.Tensor, xrec: torch.Tensor, n: int = 8) -> torch.Tensor:
    """Rows alternating inputs and reconstructions for a grid of 8 columns."""
    n = min(n, x.shape[0])
    return torch.cat([x[:n], xrec[:n].clamp(-1, 1)])


def check_resolution(model: VQGANConfig, resolution: int | None) -> None:
    """The data resolution must be the model's and divisible by its downsampling factor."""
    if resolution is not None and model.resolution != resolution:
        raise ValueError(f"model.vqgan.resolution={model.resolution} but "
                         f"resolution={resolution}; they must agree")
    if model.resolution % model.downsample:
        raise ValueError(f"resolution {model.resolution} is not divisible by the downsampling "
                         f"factor {model.downsample}")
