"""Stage 1: the VQGAN LightningModule (Lightning 2.x manual optimisation, two optimisers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from taming.modules.discriminator.model import NLayerDiscriminator, weights_init
from taming.modules.losses.vqperceptual import hinge_d_loss
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from clipgen.lit.base import ClipgenModule
from clipgen.models.lpips import LPIPS
from clipgen.models.vqgan import VQGAN, VQGANConfig


@dataclass
class VQGANLossConfig:
    """Weights of the stage-1 objective (names follow taming's VQLPIPSWithDiscriminator)."""

    pixel_loss: str = "l1"  # "l1" or "l2"
    pixel_weight: float = 1.0
    perceptual_weight: float = 1.0
    lpips_dir: str | None = None  # folder with vgg16-397923af.pth and vgg.pth
    codebook_weight: float = 1.0
    disc_start: int = 10000
    disc_weight: float = 0.8
    disc_factor: float = 1.0
    disc_layers: int = 3
    disc_channels: int = 64


class VQGANLoss(nn.Module):
    """Holds the trainable pieces of the loss, under the key prefix `loss.` as in taming."""

    def __init__(self, cfg: VQGANLossConfig) -> None:
        super().__init__()
        if cfg.pixel_loss not in ("l1", "l2"):
            raise ValueError(f"pixel_loss must be 'l1' or 'l2', got {cfg.pixel_loss!r}")
        self.cfg = cfg
        self.discriminator = NLayerDiscriminator(input_nc=3, ndf=cfg.disc_channels,
                                                 n_layers=cfg.disc_layers)
        self.discriminator.apply(weights_init)
        self.perceptual_loss = LPIPS(cfg.lpips_dir) if cfg.perceptual_weight > 0 else None

    def reconstruction(self, x: torch.Tensor, xrec: torch.Tensor) -> torch.Tensor:
        """Per-pixel reconstruction plus weighted LPIPS, averaged (taming's `nll_loss`)."""
        rec = (x - xrec).abs() if self.cfg.pixel_loss == "l1" else (x - xrec) ** 2
        rec = self.cfg.pixel_weight * rec
        if self.perceptual_loss is not None:
            rec = rec + self.cfg.perceptual_weight * self.perceptual_loss(x, xrec)
        return rec.mean()


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor
                    ) -> torch.Tensor:
    """Balance the GAN term against reconstruction by their gradient norms at the last layer."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (evaluated on the [0, 1] scale)."""
    mse = (((x.clamp(-1, 1) - y.clamp(-1, 1)) / 2) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def codebook_stats(counts: torch.Tensor) -> tuple[float, float]:
    """(fraction of codes used, perplexity) from code counts over a whole pass."""
    total = counts.sum()
    if total == 0:
        return 0.0, 0.0
    p = counts.float() / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float((counts > 0).float().mean()), float(entropy.exp())


class VQGANModule(ClipgenModule):
    stage = "vqgan"
    # the generator step leaves the discriminator without gradients (and vice versa)
    ddp_unused_parameters = True

    def __init__(self, model: VQGANConfig, loss: VQGANLossConfig, lr: float = 4.5e-6,
                 betas: tuple[float, float] = (0.5, 0.9), ema_decay: float | None = None,
                 grad_clip: float | None = None, image_log_every: int = 500,
                 run_config: dict[str, Any] | None = None) -> None:
        super().__init__(run_config)
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

    def disc_active(self) -> bool:
        return self.loss.cfg.disc_factor > 0 and self.global_step >= self.loss.cfg.disc_start

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["image"]
        step = self.global_step  # before the optimiser steps advance it
        opt_ae, opt_disc = self.optimizers()
        xrec, qloss, indices = self.model(x)
        nll = self.loss.reconstruction(x, xrec)
        loss = nll + self.loss.cfg.codebook_weight * qloss
        disc_on = self.disc_active()
        if disc_on:
            g_loss = -self.loss.discriminator(xrec).mean()
            d_weight = adaptive_weight(nll, g_loss, self.model.last_layer)
            d_weight = d_weight * self.loss.cfg.disc_weight * self.loss.cfg.disc_factor
            loss = loss + d_weight * g_loss
            self.log_dict({"train/g_loss": g_loss.detach(), "train/d_weight": d_weight})
        opt_ae.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.grad_clip:
            self.clip_gradients(opt_ae, gradient_clip_val=self.grad_clip)
        opt_ae.step()
        if disc_on:
            logits_real = self.loss.discriminator(x.detach())
            logits_fake = self.loss.discriminator(xrec.detach())
            d_loss = self.loss.cfg.disc_factor * hinge_d_loss(logits_real, logits_fake)
            opt_disc.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            # Step the raw optimiser so that Lightning's global_step counts one step per
            # batch (it counts every LightningOptimizer.step call).
            opt_disc.optimizer.step()
            self.log_dict({"train/d_loss": d_loss.detach(),
                           "train/logits_real": logits_real.detach().mean(),
                           "train/logits_fake": logits_fake.detach().mean()})
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        used = torch.unique(indices).numel() / self.model.config.n_embed
        self.log_dict({"train/loss": loss.detach(), "train/rec_loss": nll.detach(),
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


def build_vqgan_module(cfg: DictConfig) -> VQGANModule:
    """Build the stage-1 module from the run config (`cfg.model` holds `vqgan`, `loss`,
    `optim`)."""
    m = cfg.model
    model_cfg = VQGANConfig.from_dict(OmegaConf.to_container(m.vqgan, resolve=True))
    if model_cfg.resolution != cfg.resolution:
        raise ValueError(f"model.vqgan.resolution={model_cfg.resolution} but "
                         f"resolution={cfg.resolution}; they must agree")
    if cfg.resolution % model_cfg.downsample:
        raise ValueError(f"resolution {cfg.resolution} is not divisible by the downsampling "
                         f"factor {model_cfg.downsample}")
    loss_cfg = VQGANLossConfig(**OmegaConf.to_container(m.loss, resolve=True))
    opt = m.optim
    return VQGANModule(model_cfg, loss_cfg, lr=opt.lr, betas=tuple(opt.betas),
                       ema_decay=opt.get("ema_decay"), grad_clip=opt.get("grad_clip"),
                       image_log_every=m.get("image_log_every", 500),
                       run_config=OmegaConf.to_container(cfg, resolve=True))

