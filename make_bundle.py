"""Take a folder of images to a bundle (VQGAN, CLIP, cache, prior):
`python make_bundle.py folder=<images> out=<bundle folder> [clip.source=file|train|bundle]`;
see configs/make_bundle.yaml."""

import hydra
from omegaconf import DictConfig

from clipgen.jobs.entry import run_job
from clipgen.jobs.folder_bundle import run_folder_bundle


@hydra.main(version_base="1.3", config_path="configs", config_name="make_bundle")
def main(cfg: DictConfig) -> None:
    run_job(run_folder_bundle, cfg)


if __name__ == "__main__":
    main()
