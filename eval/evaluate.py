"""Evaluation suites: `python eval/evaluate.py suite=shapes|coco|imagenet [overrides]`.

Generates the suite's images (resumable; sharded across processes under torchrun or srun),
then computes its metrics and writes report.json, report.md and grid.png into out_dir.
See configs/eval.yaml and configs/suite/."""

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from clipgen.evaluation.suite import run_suite
from clipgen.jobs.entry import run_job


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    report = run_job(run_suite, cfg)
    if report is not None:
        print(json.dumps(report["metrics"], indent=2))
        print((Path(cfg.out_dir) / "report.md").read_text())


if __name__ == "__main__":
    main()
