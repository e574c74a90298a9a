"""Where a Shapes prior's token loss goes (object, near background, far background, border):
`python eval/prior_token_loss.py [bundle=<folder>] [num_images=128]`. Prints JSON and a
markdown table."""

import hydra
from omegaconf import DictConfig

from clipgen.evaluation.token_regions import token_loss_by_region
from clipgen.generation.text_to_image import TextToImage
from clipgen.jobs.benchmark import machine_description, print_report
from clipgen.jobs.entry import run_job
from clipgen.models.bundle import default_bundle


def report(cfg: DictConfig) -> dict:
    t2i = TextToImage.from_bundle(cfg.bundle or default_bundle())
    return {"bundle": str(cfg.bundle or "shipped"),
            **token_loss_by_region(t2i, cfg.num_images, cfg.batch_size, split=cfg.split)}


@hydra.main(version_base="1.3", config_path="../configs", config_name="prior_token_loss")
def main(cfg: DictConfig) -> None:
    row = run_job(report, cfg)
    print_report([{**row, **machine_description()}], f"Prior token loss by region: {row['bundle']}")


if __name__ == "__main__":
    main()
