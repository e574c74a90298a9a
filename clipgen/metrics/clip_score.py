"""CLIP score of image/text pairs in both conventions in use."""

from __future__ import annotations

import torch


def clip_scores(cosines: torch.Tensor) -> dict[str, float]:
    """Mean CLIP score over pairs from their image/text cosines: Hessel et al.'s CLIPScore
    (2.5 * max(cos, 0)) and the 100 * cos convention (as in torchmetrics, clipped at 0)."""
    cos = cosines.double()
    return {"clip_score_hessel": float((2.5 * cos.clamp(min=0)).mean()),
            "clip_score_100": float((100 * cos.clamp(min=0)).mean()),
            "clip_cosine": float(cos.mean())}
