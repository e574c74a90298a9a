"""The VQGAN objective (as taming's `VQLPIPSWithDiscriminator`): pixel reconstruction plus
LPIPS, codebook and commitment terms, and a patch discriminator with hinge loss whose
generator term is balanced by an adaptive weight and starts at a given step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from taming.modules.discriminator.model import NLayerDiscriminator, weights_init
from taming.modules.losses.vqperceptual import hinge_d_loss
from torch import nn

from clipgen.models.lpips import LPIPS


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


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor
                    ) -> torch.Tensor:
    """Balance the GAN term against reconstruction by their gradient norms at the last layer."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


class VQGANLoss(nn.Module):
    """The whole stage-1 objective; its trainable pieces (the discriminator) sit under the key
    prefix `loss.` as in taming."""

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

    def disc_active(self, step: int) -> bool:
        """Whether the GAN terms are on at this global step."""
        return self.cfg.disc_factor > 0 and step >= self.cfg.disc_start

    def generator_loss(self, x: torch.Tensor, xrec: torch.Tensor, codebook_loss: torch.Tensor,
                       step: int, last_layer: torch.Tensor
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The autoencoder's loss and its parts (`rec_loss`, and `g_loss`, `d_weight` once the
        discriminator is on)."""
        nll = self.reconstruction(x, xrec)
        loss = nll + self.cfg.codebook_weight * codebook_loss
        parts = {"rec_loss": nll}
        if self.disc_active(step):
            g_loss = -self.discriminator(xrec).mean()
            d_weight = adaptive_weight(nll, g_loss, last_layer)
            d_weight = d_weight * self.cfg.disc_weight * self.cfg.disc_factor
            loss = loss + d_weight * g_loss
            parts.update(g_loss=g_loss, d_weight=d_weight)
        return loss, parts

    def discriminator_loss(self, x: torch.Tensor, xrec: torch.Tensor
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Hinge loss of the discriminator on real and reconstructed images (both detached)."""
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(xrec.detach())
        d_loss = self.cfg.disc_factor * hinge_d_loss(logits_real, logits_fake)
        return d_loss, {"logits_real": logits_real.detach().mean(),
                        "logits_fake": logits_fake.detach().mean()}
