"""A bundle's modality gap measured over captioned training images and written into the bundle
(`eval/modality_gap.py`, and the last stage of `make_bundle.py` when `gap.scale` is set)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader, Dataset, Subset

from clipgen.data.datamodule import collate_samples
from clipgen.generation.gap_shift import (
    GAP_FILE,
    ModalityGap,
    measure_modality_gap,
    save_modality_gap,
)
from clipgen.models.bundle import bundle_clip
from clipgen.models.clip import FrozenCLIP


def measure_bundle_gap(bundle: Path, dataset: Dataset, source: str, scale: float,
                       num_images: int, batch_size: int,
                       out: Path | None = None) -> tuple[ModalityGap, Path]:
    """The gap of `bundle`'s CLIP over the first `num_images` samples of `dataset`
    ({"image", "caption"}), stored with `scale` at `out` (default: the bundle's gap file)."""
    arch, weights = bundle_clip(bundle)
    clip = FrozenCLIP(arch, str(weights)).eval()
    subset = Subset(dataset, range(min(num_images, len(dataset))))
    loader = DataLoader(subset, batch_size=batch_size, collate_fn=collate_samples)
    gap = measure_modality_gap(clip, loader, source, scale)
    return gap, save_modality_gap(gap, out or Path(bundle) / GAP_FILE)
