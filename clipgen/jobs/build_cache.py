"""Build the stage-2 cache: encode the configured dataset's splits once."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, IterableDataset, Subset
from tqdm import tqdm

from clipgen.data.datamodule import collate_samples, split_configured
from clipgen.data.precomputed import check_vocab_fits, write_cache_part
from clipgen.data.skips import describe_skips, skip_summary
from clipgen.distributed import process_rank
from clipgen.models.caption_tokens import CaptionTokenizer
from clipgen.models.clip import FrozenCLIP
from clipgen.models.encoders import encode_batch, encoder_identity
from clipgen.models.vqgan import VQGAN, load_vqgan

log = logging.getLogger(__name__)


def batch_captions(batch: dict, per_image: int) -> list[list[str]]:
    """Up to `per_image` non-empty captions of each image of a batch: its "captions" where the
    reader gives several, else its "caption". An image without any is an error naming it."""
    rows = batch.get("captions") or [[c] for c in batch["caption"]]
    out = []
    for key, texts in zip(batch.get("key", ["?"] * len(rows)), rows):
        texts = [t.strip() for t in texts if t and t.strip()][:per_image]
        if not texts:
            raise ValueError(f"image {key} has no caption, and a cache with captions needs one "
                             "for every image: let the reader skip uncaptioned samples "
                             "(require_caption=true) or set captions_per_image=0")
        out.append(texts)
    return out


@torch.no_grad()
def encode_captions(rows: list[list[str]], tokenizer: CaptionTokenizer, clip: FrozenCLIP,
                    per_image: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, K, L) caption ids (all-padding rows where an image has fewer than K captions) and
    (B, K, D) CLIP text embeddings (zero there)."""
    flat = [t for texts in rows for t in texts]
    ids = tokenizer.encode(flat).numpy()
    emb = clip.encode_text(flat).float().cpu().numpy()
    out_ids = np.full((len(rows), per_image, tokenizer.length), tokenizer.pad_id, np.int64)
    out_emb = np.zeros((len(rows), per_image, emb.shape[1]), np.float32)
    i = 0
    for r, texts in enumerate(rows):
        out_ids[r, :len(texts)] = ids[i:i + len(texts)]
        out_emb[r, :len(texts)] = emb[i:i + len(texts)]
        i += len(texts)
    return out_ids, out_emb


def encode_to_cache(batches: Iterable[dict], vqgan: VQGAN, clip: FrozenCLIP,
                    out_dir: str | Path, rank: int = 0, flip: bool = True,
                    device: str | torch.device = "cpu", total: int | None = None,
                    captions_per_image: int = 0, caption_length: int = 64) -> Path:
    """Encode every batch (dicts with "image") and write this process's part of the cache;
    with `captions_per_image` > 0, also up to that many captions per image (token ids and
    CLIP text embeddings), for the supervised priors."""
    identity = encoder_identity(vqgan, clip)
    check_vocab_fits(identity["vocab_size"])
    meta: dict = {**identity, "flip": flip}
    tokenizer = None
    if captions_per_image > 0:
        if flip:
            raise ValueError("a cache with captions cannot store flipped images: a flipped image "
                             "contradicts a caption that names left or right. Set flip=false")
        tokenizer = CaptionTokenizer(caption_length)
        meta["captions"] = {**tokenizer.record(), "per_image": captions_per_image}
    tokens: list[np.ndarray] = []
    conds: list[np.ndarray] = []
    caption_ids: list[np.ndarray] = []
    caption_conds: list[np.ndarray] = []
    cut = 0
    for batch in tqdm(batches, desc=f"precompute part {rank}", total=total):
        if not batch:
            continue
        images = batch["image"].to(device)
        for view in [images, images.flip(-1)] if flip else [images]:
            t, c = encode_batch(view, vqgan, clip)
            tokens.append(t.cpu().numpy())
            conds.append(c.cpu().numpy())
        if tokenizer is not None:
            texts = batch_captions(batch, captions_per_image)
            cut += tokenizer.too_long([t for row in texts for t in row])
            ids, emb = encode_captions(texts, tokenizer, clip, captions_per_image)
            caption_ids.append(ids)
            caption_conds.append(emb)
    if cut:
        log.warning("%d caption(s) longer than %d bytes were cut short: raise caption_length to "
                    "keep them whole", cut, caption_length - 1)
    return write_cache_part(tokens, conds, meta, out_dir, rank,
                            caption_ids if tokenizer else None,
                            caption_conds if tokenizer else None)


def once_through(data: DictConfig) -> DictConfig:
    """The data config with streaming splits read once, in order: no resampling, no shuffle,
    no epoch cut-off, so that each image is encoded exactly once."""
    data = data.copy()
    for split in ("train", "val"):
        node = data.get(split)
        if node is not None and "resampled" in node:
            node.resampled = False
            node.shuffle_buffer = 0
            node.epoch_length = None
    return data


def check_splits(cfg: DictConfig) -> None:
    """Refuse, before any model loads or any file is written, a split to encode that the
    data config does not define."""
    unknown = [s for s in cfg.splits if s not in ("train", "val")]
    if unknown:
        raise ValueError(f"splits={list(cfg.splits)}: unknown {unknown}; use train and/or val")
    if "val" in cfg.splits and not split_configured(cfg.data, "val"):
        raise ValueError("the data config has no val dataset, and splits asks for one: give a "
                         "validation set (data=webdataset: data.val.urls='<shards>'; "
                         "data=folder holds one out by data.train.val_fraction; see "
                         "data/README.md), or encode the training split alone with "
                         "splits=[train] (the prior then trains without validation)")
    if "train" in cfg.splits and not split_configured(cfg.data, "train"):
        raise ValueError("the data config has no train dataset: set data.train or "
                         "splits=[val]")


def run_precompute(cfg: DictConfig) -> list[Path]:
    """Encode `cfg.splits` of `cfg.data` with `cfg.model.tokenizer` and `cfg.model.clip`
    into `cfg.cache_dir/<split>/part-<rank>/`; return the parts written."""
    if not cfg.get("cache_dir"):
        raise ValueError("set cache_dir=<folder> for the cache")
    check_splits(cfg)
    rank, world = process_rank()
    # webdataset splits shards by these variables when torch.distributed is not initialised
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world))
    datamodule = hydra.utils.instantiate(once_through(cfg.data))  # data errors before models load
    device = torch.device(cfg.device)
    clip = FrozenCLIP(cfg.model.clip.arch, cfg.model.clip.get("pretrained"),
                      cfg.model.clip.get("random_weights", False)).to(device)
    arch = cfg.model.tokenizer.get("arch")
    vqgan = load_vqgan(cfg.model.tokenizer.path,
                       OmegaConf.to_container(arch, resolve=True) if arch else None).to(device)
    parts = []
    for split in cfg.splits:
        dataset = {"train": datamodule.train_set, "val": datamodule.val_set}[split]
        if not isinstance(dataset, IterableDataset):
            dataset = Subset(dataset, range(rank, len(dataset), world))
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False,
                            num_workers=cfg.data.get("num_workers", 0),
                            collate_fn=collate_samples)
        total = len(loader) if not isinstance(dataset, IterableDataset) else None
        part = encode_to_cache(loader, vqgan, clip, Path(cfg.cache_dir) / split, rank=rank,
                               flip=cfg.flip, device=device, total=total,
                               captions_per_image=cfg.captions_per_image,
                               caption_length=cfg.caption_length)
        log.info("wrote %s; %s", part, describe_skips(skip_summary([dataset.dataset if
                                                                    isinstance(dataset, Subset)
                                                                    else dataset])))
        parts.append(part)
    return parts
