"""Generate images from prompts (or variations of an image): `python sample.py [overrides]`.
With no model arguments it uses the Shapes bundle shipped with clipgen; see configs/sample.yaml."""

import sys

import hydra
from omegaconf import DictConfig

from clipgen.checkpoint import CheckpointMismatchError
from clipgen.sample_run import run_sampling


@hydra.main(version_base="1.3", config_path="configs", config_name="sample")
def main(cfg: DictConfig) -> None:
    try:
        run_sampling(cfg)
    except (FileNotFoundError, ValueError, CheckpointMismatchError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
