"""Image-folder reader in the ImageNet train layout: `root/<class>/<image>`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps
from torch.utils.data import Dataset

from clipgen.data.skips import SkipCounter
from clipgen.data.transforms import image_transform

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def load_image(source: str | Path | IO[bytes]) -> Image.Image:
    """Open and fully decode an image (a file or a binary stream) as RGB, turned upright by its
    EXIF orientation as cameras record it (raises on corrupt data)."""
    with Image.open(source) as img:
        img.load()
        return ImageOps.exif_transpose(img).convert("RGB")


WNID = re.compile(r"n\d{8}")


def read_class_names(path: str | Path) -> dict[str, str]:
    """{folder name: readable name} from a JSON file: the common `imagenet_class_index.json`
    (`{"0": ["n01440764", "tench"], ...}`) or a plain `{"n01440764": "tench", ...}`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class names file {path} not found (e.g. imagenet_class_index"
                                ".json; see data/README.md)")
    data = json.loads(path.read_text())
    if data and all(isinstance(v, list) and len(v) == 2 for v in data.values()):
        return {wnid: name.replace("_", " ") for wnid, name in data.values()}
    if all(isinstance(v, str) for v in data.values()):
        return dict(data)
    raise ValueError(f"{path}: expected {{\"0\": [\"n01440764\", \"tench\"]}} "
                     "(imagenet_class_index.json) or {\"n01440764\": \"tench\"}")


def readable_class_names(classes: list[str], names_file: str | Path | None
                         ) -> list[str | None]:
    """A readable name per class folder: from `names_file` when given (every folder must be
    named there), else the folder name with underscores as spaces. A WordNet id (n01440764)
    is never taken for a name: without a names file its name is None."""
    if names_file is None:
        return [None if WNID.fullmatch(c) else c.replace("_", " ") for c in classes]
    names = read_class_names(names_file)
    unnamed = [c for c in classes if c not in names]
    if unnamed:
        raise ValueError(f"{names_file} names no class for {len(unnamed)} folder(s) "
                         f"({', '.join(unnamed[:3])}...)")
    return [names[c] for c in classes]


class ImageFolderDataset(Dataset):
    """Images under `root/<class>/`, captioned `caption_template.format(class name)`.

    `class_names` is an optional JSON file naming the folders (see `read_class_names`); a
    class without a name (a WordNet id folder and no file) has an empty caption. A corrupt
    image yields None, is counted in `self.skipped`, and is dropped by
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
        self.class_names = readable_class_names(self.classes, class_names)
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
                "caption": self.caption_template.format(name)
                if (name := self.class_names[label]) else ""}
