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
def codes_by_colour(vqgan: VQGAN, num_images: int, batch_size: int = 64, seed: int = 0,
                    holdout: Sequence[Mapping[str, str]] = ()) -> dict[str, set[int]]:
    """The codes the tokenizer gives `num_images` training renders, by object colour."""
    data = ShapesDataset(num_images, image_size=vqgan.config.resolution, seed=seed,
                         split="train", holdout=[dict(h) for h in holdout])
    found: dict[str, set[int]] = {}
    for start in tqdm(range(0, num_images, batch_size), desc="training codes", unit="batch"):
        items = [data[i] for i in range(start, min(start + batch_size, num_images))]
        tokens = vqgan.encode_to_tokens(torch.stack([it["image"] for it in items])).flatten(1)
        for item, row in zip(items, tokens.tolist()):
            found.setdefault(item["attributes"]["color"], set()).update(row)
    return found


@torch.no_grad()
def shapes_reconstruction_report(vqgan: VQGAN, num_images: int = 512, batch_size: int = 64,
                                 seed: int = 0, split: str = "val",
                                 holdout: Sequence[Mapping[str, str]] = (),
                                 colour_reference: int = 0) -> dict[str, Any]:
    """Reconstruct `num_images` Shapes images of `split` (`heldout`: only the `holdout`
    combinations); report mean PSNR, the fraction of codes used over the whole pass,
    perplexity, and per-attribute accuracy of the reconstructions as read by the geometric
    reader. `by_combination`: each colour x shape's images, shape read back, and with
    `colour_reference` > 0 the share of its images holding a code that none of that many
    training renders of the same colour has (a code a prior never saw with that colour)."""
    seen = (codes_by_colour(vqgan, colour_reference, batch_size, seed, holdout)
            if colour_reference else None)
    combos: dict[str, dict[str, int]] = {}
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
        for item, rec, codes in zip(items, xrec, indices.view(len(items), -1).tolist()):
            read = read_attributes(to_pil(rec))
            for k in correct:
                correct[k] += read[k] == item["attributes"][k]
            truth = item["attributes"]
            combo = combos.setdefault(f"{truth['color']} {truth['shape']}",
                                      {"images": 0, "shape": 0, "new_code": 0})
            combo["images"] += 1
            combo["shape"] += read["shape"] == truth["shape"]
            if seen is not None:
                combo["new_code"] += not set(codes) <= seen.get(truth["color"], set())
    usage, perplexity = codebook_stats(counts)
    return {"images": num_images, "psnr_db": round(torch.cat(psnrs).mean().item(), 2),
            "codebook_usage": round(usage, 4), "perplexity": round(perplexity, 1),
            **{f"{k}_read_back": round(v / num_images, 4) for k, v in correct.items()},
            "by_combination": {
                name: {"images": c["images"], "shape_read_back": round(c["shape"] / c["images"], 4),
                       **({"new_code_to_colour": round(c["new_code"] / c["images"], 4)}
                          if seen is not None else {})}
                for name, c in sorted(combos.items())}}
