"""Precompute stage-2 training data (VQGAN tokens, CLIP image embeddings):
`python precompute.py experiment=<prior experiment> data=<image data> cache_dir=<folder>`."""

import hydra
from omegaconf import DictConfig

from clipgen.jobs.build_cache import run_precompute
from clipgen.jobs.entry import run_job


@hydra.main(version_base="1.3", config_path="configs", config_name="precompute")
def main(cfg: DictConfig) -> None:
    run_job(run_precompute, cfg)


if __name__ == "__main__":
    main()
