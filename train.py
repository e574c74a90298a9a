"""Train a clipgen stage:
`python train.py stage=<vqgan|clip|prior> experiment=<name> [overrides]`."""

import hydra
from omegaconf import DictConfig

from clipgen.jobs.entry import run_job
from clipgen.jobs.training import run_training


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    run_job(run_training, cfg)


if __name__ == "__main__":
    main()
