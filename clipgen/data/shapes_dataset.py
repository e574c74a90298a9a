"""Map-style dataset over the Shapes world."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch.utils.data import Dataset

from clipgen.data.shapes import ShapesWorld
from clipgen.data.transforms import pil_to_tensor


class ShapesDataset(Dataset):
    """`length` deterministic Shapes samples: dicts with an image tensor in [-1, 1], a caption,
    the attribute words and a key; with `captions_per_image` > 1 also "captions", that many
    captions of the same image from different templates (the first is "caption")."""

    def __init__(self, length: int, image_size: int = 64, seed: int = 0, split: str = "train",
                 holdout: Iterable[Mapping[str, str]] = (), full_caption_rate: float = 0.0,
                 captions_per_image: int = 1) -> None:
        if length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        self.length = length
        self.captions_per_image = captions_per_image
        self.world = ShapesWorld(image_size=image_size, seed=seed, split=split,
                                 holdout=list(holdout), full_caption_rate=full_caption_rate)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        sample = self.world[index]
        out = {
            "image": pil_to_tensor(sample.image),
            "caption": sample.caption,
            "attributes": sample.record.attributes(),
            "key": f"{self.world.split}-{index:09d}",
        }
        if self.captions_per_image > 1:
            out["captions"] = self.world.captions(index, self.captions_per_image)
        return out
