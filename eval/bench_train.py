"""Training steps per second of any stage: python eval/bench_train.py experiment=<name>.

Prints JSON and a markdown table (median step time after warm-up)."""

import hydra
from omegaconf import DictConfig

from clipgen.benchmark import measure_training, print_report


@hydra.main(version_base="1.3", config_path="../configs", config_name="bench_train")
def main(cfg: DictConfig) -> None:
    row = measure_training(cfg, cfg.bench.warmup, cfg.bench.steps)
    print_report([row], f"training throughput: stage {cfg.stage}")


if __name__ == "__main__":
    main()
