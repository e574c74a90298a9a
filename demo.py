"""The interactive demo page: `python demo.py [overrides]` serves it on http://127.0.0.1:7860.
With no model arguments it uses the Shapes bundle shipped with clipgen; see configs/demo.yaml."""

import hydra
from omegaconf import DictConfig

from clipgen.jobs.demo_page import serve_demo
from clipgen.jobs.entry import run_job


@hydra.main(version_base="1.3", config_path="configs", config_name="demo")
def main(cfg: DictConfig) -> None:
    run_job(serve_demo, cfg)


if __name__ == "__main__":
    main()
