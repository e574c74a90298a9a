"""Map-style dataset over the Shapes world."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from torch.utils.data import Dataset

from clipgen.data.shapes import ATTRIBUTE_VALUES, ShapesWorld, check_attribute_names
from clipgen.data.transforms import pil_to_tensor


class ShapesDataset(Dataset):
    """`length` deterministic Shapes samples: dicts with an image tensor in [-1, 1], a caption,
    the attribute words and a key; with `captions_per_image` > 1 also "captions", that many
    captions of the same image from different templates (the first is "caption"); with
    `negative_captions` > 0 also "negative_captions", that many hard negatives of "caption"
    (one attribute changed, drawn from `negative_attributes` where the caption names one);
    `colorless_rate`: that share of images drawn as gray silhouettes, captioned without a
    colour (CLIP training; `ShapesWorld`)."""

    def __init__(self, length: int, image_size: int = 64, seed: int = 0, split: str = "train",
                 holdout: Iterable[Mapping[str, str]] = (), full_caption_rate: float = 0.0,
                 captions_per_image: int = 1, negative_captions: int = 0,
                 negative_attributes: Sequence[str] = tuple(ATTRIBUTE_VALUES),
                 colorless_rate: float = 0.0) -> None:
        if length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        self.length = length
        self.captions_per_image = captions_per_image
        if negative_captions < 0:
            raise ValueError(f"negative_captions must be >= 0, got {negative_captions}")
        self.negative_captions = negative_captions
        self.negative_attributes = check_attribute_names(negative_attributes)
        self.world = ShapesWorld(image_size=image_size, seed=seed, split=split,
                                 holdout=list(holdout), full_caption_rate=full_caption_rate,
                                 colorless_rate=colorless_rate)

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
        if self.negative_captions:
            out["negative_captions"] = self.world.negative_captions(
                index, self.negative_captions, self.negative_attributes)
        return out
