"""Generate images from prompts (or variations of an image): `python sample.py [overrides]`.
With no model arguments it uses the Shapes bundle shipped with clipgen; see configs/sample.yaml."""

import hydra
from omegaconf import DictConfig

from clipgen.jobs.entry import run_job
from clipgen.jobs.sample_run import run_sampling


@hydra.main(version_base="1.3", config_path="configs", config_name="sample")
def main(cfg: DictConfig) -> None:
    run_job(run_sampling, cfg)


if __name__ == "__main__":
    main()
