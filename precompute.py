"""Precompute stage-2 training data (VQGAN tokens, CLIP image embeddings):
`python precompute.py experiment=<gpt experiment> data=<image data> cache_dir=<folder>`."""

import hydra
from omegaconf import DictConfig

from clipgen.precompute import run_precompute


@hydra.main(version_base="1.3", config_path="configs", config_name="precompute")
def main(cfg: DictConfig) -> None:
    run_precompute(cfg)


if __name__ == "__main__":
    main()
