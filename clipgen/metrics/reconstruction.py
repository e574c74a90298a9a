"""Reconstruction and codebook metrics of a tokenizer: PSNR, codebook usage and perplexity."""

from __future__ import annotations

import torch


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

