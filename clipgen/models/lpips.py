"""LPIPS perceptual distance (VGG16 features + learned linear heads) from local weight files.

taming's LPIPS downloads its weights at construction; this one takes two local files and fails
with a message naming them when they are missing:
- the torchvision VGG16 weights `vgg16-397923af.pth`
- the LPIPS linear heads `vgg.pth` (taming's / richzhang's `vgg_lpips`)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from taming.modules.losses.lpips import NetLinLayer, ScalingLayer, normalize_tensor
from torch import nn
from torchvision.models import vgg16

from clipgen.checkpoint import load_state_dict_strict, load_torch_file

VGG_FILE = "vgg16-397923af.pth"
LPIPS_FILE = "vgg.pth"
CHANNELS = (64, 128, 256, 512, 512)
SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


def default_weights_dir() -> Path:
    """The torch hub cache, where torchvision would store VGG16: $TORCH_HOME/hub/checkpoints."""
    home = os.environ.get("TORCH_HOME", os.path.join(os.path.expanduser("~"), ".cache", "torch"))
    return Path(home) / "hub" / "checkpoints"


def missing_weights_message(missing: list[Path]) -> str:
    return ("LPIPS perceptual loss needs local weight files, not found: "
            + ", ".join(str(p) for p in missing)
            + f". Put torchvision's {VGG_FILE} (download.pytorch.org/models/{VGG_FILE}) and the "
            f"LPIPS VGG heads {LPIPS_FILE} (from the richzhang/PerceptualSimilarity or "
            "taming-transformers repository) in that folder, or set "
            "model.loss.lpips_dir=<folder>; or disable the term with "
            "model.loss.perceptual_weight=0.")


class LPIPS(nn.Module):
    """Frozen LPIPS distance between two image batches in [-1, 1]; returns (B, 1, 1, 1)."""

    def __init__(self, weights_dir: str | Path | None = None) -> None:
        super().__init__()
        folder = Path(weights_dir) if weights_dir else default_weights_dir()
        vgg_path, lin_path = folder / VGG_FILE, folder / LPIPS_FILE
        missing = [p for p in (vgg_path, lin_path) if not p.is_file()]
        if missing:
            raise FileNotFoundError(missing_weights_message(missing))
        self.scaling_layer = ScalingLayer()
        features = vgg16(weights=None)
        load_state_dict_strict(features, load_torch_file(vgg_path), what=VGG_FILE)
        self.slices = nn.ModuleList(nn.Sequential(*features.features[a:b]) for a, b in SLICES)
        self.lins = nn.ModuleList(NetLinLayer(c, use_dropout=True) for c in CHANNELS)
        lin_state = {k.replace("lin", "", 1): v
                     for k, v in load_torch_file(lin_path).items()}
        load_state_dict_strict(self.lins, lin_state, what=LPIPS_FILE)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # always frozen, dropout off

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ha, hb = self.scaling_layer(a), self.scaling_layer(b)
        total = 0.0
        for block, lin in zip(self.slices, self.lins):
            ha, hb = block(ha), block(hb)
            diff = (normalize_tensor(ha) - normalize_tensor(hb)) ** 2
            total = total + lin.model(diff).mean(dim=(2, 3), keepdim=True)
        return total
