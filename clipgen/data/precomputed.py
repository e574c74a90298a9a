"""Precomputed stage-2 training data: VQGAN tokens (uint16) and CLIP image embeddings (fp16),
optionally with captions.

Layout of a cache folder: one `part-<rank>/` per process, each with `tokens.npy` (N, n_tokens),
`cond.npy` (N, cond_dim) and `meta.json` (which VQGAN and CLIP made it, by fingerprint).
With `flip`, every image is also stored horizontally flipped (as in CLIP-GEN's training).
A cache with captions (for the supervised priors) also holds up to K captions per image:
`captions.npy` (N, K, L) caption token ids (uint16, all-padding rows where an image has fewer)
and `caption_cond.npy` (N, K, cond_dim) their CLIP text embeddings (fp16); `meta.json` records
the tokenizer under "captions".
This module only reads and writes the files; `clipgen.jobs.build_cache` encodes the images.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


def check_vocab_fits(vocab_size: int) -> None:
    """Tokens are stored as uint16: refuse a larger codebook before any work."""
    if vocab_size > np.iinfo(np.uint16).max + 1:
        raise ValueError(f"codebook of {vocab_size} codes does not fit the cache's uint16 tokens")


def write_cache_part(tokens: Iterable[np.ndarray], conds: Iterable[np.ndarray],
                     meta: dict[str, Any], out_dir: str | Path, rank: int = 0,
                     captions: Iterable[np.ndarray] | None = None,
                     caption_conds: Iterable[np.ndarray] | None = None) -> Path:
    """Write one process's part of a cache: the (n, n_tokens) token and (n, D) condition
    arrays of every chunk, concatenated, with `meta` (what encoded them) beside them; with
    `captions`, also the (n, K, L) caption ids and (n, K, D) caption embeddings of each chunk
    (`meta["captions"]` then names the tokenizer)."""
    tokens, conds = list(tokens), list(conds)
    if not tokens:
        raise ValueError("no images to precompute: the dataset (or this process's share of "
                         "it) is empty")
    check_vocab_fits(meta["vocab_size"])
    part = Path(out_dir) / f"part-{rank:05d}"
    part.mkdir(parents=True, exist_ok=True)
    all_tokens = np.concatenate(tokens).astype(np.uint16)
    np.save(part / "tokens.npy", all_tokens)
    np.save(part / "cond.npy", np.concatenate(conds).astype(np.float16))
    if captions is not None:
        if "captions" not in meta:
            raise ValueError("a cache with captions must record its tokenizer in "
                             "meta['captions']")
        ids = np.concatenate(list(captions)).astype(np.uint16)
        if len(ids) != len(all_tokens):
            raise ValueError(f"{len(ids)} caption rows for {len(all_tokens)} images")
        np.save(part / "captions.npy", ids)
        np.save(part / "caption_cond.npy",
                np.concatenate(list(caption_conds or [])).astype(np.float16))
    (part / "meta.json").write_text(json.dumps({**meta, "rows": len(all_tokens)}, indent=2))
    return part


class PrecomputedDataset(Dataset):
    """Map-style view over every part of a cache: {"tokens": int64 (n,), "cond": float32 (D,)},
    and for a cache with captions also "captions" int64 (K, L) and "caption_cond" float32
    (K, D) (a trainer draws one caption per image and visit)."""

    def __init__(self, path: str | Path) -> None:
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
        self.tokens = [np.load(p / "tokens.npy", mmap_mode="r") for p in parts]
        self.cond = [np.load(p / "cond.npy", mmap_mode="r") for p in parts]
        # per part: (caption ids, caption embeddings), for a cache with captions
        self.captions = None
        if "captions" in self.meta:
            self.captions = [(np.load(p / "captions.npy", mmap_mode="r"),
                              np.load(p / "caption_cond.npy", mmap_mode="r")) for p in parts]
        self.offsets = np.cumsum([0] + [len(t) for t in self.tokens])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows")
        part = int(np.searchsorted(self.offsets, index, side="right") - 1)
        row = index - int(self.offsets[part])
        out = {"tokens": torch.from_numpy(self.tokens[part][row].astype(np.int64)),
               "cond": torch.from_numpy(self.cond[part][row].astype(np.float32))}
        if self.captions is not None:
            ids, emb = self.captions[part]
            out["captions"] = torch.from_numpy(ids[row].astype(np.int64))
            out["caption_cond"] = torch.from_numpy(emb[row].astype(np.float32))
        return out
