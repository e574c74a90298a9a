"""Stage-2 training throughput from the precomputed cache versus on-the-fly encoding (VQGAN and
CLIP run every step), same model and batch, in one run:

    python eval/bench_prior_cache.py experiment=shapes_prior [bench.steps=N]

Prints JSON and a markdown table with tokens/s of each and their ratio."""

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from clipgen.jobs.benchmark import measure_training, print_report
from clipgen.jobs.entry import run_job


def measure_both(cfg: DictConfig, live: DictConfig) -> list[dict]:
    """One row per data path, same model, batch and steps."""
    return [{"data": name, **measure_training(run_cfg, cfg.bench.warmup, cfg.bench.steps)}
            for name, run_cfg in (("precomputed", cfg), ("on-the-fly", live))]


@hydra.main(version_base="1.3", config_path="../configs", config_name="bench_train")
def main(cfg: DictConfig) -> None:
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("data=")]
    live = compose("bench_train", overrides=[*overrides, "data=shapes"])
    rows = run_job(measure_both, cfg, live)
    rows[0]["speedup"] = round(rows[1]["median_step_s"] / rows[0]["median_step_s"], 2)
    rows[1]["speedup"] = 1.0
    print_report(rows, "stage-2 training: precomputed cache vs on-the-fly encoding")


if __name__ == "__main__":
    main()
