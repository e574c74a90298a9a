"""Build the stage-2 cache: encode the configured dataset's splits once."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, IterableDataset, Subset

from clipgen.data.datamodule import collate_samples
from clipgen.data.precomputed import write_cache_part
from clipgen.distributed import process_rank
from clipgen.models.clip import FrozenCLIP
from clipgen.models.vqgan import load_vqgan

log = logging.getLogger(__name__)


def run_precompute(cfg: DictConfig) -> list[Path]:
    """Encode `cfg.splits` of `cfg.data` with `cfg.model.tokenizer` and `cfg.model.clip`
    into `cfg.cache_dir/<split>/part-<rank>/`; return the parts written."""
    if not cfg.get("cache_dir"):
        raise ValueError("set cache_dir=<folder> for the cache")
    rank, world = process_rank()
    # webdataset splits shards by these variables when torch.distributed is not initialised
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world))
    torch.set_flush_denormal(True)
    device = torch.device(cfg.device)
    arch = cfg.model.tokenizer.get("arch")
    vqgan = load_vqgan(cfg.model.tokenizer.path,
                       OmegaConf.to_container(arch, resolve=True) if arch else None).to(device)
    clip = FrozenCLIP(cfg.model.clip.arch, cfg.model.clip.get("pretrained")).to(device)
    datamodule = hydra.utils.instantiate(cfg.data)
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
        part = write_cache_part(loader, vqgan, clip, Path(cfg.cache_dir) / split, rank=rank,
                                flip=cfg.flip, device=device, total=total)
        log.info("wrote %s", part)
        parts.append(part)
    return parts
