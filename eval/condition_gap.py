"""Attribute accuracy of a Shapes bundle conditioned on CLIP image embeddings of test renders
versus the text embeddings of prompts naming all their attributes:
`python eval/condition_gap.py [bundle=<folder>] [num_images=64] [split=heldout]
[sampling.top_k=16] [sampling.guidance_scale=2]` (sampling defaults: configs/generator/default.yaml;
split=heldout renders only the held-out colour x shape combinations, and adds each one's
shape accuracy).
Prints JSON and a markdown table."""

import hydra
from omegaconf import DictConfig, OmegaConf

from clipgen.evaluation.image_vs_text import CONDITIONS, condition_gap
from clipgen.generation.sampling import SamplingConfig
from clipgen.generation.text_to_image import TextToImage
from clipgen.jobs.benchmark import machine_description, print_report
from clipgen.jobs.entry import run_job
from clipgen.models.bundle import default_bundle

ATTRIBUTES = ("color", "shape", "color_and_shape", "size", "position", "background")


def rows(cfg: DictConfig) -> list[dict]:
    settings = OmegaConf.to_container(cfg.sampling, resolve=True)
    t2i = TextToImage.from_bundle(cfg.bundle or default_bundle(), gap_shift=cfg.gap_shift)
    report = condition_gap(t2i, cfg.num_images, SamplingConfig(**settings), cfg.batch_size,
                           split=cfg.split, holdout=OmegaConf.to_container(cfg.holdout))
    common = {"bundle": str(cfg.bundle or "shipped"), "split": cfg.split,
              "images": report["images"],
              "text_image_cosine": report["text_image_cosine"],
              "top_k": settings["top_k"], "guidance_scale": settings["guidance_scale"],
              "gap_shift": cfg.gap_shift}
    combos = report.get("by_combination", {})  # split=heldout: each combination's shape
    return [{"condition": name, **{a: report[f"{name}_{a}"] for a in ATTRIBUTES},
             **{f"shape, {combo}": c[f"{name}_shape"] for combo, c in combos.items()},
             **common, **machine_description()} for name in CONDITIONS]


@hydra.main(version_base="1.3", config_path="../configs", config_name="condition_gap")
def main(cfg: DictConfig) -> None:
    print_report(run_job(rows, cfg), "Image versus text conditioning")


if __name__ == "__main__":
    main()
