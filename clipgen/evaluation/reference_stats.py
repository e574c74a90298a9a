"""The real-image statistics of a suite (FID / FD references), cached under a name that
fingerprints what they were made from: the feature network's weights, the real images and
the settings. Changing any of them computes new statistics instead of reusing stale ones."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from clipgen.atomic import write_atomic
from clipgen.checkpoint import fingerprint
from clipgen.data.transforms import to_uint8
from clipgen.metrics.frechet import FrechetSet, state_from_npz

log = logging.getLogger(__name__)


def file_digest(path: str | Path, chunk: int = 1 << 24) -> str:
    """sha256 of a file's bytes (first 16 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]


def reference_indices(size: int, n: int) -> list[int]:
    """`n` of a dataset's `size` items spread evenly over it (so a subset of a class-sorted
    folder covers every class), all of them when `n >= size`."""
    n = min(n, size)
    return [i * size // n for i in range(n)]


def dataset_fingerprint(dataset: Any, indices: list[int]) -> str | None:
    """A hash of the source files of `indices` in a file-backed dataset (name, size, mtime), so
    a replaced or added image changes it; None for generated data (its config defines it)."""
    source = getattr(dataset, "source_file", None)
    if source is None:
        return None
    digest = hashlib.sha256()
    for i in indices:
        path = Path(source(i))
        stat = path.stat() if path.exists() else None
        digest.update(f"{path}|{stat.st_size if stat else -1}|"
                      f"{stat.st_mtime_ns if stat else -1}\n".encode())
    return digest.hexdigest()[:16]


def reference_key(cfg: DictConfig, feature: str, features: torch.nn.Module,
                  dataset: Any | None, indices: list[int]) -> dict[str, Any]:
    """What a suite's real statistics depend on (`indices`: the dataset items used)."""
    real = cfg.suite.real
    if real.get("npz"):
        images = {"npz": file_digest(real.npz)}
    else:
        images = {"config": OmegaConf.to_container(real, resolve=True),
                  "files": dataset_fingerprint(dataset, indices)}
    return {"suite": cfg.suite.name, "feature": feature, "weights": fingerprint(features),
            "radii": [float(r) for r in cfg.metrics.fid_radii], "real": images}


def reference_path(cfg: DictConfig, key: dict[str, Any]) -> Path:
    """The cache file for `key` in `cfg.reference_dir`."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.reference_dir) / f"{cfg.suite.name}-{key['feature']}-{digest}.pt"


def fill_reference(fd: FrechetSet, cfg: DictConfig, feature: str) -> Path | None:
    """Real statistics into `fd`: from the cache file of their fingerprint, a reference npz
    (radius 0 only), or the suite's real images (then cached). Returns the cache file used."""
    real = cfg.suite.real
    if real.get("npz") and fd.radii != [0.0]:
        raise ValueError("a reference npz holds radius-0 statistics only: set "
                         "metrics.fid_radii=[0]")
    dataset = None if real.get("npz") else instantiate(real.dataset)
    indices = [] if dataset is None else reference_indices(len(dataset), int(real.num_images))
    key = reference_key(cfg, feature, fd.features, dataset, indices)
    path = reference_path(cfg, key)
    if path.is_file():
        fd.load_real(path)
        log.info("reference statistics from %s", path)
        return path
    if dataset is None:
        fd.load_real_state(state_from_npz(real.npz))
        return None
    skipped = 0
    batch: list[torch.Tensor] = []
    for i in tqdm(indices, desc="real images", unit="img"):
        item = dataset[i]
        if item is None:  # unreadable image, counted by the dataset
            skipped += 1
        else:
            batch.append(item["image"])
        if batch and (len(batch) == cfg.metrics.batch_size or i == indices[-1]):
            fd.update(to_uint8(torch.stack(batch)), real=True)
            batch = []
    if skipped:
        log.warning("%d unreadable real images skipped", skipped)
    fd.save_real(path)
    write_atomic(path.with_suffix(".json"),
                 lambda tmp: tmp.write_text(json.dumps(key, indent=2, sort_keys=True)))
    log.info("reference statistics (%d images) cached in %s", fd.real_count(), path)
    return path
