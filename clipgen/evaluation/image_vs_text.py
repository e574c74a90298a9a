"""Text versus image conditioning on the Shapes world.

The prior is trained on CLIP image embeddings and sampled from CLIP text embeddings. Sampling
Shapes test renders once from their own image embeddings and once from the text embedding of
a prompt naming all their attributes separates the two sources of attribute errors: what the
prior gets wrong even from an image embedding, and what the text-to-image gap adds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from clipgen.data.datamodule import collate_samples
from clipgen.data.shapes import prompt_for
from clipgen.data.shapes_dataset import ShapesDataset
from clipgen.data.transforms import to_pil
from clipgen.evaluation.prompts import EvalPrompt
from clipgen.generation.sampling import SamplingConfig
from clipgen.generation.text_to_image import TextToImage
from clipgen.metrics.attributes import attribute_accuracy
from clipgen.metrics.shapes_reader import read_attributes

CONDITIONS = ("image", "text")


@torch.no_grad()
def condition_gap(t2i: TextToImage, num_images: int = 64, sampling: SamplingConfig | None = None,
                  batch_size: int = 16, split: str = "test", seed: int = 0, sample_seed: int = 0,
                  holdout: Iterable[Mapping[str, str]] = ()) -> dict[str, Any]:
    """Attribute accuracy of one sample per Shapes render conditioned on the render's CLIP image
    embedding and on the text embedding of `prompt_for(all its attributes)`, with the same
    sampling seeds for both; plus the mean cosine between the two embeddings. `split="heldout"`
    renders only the `holdout` colour x shape combinations (those the prior never saw), and
    reports each one's shape accuracy apart (`by_combination`)."""
    data = ShapesDataset(num_images, image_size=t2i.vqgan.config.resolution, seed=seed,
                         split=split, holdout=holdout)
    reads: dict[str, list[dict]] = {name: [] for name in CONDITIONS}
    prompts: list[EvalPrompt] = []
    cosines = []
    loader = DataLoader(data, batch_size=batch_size, collate_fn=collate_samples)
    for b, batch in enumerate(loader):
        columns = batch["attributes"]
        attrs = [dict(zip(columns, values)) for values in zip(*columns.values())]
        texts = [prompt_for(a) for a in attrs]
        prompts += [EvalPrompt(text, a, f"{a['color']} {a['shape']}")
                    for text, a in zip(texts, attrs)]
        conds = {"image": t2i.image_conditions(batch["image"]), "text": t2i.text_conditions(texts)}
        cosines.append((conds["image"].clip * conds["text"].clip).sum(-1).cpu())
        for name in CONDITIONS:
            results = t2i.generate(conds[name], sampling=sampling, seed=sample_seed + b,
                                   batch_size=len(texts))
            reads[name] += [read_attributes(to_pil(r.images[0])) for r in results]
    report: dict[str, Any] = {"images": num_images, "split": split,
                              "text_image_cosine": round(torch.cat(cosines).mean().item(), 4)}
    by_combination: dict[str, dict[str, Any]] = {}
    for name in CONDITIONS:
        accuracy = attribute_accuracy(reads[name], prompts)
        for key, value in accuracy.pop("all").items():
            report[f"{name}_{key}"] = value["accuracy"]
        if split == "heldout":  # few combinations: each one's shape apart
            for combo, values in accuracy.items():
                by_combination.setdefault(combo, {"images": values["shape"]["n"]})[
                    f"{name}_shape"] = values["shape"]["accuracy"]
    if by_combination:
        report["by_combination"] = dict(sorted(by_combination.items()))
    return report
