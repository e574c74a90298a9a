"""Measure a bundle's modality gap and write it beside its prior:
`python eval/modality_gap.py [bundle=<folder>] [images=<captioned image folder>] [scale=2]
[num_images=4096]`. Sampling then moves text conditions across the gap (`gap_shift`,
configs/generator/default.yaml). Prints JSON and a markdown table."""

from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from clipgen.data.image_files import ImageFilesDataset
from clipgen.data.skips import skip_summary
from clipgen.jobs.benchmark import machine_description, print_report
from clipgen.jobs.entry import run_job
from clipgen.jobs.gap_measure import measure_bundle_gap
from clipgen.models.bundle import check_bundle, default_bundle


def measure(cfg: DictConfig) -> list[dict]:
    bundle = Path(cfg.bundle) if cfg.bundle else default_bundle()
    check_bundle(bundle)
    if cfg.images:
        full = ImageFilesDataset(cfg.images, "train", val_fraction=cfg.val_fraction,
                                 split_seed=cfg.split_seed, resolution=cfg.resolution)
        source = f"training images under {cfg.images}"
    else:
        full = instantiate(cfg.dataset)
        source = f"{cfg.dataset._target_.rsplit('.', 1)[-1]} ({cfg.dataset.get('split', '')})"
    gap, path = measure_bundle_gap(bundle, full, source, cfg.scale, cfg.num_images,
                                   cfg.batch_size, Path(cfg.out) if cfg.out else None)
    norm = gap.vector.norm().item()
    return [{"bundle": str(cfg.bundle or "shipped"), "file": str(path), "images": gap.images,
             "texts": gap.texts, **skip_summary([full]), "gap_norm": round(norm, 4),
             "scale": gap.scale,
             "clip": gap.clip, "source": source, **machine_description()}]


@hydra.main(version_base="1.3", config_path="../configs", config_name="modality_gap")
def main(cfg: DictConfig) -> None:
    print_report(run_job(measure, cfg), "Modality gap")


if __name__ == "__main__":
    main()
