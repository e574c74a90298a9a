"""Image transforms shared by every reader: shorter-side resize, crop, flip, [-1, 1] tensor."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T


def image_transform(resolution: int, crop: str = "center", hflip: bool = False
                    ) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the shorter side to `resolution`, crop a square, optionally flip; return a float
    tensor (3, resolution, resolution) in [-1, 1]."""
    if crop not in ("center", "random"):
        raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
    steps: list[Callable] = [
        T.Resize(resolution, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.CenterCrop(resolution) if crop == "center" else T.RandomCrop(resolution),
    ]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]
    return T.Compose(steps)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (any shape) to uint8 pixel values."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixel values to float images in [-1, 1]."""
    return images.float() / 127.5 - 1


def to_pil(image: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [-1, 1] back to a PIL RGB image."""
    return Image.fromarray(to_uint8(image).permute(1, 2, 0).cpu().numpy())


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image to a (3, H, W) float tensor in [-1, 1] with no resizing."""
    return T.functional.to_tensor(image.convert("RGB")) * 2 - 1
