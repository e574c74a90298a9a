"""What the CLIP-guided generators share: VQGAN latents, their decoding, random cutouts and the
CLIP similarity of images to a condition."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

from clipgen.generation.decoder import resolve_dtype
from clipgen.models.clip import FrozenCLIP
from clipgen.models.vqgan import VQGAN


def autocast_for(dtype: str, device: torch.device) -> AbstractContextManager:
    """The precision of the VQGAN and CLIP passes of a CLIP-guided generator: autocast to
    `dtype` (a sampling dtype name, `auto` included), or nothing for float32. Latents and
    their optimiser stay in fp32."""
    resolved = resolve_dtype(dtype, device)
    if resolved == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=resolved)


def latent_shape(vqgan: VQGAN) -> tuple[int, int, int]:
    h, w = vqgan.token_grid()
    return vqgan.config.embed_dim, h, w


def random_latents(vqgan: VQGAN, n: int, generator: torch.Generator, noise: float = 0.1
                   ) -> torch.Tensor:
    """(n, C, h, w) latents: random code vectors plus Gaussian noise."""
    device = vqgan.quant_conv.weight.device
    h, w = vqgan.token_grid()
    tokens = torch.randint(0, vqgan.config.n_embed, (n, h, w), generator=generator,
                           device=device)
    z = vqgan.quantize.lookup(tokens)
    return z + noise * torch.randn(z.shape, generator=generator, device=device)


def image_latents(vqgan: VQGAN, images: torch.Tensor) -> torch.Tensor:
    """The continuous latents (before quantisation) of (B, 3, H, W) images in [-1, 1]."""
    return vqgan.quant_conv(vqgan.encoder(images))


def decode_latents(vqgan: VQGAN, z: torch.Tensor, quantize: bool) -> torch.Tensor:
    """Images in [-1, 1] from latents: quantised on the forward pass (straight-through
    gradients) or projected where codes lie without rounding (`project`: l2 codes are unit
    vectors, fsq codes bounded)."""
    z = vqgan.quantize(z).z_q if quantize else vqgan.quantize.project(z)
    return vqgan.decode(z).float().clamp(-1, 1)


def random_cutouts(images: torch.Tensor, n: int, size: int, min_fraction: float,
                   generator: torch.Generator, noise: float = 0.02) -> torch.Tensor:
    """`n` random square crops of each image (side between `min_fraction` and all of the image),
    resized to `size`, randomly flipped, with a little Gaussian noise: (n * B, 3, size, size),
    cutout-major."""
    b, _, hgt, wid = images.shape
    side_min = max(1, int(min_fraction * min(hgt, wid)))
    crops = []
    for _ in range(n):
        side = int(torch.randint(side_min, min(hgt, wid) + 1, (1,), generator=generator))
        top = int(torch.randint(0, hgt - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, wid - side + 1, (1,), generator=generator))
        crop = images[:, :, top:top + side, left:left + side]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=True)
        if bool(torch.rand((), generator=generator) < 0.5):
            crop = crop.flip(-1)
        crops.append(crop)
    out = torch.cat(crops)
    return out + noise * torch.randn(out.shape, generator=generator, device=out.device)


def clip_similarity(clip: FrozenCLIP, images: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """(B,) cosine between each image's CLIP embedding and its row of `cond` (unit norm)."""
    return (clip.encode_image(images) * cond).sum(-1)
