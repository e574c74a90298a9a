"""Image-folder reader in the ImageNet train layout: `root/<class>/<image>`."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from clipgen.data.skips import SkipCounter
from clipgen.data.transforms import image_transform

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file as RGB (raises on corrupt data)."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


class ImageFolderDataset(Dataset):
    """Images under `root/<class>/`, captioned `caption_template.format(class name)`.

    `class_names` is an optional JSON file mapping folder names (e.g. WordNet ids) to readable
    names. A corrupt image yields None, is counted in `self.skipped`, and is dropped by
    `collate_samples`.
    """

    def __init__(self, root: str | Path, resolution: int = 256, crop: str = "center",
                 hflip: bool = False, class_names: str | Path | None = None,
                 caption_template: str = "a photo of a {}.") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist; see data/README.md "
                                    "for the expected layout root/<class>/<image>")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"no class folders under {self.root}; expected root/<class>/<image>")
        names = json.loads(Path(class_names).read_text()) if class_names else {}
        self.class_names = [names.get(c, c.replace("_", " ")) for c in self.classes]
        self.files = [(p, label) for label, c in enumerate(self.classes)
                      for p in sorted((self.root / c).iterdir())
                      if p.suffix.lower() in IMAGE_SUFFIXES]
        if not self.files:
            raise ValueError(f"no images ({sorted(IMAGE_SUFFIXES)}) under {self.root}")
        self.transform = image_transform(resolution, crop, hflip)
        self.caption_template = caption_template
        self.skipped = SkipCounter()

    def __len__(self) -> int:
        return len(self.files)

    def source_file(self, index: int) -> Path:
        """The file item `index` is read from."""
        return self.files[index][0]

    def __getitem__(self, index: int) -> dict | None:
        path, label = self.files[index]
        try:
            image = self.transform(load_image(path))
        except Exception as error:  # PIL raises many types for bad data: count and skip
            self.skipped.skip(str(path), error)
            return None
        return {"image": image, "label": label, "key": str(path.relative_to(self.root)),
                "caption": self.caption_template.format(self.class_names[label])}
