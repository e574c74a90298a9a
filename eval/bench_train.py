"""Training steps per second of any stage: python eval/bench_train.py experiment=<name>.

Prints JSON and a markdown table (median step time after warm-up)."""

import hydra
from omegaconf import DictConfig

from clipgen.jobs.benchmark import measure_training, print_report
from clipgen.jobs.entry import run_job


@hydra.main(version_base="1.3", config_path="../configs", config_name="bench_train")
def main(cfg: DictConfig) -> None:
    row = run_job(measure_training, cfg, cfg.bench.warmup, cfg.bench.steps)
    print_report([row], f"training throughput: stage {cfg.stage.name}")


if __name__ == "__main__":
    main()
