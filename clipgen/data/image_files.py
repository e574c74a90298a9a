"""Reader for a plain folder of images (any depth), each with an optional same-name `.txt`
caption, split into training and validation images by a seeded held-out fraction."""

from __future__ import annotations

import random
from pathlib import Path

from torch.utils.data import Dataset

from clipgen.data.image_folder import IMAGE_SUFFIXES, load_image
from clipgen.data.skips import SkipCounter
from clipgen.data.transforms import image_transform

SPLITS = ("train", "val", "all")


def find_images(root: Path) -> list[Path]:
    """Every image file under `root`, recursively, in a fixed (sorted) order; hidden files and
    folders (a leading dot) are left out."""
    return sorted(p for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def held_out(files: list[Path], fraction: float, seed: int) -> set[Path]:
    """The validation share of `files`: round(fraction x count) of them (at least one when the
    fraction is above 0), drawn by `seed`. The draw depends on the file set and the seed only."""
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return set()
    count = max(1, round(fraction * len(files)))
    if count >= len(files):
        raise ValueError(f"val_fraction={fraction} of {len(files)} images leaves none to train "
                         "on; lower val_fraction or add images")
    return set(random.Random(seed).sample(files, count))


def read_caption(image: Path) -> str:
    """The caption beside an image (`photo.png` -> `photo.txt`), stripped; "" when none."""
    text = image.with_suffix(".txt")
    return text.read_text(encoding="utf-8").strip() if text.is_file() else ""


class ImageFilesDataset(Dataset):
    """The images under `root` (recursively), captioned by same-name `.txt` files where present.

    `split` picks the training images, the held-out validation images (`val_fraction` of the
    folder, drawn by `split_seed`; both splits of one folder must be given the same two), or
    `all` (a folder that is a validation set of its own). With `require_caption`, images
    without a caption are left out (the CLIP stage). A corrupt image yields None, is
    counted in `self.skipped` and dropped by `collate_samples`.
    """

    def __init__(self, root: str | Path, split: str = "all", val_fraction: float = 0.05,
                 split_seed: int = 0, resolution: int = 256, crop: str = "center",
                 hflip: bool = False, require_caption: bool = False) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist: set data.train.root "
                                    "(or data.val.root) to a folder of images (see data/README.md)")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        files = find_images(self.root)
        if not files:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under "
                             f"{self.root}")
        if split == "all":
            self.files = files
        else:
            val = held_out(files, val_fraction, split_seed)
            if split == "val" and not val:
                raise ValueError("split=val with val_fraction=0 holds out no image: set "
                                 "data.val_fraction above 0, or data.val=null to train "
                                 "without validation")
            self.files = [f for f in files if (f in val) == (split == "val")]
        if require_caption:
            self.files = [f for f in self.files if read_caption(f)]
            if not self.files:
                raise ValueError(f"no image of the {split} split under {self.root} has a "
                                 "caption (a same-name .txt file), and this stage needs them")
        self.split = split
        self.transform = image_transform(resolution, crop, hflip)
        self.skipped = SkipCounter()

    def __len__(self) -> int:
        return len(self.files)

    def source_file(self, index: int) -> Path:
        """The file item `index` is read from."""
        return self.files[index]

    def __getitem__(self, index: int) -> dict | None:
        path = self.files[index]
        try:
            image = self.transform(load_image(path))
            caption = read_caption(path)
        except Exception as error:  # PIL raises many types for bad data: count and skip
            self.skipped.skip(str(path), error)
            return None
        return {"image": image, "key": str(path.relative_to(self.root)), "caption": caption}
