"""The frozen encoders of stage 2 (VQGAN tokenizer and CLIP): encoding images to training
targets, and identifying the encoders by fingerprint so that a cache or a prior is never used
with other ones."""

from __future__ import annotations

from typing import Any

import torch

from clipgen.checkpoint import fingerprint
from clipgen.models.clip import FrozenCLIP
from clipgen.models.vqgan import VQGAN

IDENTITY_KEYS = ("vqgan", "clip", "clip_arch", "n_tokens", "vocab_size", "cond_dim")


def encoder_identity(vqgan: VQGAN, clip: FrozenCLIP) -> dict[str, Any]:
    """What a cache (or a stage-2 model) depends on: the VQGAN and CLIP, by fingerprint."""
    h, w = vqgan.token_grid()
    return {"vqgan": fingerprint(vqgan), "clip": fingerprint(clip.model), "clip_arch": clip.arch,
            "n_tokens": h * w, "vocab_size": vqgan.config.n_embed, "cond_dim": clip.embed_dim,
            "resolution": vqgan.config.resolution}


def check_identity(found: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    """Raise a clear error when `what` was made with another VQGAN or CLIP than expected."""
    diffs = [f"{k}: {found.get(k)!r} there, {expected[k]!r} here"
             for k in IDENTITY_KEYS if k in expected and found.get(k) != expected[k]]
    if diffs:
        raise ValueError(f"{what} was made with other encoders than the ones configured ("
                         + "; ".join(diffs) + "). Use the VQGAN and CLIP it was made with, or "
                         "rebuild it with these")


@torch.no_grad()
def encode_batch(images: torch.Tensor, vqgan: VQGAN, clip: FrozenCLIP
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) images in [-1, 1] to ((B, h*w) tokens, (B, D) CLIP image embeddings)."""
    tokens = vqgan.encode_to_tokens(images).flatten(1)
    return tokens, clip.encode_image(images)
