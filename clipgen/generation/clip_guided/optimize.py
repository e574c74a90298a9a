"""VQGAN-CLIP: gradient ascent of CLIP similarity over the VQGAN's continuous latent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from clipgen.generation.clip_guided.latents import (
    autocast_for,
    clip_similarity,
    decode_latents,
    image_latents,
    random_cutouts,
    random_latents,
)
from clipgen.models.clip import FrozenCLIP
from clipgen.models.vqgan import VQGAN


@dataclass
class OptimizeConfig:
    steps: int = 100
    lr: float = 0.05
    cutouts: int = 8            # random crops scored per image and step
    cut_min: float = 0.6        # smallest crop side, as a fraction of the image side
    quantize: bool = False      # quantise the latent on the forward pass (straight-through)
    init_noise: float = 0.1     # noise on the random code vectors of the start
    frame_every: int = 10       # keep a progress frame every N steps (0 = none)
    dtype: str = "float32"      # VQGAN and CLIP passes: float32 or, under autocast, bf16 ...


@dataclass
class OptimizeResult:
    images: torch.Tensor        # (B, 3, H, W) in [-1, 1], the final latents decoded
    similarity: torch.Tensor    # (steps + 1, B): full-image CLIP similarity before each step
    frames: list[torch.Tensor]  # (B, 3, H, W) images every frame_every steps


def optimize_latents(vqgan: VQGAN, clip: FrozenCLIP, cond: torch.Tensor, cfg: OptimizeConfig,
                     seed: int = 0, init_images: torch.Tensor | None = None,
                     on_step: Callable[[int, torch.Tensor], None] | None = None
                     ) -> OptimizeResult:
    """One image per row of `cond` (unit-norm CLIP embeddings): Adam on the latent to raise the
    mean CLIP similarity of random cutouts. Starts from random codes or from `init_images`.
    `on_step(step, images)` sees the images of every step (to show progress)."""
    device = cond.device
    with autocast_for(cfg.dtype, device):
        return _optimize(vqgan, clip, cond, cfg, seed, init_images, on_step)


def _optimize(vqgan: VQGAN, clip: FrozenCLIP, cond: torch.Tensor, cfg: OptimizeConfig,
              seed: int, init_images: torch.Tensor | None,
              on_step: Callable[[int, torch.Tensor], None] | None) -> OptimizeResult:
    device = cond.device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        z0 = (image_latents(vqgan, init_images.to(device)) if init_images is not None
              else random_latents(vqgan, len(cond), gen, cfg.init_noise)).float()
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=cfg.lr)
    history, frames = [], []
    for step in range(cfg.steps + 1):
        images = decode_latents(vqgan, z, cfg.quantize)
        with torch.no_grad():
            history.append(clip_similarity(clip, images, cond).cpu())
            if cfg.frame_every and step % cfg.frame_every == 0:
                frames.append(images.detach().cpu())
        if on_step:
            on_step(step, images.detach())
        if step == cfg.steps:
            break
        crops = random_cutouts(images, cfg.cutouts, clip.image_size, cfg.cut_min, gen)
        sim = (clip.encode_image(crops) * cond.repeat(cfg.cutouts, 1)).sum(-1)
        loss = -sim.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return OptimizeResult(images.detach().cpu(), torch.stack(history), frames)
