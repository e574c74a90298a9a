"""Tokenizer quality on the Shapes world: PSNR, codebook use, and attributes read back from
reconstructions (does an object keep its colour and shape through the tokens?)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm import tqdm

from clipgen.data.shapes import ATTRIBUTE_VALUES
from clipgen.data.shapes_dataset import ShapesDataset
from clipgen.data.transforms import to_pil
from clipgen.metrics.reconstruction import codebook_stats, psnr
from clipgen.metrics.shapes_reader import read_attributes
from clipgen.models.vqgan import VQGAN


@torch.no_grad()
def shapes_reconstruction_report(vqgan: VQGAN, num_images: int = 512, batch_size: int = 64,
                                 seed: int = 0, split: str = "val",
                                 holdout: Sequence[Mapping[str, str]] = ()) -> dict[str, Any]:
    """Reconstruct `num_images` Shapes images of `split` (`heldout`: only the `holdout`
    combinations); report mean PSNR, the fraction of codes used over the whole pass,
    perplexity, and per-attribute accuracy of the reconstructions as read by the geometric
    reader."""
    data = ShapesDataset(num_images, image_size=vqgan.config.resolution, seed=seed, split=split,
                         holdout=[dict(h) for h in holdout])
    counts = torch.zeros(vqgan.config.n_embed, dtype=torch.long)
    psnrs, correct = [], {k: 0 for k in ATTRIBUTE_VALUES}
    for start in tqdm(range(0, num_images, batch_size), desc="reconstruct", unit="batch"):
        items = [data[i] for i in range(start, min(start + batch_size, num_images))]
        x = torch.stack([it["image"] for it in items])
        xrec, _, indices = vqgan(x)
        counts += torch.bincount(indices.flatten(), minlength=counts.numel())
        psnrs.append(psnr(x, xrec))
        for item, rec in zip(items, xrec):
            read = read_attributes(to_pil(rec))
            for k in correct:
                correct[k] += read[k] == item["attributes"][k]
    usage, perplexity = codebook_stats(counts)
    return {"images": num_images, "psnr_db": round(torch.cat(psnrs).mean().item(), 2),
            "codebook_usage": round(usage, 4), "perplexity": round(perplexity, 1),
            **{f"{k}_read_back": round(v / num_images, 4) for k, v in correct.items()}}
