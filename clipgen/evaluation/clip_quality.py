"""A Shapes CLIP's quality: zero-shot accuracy per attribute (prompt ensembles) and
image-to-text / text-to-image retrieval R@1 on rendered images."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from clipgen.data.shapes import ATTRIBUTE_VALUES
from clipgen.data.shapes_dataset import ShapesDataset
from clipgen.metrics.zero_shot import (
    in_context_accuracy,
    retrieval_r1,
    shape_readings,
    zero_shot_accuracy,
)
from clipgen.models.clip import FrozenCLIP


@torch.no_grad()
def shapes_clip_report(clip: FrozenCLIP, num_images: int = 1024, split: str = "val",
                       holdout: Sequence[Mapping[str, str]] = (), batch_size: int = 256
                       ) -> dict[str, Any]:
    """Zero-shot accuracy of every Shapes attribute (prompt ensembles, and in context: the
    other attributes named truly) and retrieval R@1 over `num_images` renders of `split`;
    for the held-out split also each combination's shape readings (`shape_readings`)."""
    data = ShapesDataset(num_images, image_size=clip.image_size, split=split,
                         holdout=[dict(h) for h in holdout])
    items = [data[i] for i in range(len(data))]
    images = torch.stack([it["image"] for it in items])
    captions = [it["caption"] for it in items]
    image_emb = torch.cat([clip.encode_image(images[i:i + batch_size])
                           for i in range(0, len(items), batch_size)])
    text_emb = torch.cat([clip.encode_text(captions[i:i + batch_size])
                          for i in range(0, len(items), batch_size)])
    truth = {k: [it["attributes"][k] for it in items] for k in ATTRIBUTE_VALUES}
    report: dict[str, Any] = {"split": split, "images": len(items)}
    report.update({f"zero_shot_{k}": round(v, 4)
                   for k, v in zero_shot_accuracy(image_emb, truth, clip.encode_text).items()})
    report.update({f"in_context_{k}": round(v, 4)
                   for k, v in in_context_accuracy(image_emb, truth, clip.encode_text).items()})
    i2t, t2i = retrieval_r1(image_emb, text_emb, captions)
    report.update(i2t_r1=round(i2t, 4), t2i_r1=round(t2i, 4))
    if split == "heldout":  # few combinations: how each one's shape is read
        report["shape_readings"] = shape_readings(image_emb, truth, clip.encode_text)
    return report
