"""Precomputed stage-2 training data: VQGAN tokens (uint16) and CLIP image embeddings (fp16).

Layout of a cache folder: one `part-<rank>/` per process, each with `tokens.npy` (N, n_tokens),
`cond.npy` (N, cond_dim) and `meta.json` (which VQGAN and CLIP made it, by fingerprint).
With `flip`, every image is also stored horizontally flipped (as in CLIP-GEN's training).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from clipgen.checkpoint import fingerprint
from clipgen.models.clip import FrozenCLIP
from clipgen.models.vqgan import VQGAN


def encoder_identity(vqgan: VQGAN, clip: FrozenCLIP) -> dict[str, Any]:
    """What a cache (or a stage-2 model) depends on: the VQGAN and CLIP, by fingerprint."""
    h, w = vqgan.token_grid()
    return {"vqgan": fingerprint(vqgan), "clip": fingerprint(clip.model), "clip_arch": clip.arch,
            "n_tokens": h * w, "vocab_size": vqgan.config.n_embed, "cond_dim": clip.embed_dim,
            "resolution": vqgan.config.resolution}


@torch.no_grad()
def encode_batch(images: torch.Tensor, vqgan: VQGAN, clip: FrozenCLIP
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) images in [-1, 1] to ((B, h*w) tokens, (B, D) CLIP image embeddings)."""
    tokens = vqgan.encode_to_tokens(images).flatten(1)
    return tokens, clip.encode_image(images)


def write_cache_part(batches: Iterable[dict], vqgan: VQGAN, clip: FrozenCLIP, out_dir: str | Path,
                     rank: int = 0, flip: bool = True, device: str | torch.device = "cpu",
                     total: int | None = None) -> Path:
    """Encode every batch (dicts with "image") and write this process's part of the cache."""
    identity = encoder_identity(vqgan, clip)
    if identity["vocab_size"] > np.iinfo(np.uint16).max + 1:
        raise ValueError(f"codebook of {identity['vocab_size']} codes does not fit uint16")
    tokens, conds = [], []
    for batch in tqdm(batches, desc=f"precompute part {rank}", total=total):
        if not batch:
            continue
        images = batch["image"].to(device)
        views = [images, images.flip(-1)] if flip else [images]
        for view in views:
            t, c = encode_batch(view, vqgan, clip)
            tokens.append(t.cpu().numpy().astype(np.uint16))
            conds.append(c.cpu().numpy().astype(np.float16))
    if not tokens:
        raise ValueError("no images to precompute: the dataset (or this process's share of "
                         "it) is empty")
    part = Path(out_dir) / f"part-{rank:05d}"
    part.mkdir(parents=True, exist_ok=True)
    np.save(part / "tokens.npy", np.concatenate(tokens))
    np.save(part / "cond.npy", np.concatenate(conds))
    meta = {**identity, "flip": flip, "rows": int(sum(len(t) for t in tokens))}
    (part / "meta.json").write_text(json.dumps(meta, indent=2))
    return part


class PrecomputedDataset(Dataset):
    """Map-style view over every part of a cache: {"tokens": int64 (n,), "cond": float32 (D,)}."""

    def __init__(self, path: str | Path, expect: dict[str, Any] | None = None) -> None:
        root = Path(path)
        parts = sorted(root.glob("part-*"))
        if not parts:
            raise FileNotFoundError(f"no precomputed cache under {root}: build one with "
                                    "`python precompute.py ...` (see README)")
        self.meta = json.loads((parts[0] / "meta.json").read_text())
        for p in parts[1:]:
            other = json.loads((p / "meta.json").read_text())
            if {k: v for k, v in other.items() if k != "rows"} != \
                    {k: v for k, v in self.meta.items() if k != "rows"}:
                raise ValueError(f"cache parts {parts[0].name} and {p.name} were made with "
                                 "different encoders")
        if expect is not None:
            check_identity(self.meta, expect, f"precomputed cache {root}")
        self.tokens = [np.load(p / "tokens.npy", mmap_mode="r") for p in parts]
        self.cond = [np.load(p / "cond.npy", mmap_mode="r") for p in parts]
        self.offsets = np.cumsum([0] + [len(t) for t in self.tokens])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows")
        part = int(np.searchsorted(self.offsets, index, side="right") - 1)
        row = index - int(self.offsets[part])
        return {"tokens": torch.from_numpy(self.tokens[part][row].astype(np.int64)),
                "cond": torch.from_numpy(self.cond[part][row].astype(np.float32))}


def check_identity(found: dict[str, Any], expected: dict[str, Any], what: str) -> None:
    """Raise a clear error when `what` was made with another VQGAN or CLIP than expected."""
    diffs = [f"{k}: {found.get(k)!r} there, {expected[k]!r} here"
             for k in ("vqgan", "clip", "clip_arch", "n_tokens", "vocab_size", "cond_dim")
             if k in expected and found.get(k) != expected[k]]
    if diffs:
        raise ValueError(f"{what} was made with other encoders than the ones configured ("
                         + "; ".join(diffs) + "). Use the VQGAN and CLIP it was made with, or "
                         "rebuild it with these")
