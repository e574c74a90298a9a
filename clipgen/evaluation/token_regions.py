"""Where a prior's token loss goes on the Shapes world: tokens covering the object, plain
background tokens near it, background far from it, and the image border.

Background tokens near an object are flat pixels, yet a tokenizer whose encoder sees the
object may give them object-dependent codes; the prior must then model those codes too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from clipgen.data.datamodule import collate_samples
from clipgen.data.shapes_dataset import ShapesDataset
from clipgen.generation.text_to_image import TextToImage

REGIONS = ("object", "near background", "far background", "border")


def token_regions(images: torch.Tensor, grid: tuple[int, int], near_px: int = 8
                  ) -> torch.Tensor:
    """(N, 3, H, W) Shapes images in [-1, 1] to (N, h, w) region indices into REGIONS: 0 when
    the token's patch holds object pixels, 1 when an object pixel lies within `near_px`
    pixels of it, else 3 on the outer ring of tokens and 2 inside."""
    h, w = grid
    background = images[:, :, :1, :1]  # the corner pixel is always background
    obj = ((images - background).abs().amax(1, keepdim=True) > 0.05).float()
    near = F.max_pool2d(obj, 2 * near_px + 1, stride=1, padding=near_px)
    on_obj = F.adaptive_max_pool2d(obj, (h, w))[:, 0] > 0
    on_near = F.adaptive_max_pool2d(near, (h, w))[:, 0] > 0
    border = torch.zeros(h, w, dtype=torch.bool)
    border[0] = border[-1] = border[:, 0] = border[:, -1] = True
    regions = torch.where(border, 3, 2).expand(len(images), h, w).clone()
    regions[on_near] = 1
    regions[on_obj] = 0
    return regions


@torch.no_grad()
def token_loss_by_region(t2i: TextToImage, num_images: int = 128, batch_size: int = 64,
                         split: str = "val", seed: int = 0) -> dict[str, Any]:
    """Teacher-forced token loss (nats) of the prior on Shapes images conditioned on their
    own CLIP image embeddings, split by region: tokens per image, mean loss per token, loss
    per image and share of the total."""
    vq = t2i.vqgan
    data = ShapesDataset(num_images, image_size=vq.config.resolution, seed=seed, split=split)
    grid = vq.token_grid()
    losses, regions = [], []
    for batch in DataLoader(data, batch_size=batch_size, collate_fn=collate_samples):
        x = batch["image"].to(t2i.device)
        tokens = vq.encode_to_tokens(x).view(len(x), -1)
        logits = t2i.prior(t2i.image_conditions(x).prior, tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="none")
        losses.append(loss.view(len(x), -1).cpu())
        regions.append(token_regions(x.cpu(), grid).view(len(x), -1))
    loss, region = torch.cat(losses), torch.cat(regions)
    total = loss.sum().item()
    report: dict[str, Any] = {"images": num_images, "tokens_per_image": loss.shape[1],
                              "nats_per_image": round(total / num_images, 1),
                              "nats_per_token": round(loss.mean().item(), 3)}
    for i, name in enumerate(REGIONS):
        mask = region == i
        key = name.replace(" ", "_")
        report[f"{key}_tokens"] = round(mask.sum().item() / num_images, 1)
        report[f"{key}_nats_per_token"] = round(loss[mask].mean().item(), 3) if mask.any() else None
        report[f"{key}_nats_per_image"] = round(loss[mask].sum().item() / num_images, 1)
        report[f"{key}_share"] = round(loss[mask].sum().item() / total, 3)
    return report
