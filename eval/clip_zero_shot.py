"""Shapes CLIP quality: zero-shot accuracy per attribute (prompt ensembles) and retrieval R@1:
`python eval/clip_zero_shot.py [clip.pretrained=<clip.safetensors or .pt>] [clip.arch=NAME]
[num_images=1024] [split=val|heldout]`. Prints JSON and a markdown table."""

import hydra
from omegaconf import DictConfig, OmegaConf

from clipgen.evaluation.clip_quality import shapes_clip_report
from clipgen.jobs.benchmark import machine_description, print_report
from clipgen.jobs.entry import run_job
from clipgen.models.bundle import bundle_clip, default_bundle
from clipgen.models.clip import FrozenCLIP


def report(cfg: DictConfig) -> dict:
    arch, weights = cfg.clip.arch, cfg.clip.pretrained
    if not weights:
        arch, weights = bundle_clip(default_bundle())
    holdout = OmegaConf.to_container(cfg.holdout, resolve=True)
    return {"clip": str(cfg.clip.pretrained or "shipped"),
            **shapes_clip_report(FrozenCLIP(arch, str(weights)), cfg.num_images, cfg.split,
                                 holdout, cfg.batch_size)}


@hydra.main(version_base="1.3", config_path="../configs", config_name="clip_zero_shot")
def main(cfg: DictConfig) -> None:
    row = run_job(report, cfg)
    print_report([{**row, **machine_description()}], f"Shapes CLIP: {row['clip']}")


if __name__ == "__main__":
    main()
