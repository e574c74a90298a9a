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

from clipgen.data.datamodule import collate_samples
from clipgen.data.precomputed import check_vocab_fits, write_cache_part
from clipgen.data.skips import describe_skips, skip_summary
from clipgen.distributed import process_rank
from clipgen.models.clip import FrozenCLIP
from clipgen.models.encoders import encode_batch, encoder_identity
from clipgen.models.vqgan import VQGAN, load_vqgan

log = logging.getLogger(__name__)


def encode_to_cache(batches: Iterable[dict], vqgan: VQGAN, clip: FrozenCLIP,
                    out_dir: str | Path, rank: int = 0, flip: bool = True,
                    device: str | torch.device = "cpu", total: int | None = None) -> Path:
    """Encode every batch (dicts with "image") and write this process's part of the cache."""
    identity = encoder_identity(vqgan, clip)
    check_vocab_fits(identity["vocab_size"])
    tokens: list[np.ndarray] = []
    conds: list[np.ndarray] = []
    for batch in tqdm(batches, desc=f"precompute part {rank}", total=total):
        if not batch:
            continue
        images = batch["image"].to(device)
        for view in [images, images.flip(-1)] if flip else [images]:
            t, c = encode_batch(view, vqgan, clip)
            tokens.append(t.cpu().numpy())
            conds.append(c.cpu().numpy())
    return write_cache_part(tokens, conds, {**identity, "flip": flip}, out_dir, rank)


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


def run_precompute(cfg: DictConfig) -> list[Path]:
    """Encode `cfg.splits` of `cfg.data` with `cfg.model.tokenizer` and `cfg.model.clip`
    into `cfg.cache_dir/<split>/part-<rank>/`; return the parts written."""
    if not cfg.get("cache_dir"):
        raise ValueError("set cache_dir=<folder> for the cache")
    rank, world = process_rank()
    # webdataset splits shards by these variables when torch.distributed is not initialised
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world))
    device = torch.device(cfg.device)
    clip = FrozenCLIP(cfg.model.clip.arch, cfg.model.clip.get("pretrained"),
                      cfg.model.clip.get("random_weights", False)).to(device)
    arch = cfg.model.tokenizer.get("arch")
    vqgan = load_vqgan(cfg.model.tokenizer.path,
                       OmegaConf.to_container(arch, resolve=True) if arch else None).to(device)
    datamodule = hydra.utils.instantiate(once_through(cfg.data))
    parts = []
    for split in cfg.splits:
        dataset = {"train": datamodule.train_set, "val": datamodule.val_set}[split]
        if dataset is None:
            raise ValueError(f"the data config has no {split} dataset")
        if not isinstance(dataset, IterableDataset):
            dataset = Subset(dataset, range(rank, len(dataset), world))
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False,
                            num_workers=cfg.data.get("num_workers", 0),
                            collate_fn=collate_samples)
        total = len(loader) if not isinstance(dataset, IterableDataset) else None
        part = encode_to_cache(loader, vqgan, clip, Path(cfg.cache_dir) / split, rank=rank,
                               flip=cfg.flip, device=device, total=total)
        log.info("wrote %s; %s", part, describe_skips(skip_summary([dataset.dataset if
                                                                    isinstance(dataset, Subset)
                                                                    else dataset])))
        parts.append(part)
    return parts
