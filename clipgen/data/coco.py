"""MS-COCO captions: `captions_val2014.json` plus its image folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from clipgen.data.image_folder import load_image
from clipgen.data.skips import SkipCounter
from clipgen.data.transforms import image_transform


def load_coco_captions(annotations: str | Path) -> tuple[dict[int, str], list[dict]]:
    """Read a COCO captions file: ({image_id: file_name}, [{image_id, caption, id}, ...])."""
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"COCO captions file {path} not found; download "
                                "annotations_trainval2014.zip (see data/README.md) and point "
                                "data.annotations at captions_val2014.json")
    data = json.loads(path.read_text())
    files = {int(im["id"]): im["file_name"] for im in data["images"]}
    anns = sorted(data["annotations"], key=lambda a: int(a["id"]))
    return files, anns


def draw_captions(annotations: list[dict], n: int, seed: int) -> list[dict]:
    """`n` caption records drawn without replacement with a fixed seed (the usual 30k protocol)."""
    if n > len(annotations):
        raise ValueError(f"asked for {n} captions but the file has {len(annotations)}")
    order = np.random.default_rng(seed).permutation(len(annotations))[:n]
    return [annotations[i] for i in sorted(order)]


COCO_MODES = ("caption", "image")


def coco_items(annotations: list[dict], mode: str = "caption", num_samples: int | None = None,
               seed: int = 0) -> list[dict]:
    """The caption records a COCO reader or suite uses, from `annotations` sorted by id (as
    `load_coco_captions` returns them). `mode="caption"`: every caption; `mode="image"`: one
    per image, its first caption (lowest annotation id). With
    `num_samples`, that many are drawn without replacement with `seed`: in caption mode the
    "30k captions" protocol (an image can come up several times: about 22.3k distinct images of
    val2014), in image mode the "30k distinct images" protocol."""
    if mode not in COCO_MODES:
        raise ValueError(f"COCO mode must be one of {COCO_MODES}, got {mode!r}")
    items = annotations
    if mode == "image":
        seen: set[int] = set()
        items = [a for a in items if not (a["image_id"] in seen or seen.add(a["image_id"]))]
    if num_samples is not None:
        items = draw_captions(items, num_samples, seed)
    return items


class CocoCaptionsDataset(Dataset):
    """One item per caption (`mode="caption"`) or per image with its first caption
    (`mode="image"`), all or `num_samples` drawn (see `coco_items`); every item also carries
    all captions of its image ("captions"). Corrupt images yield None and are counted in
    `self.skipped`."""

    def __init__(self, annotations: str | Path, image_dir: str | Path, resolution: int = 256,
                 crop: str = "center", hflip: bool = False, mode: str = "caption",
                 num_samples: int | None = None, seed: int = 0) -> None:
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder {self.image_dir} not found "
                                    "(e.g. val2014/); see data/README.md")
        self.files, anns = load_coco_captions(annotations)
        self.items = coco_items(anns, mode, num_samples, seed)
        self.image_captions: dict[int, list[str]] = {}
        for a in anns:  # every caption of an image, in annotation order
            self.image_captions.setdefault(int(a["image_id"]), []).append(a["caption"].strip())
        self.transform = image_transform(resolution, crop, hflip)
        self.skipped = SkipCounter()

    def __len__(self) -> int:
        return len(self.items)

    def source_file(self, index: int) -> Path:
        """The image file item `index` is read from."""
        return self.image_dir / self.files[int(self.items[index]["image_id"])]

    def __getitem__(self, index: int) -> dict | None:
        ann = self.items[index]
        path = self.source_file(index)
        try:
            image = self.transform(load_image(path))
        except Exception as error:  # missing or corrupt file: count and skip
            self.skipped.skip(str(path), error)
            return None
        return {"image": image, "caption": ann["caption"].strip(), "key": str(ann["id"]),
                "image_id": int(ann["image_id"]),
                "captions": self.image_captions[int(ann["image_id"])]}
