"""Fréchet distances through torchmetrics: Inception (FID) or CLIP image features, blurred
variants (FID-k), and cached reference statistics."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchvision.transforms.functional import gaussian_blur

from clipgen.atomic import write_atomic
from clipgen.checkpoint import load_torch_file
from clipgen.data.transforms import from_uint8
from clipgen.models.clip import FrozenCLIP

REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def blur_images(images: torch.Tensor, radius: float) -> torch.Tensor:
    """Gaussian blur of uint8 (N, 3, H, W) images with standard deviation `radius` pixels (the
    FID-k protocol of DALL-E and CogView); radius 0 returns the images unchanged."""
    if radius <= 0:
        return images
    size = 2 * math.ceil(3 * radius) + 1
    size = min(size, 2 * (min(images.shape[-2:]) // 2) - 1)  # reflect padding needs pad < side
    out = gaussian_blur(images.float(), [size, size], [float(radius)] * 2)
    return out.round().clamp(0, 255).to(torch.uint8)


class CLIPImageFeatures(nn.Module):
    """uint8 images to CLIP image embeddings (unit norm): features for FD_CLIP."""

    def __init__(self, clip: FrozenCLIP) -> None:
        super().__init__()
        self.clip = clip
        self.num_features = clip.embed_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(from_uint8(images))


class FrechetSet:
    """Fréchet distances of one feature network at several blur radii. Real statistics are
    kept across `reset_fake` and can be saved to / loaded from a file."""

    def __init__(self, features: nn.Module, radii: Iterable[float] = (0,)) -> None:
        self.radii = [float(r) for r in radii]
        self.features = features
        self.metrics = {r: FrechetInceptionDistance(feature=features, reset_real_features=False)
                        for r in self.radii}

    def to(self, device: torch.device | str) -> FrechetSet:
        for m in self.metrics.values():
            m.to(device)
        return self

    @torch.no_grad()
    def update(self, images: torch.Tensor, real: bool) -> None:
        """Add uint8 (N, 3, H, W) images to the real or generated statistics."""
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images, got {images.dtype}")
        for r, metric in self.metrics.items():
            metric.update(blur_images(images, r).to(metric.device), real=real)

    def real_count(self) -> int:
        return int(next(iter(self.metrics.values())).real_features_num_samples)

    def compute(self) -> dict[float, float]:
        return {r: float(m.compute()) for r, m in self.metrics.items()}

    def real_state(self) -> dict[str, torch.Tensor]:
        return {f"{r}/{name}": getattr(m, name).detach().cpu()
                for r, m in self.metrics.items() for name in REAL_STATES}

    def load_real_state(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = [f"{r}/{n}" for r in self.radii for n in REAL_STATES if f"{r}/{n}" not in state]
        if missing:
            raise KeyError(f"reference statistics lack {missing}; delete the file to recompute")
        for r, m in self.metrics.items():
            for name in REAL_STATES:
                setattr(m, name, state[f"{r}/{name}"].to(m.device))

    def save_real(self, path: str | Path) -> None:
        state = self.real_state()
        write_atomic(path, lambda tmp: torch.save(state, tmp))

    def load_real(self, path: str | Path) -> None:
        self.load_real_state(load_torch_file(path))


def state_from_npz(path: str | Path, n: int = 50_000) -> dict[str, torch.Tensor]:
    """Real statistics for radius 0 from a reference npz holding `mu` and `sigma` (the format of
    ADM's and pytorch-fid's reference batches). The metric stores sums, so any sample count
    `n` > 1 reproduces exactly the given mean and covariance."""
    with np.load(path) as data:
        if "mu" not in data or "sigma" not in data:
            raise KeyError(f"{path} holds {list(data.keys())}; a reference npz needs mu and sigma")
        mu = torch.from_numpy(data["mu"]).double()
        sigma = torch.from_numpy(data["sigma"]).double()
    return {"0.0/real_features_sum": n * mu,
            "0.0/real_features_cov_sum": (n - 1) * sigma + n * torch.outer(mu, mu),
            "0.0/real_features_num_samples": torch.tensor(n)}
