"""The generators compared on one suite, same CLIP, same prompts: CLIP-GEN sampling, CLIP-GEN
with CLIP reranking, optimisation of the VQGAN latent (VQGAN-CLIP) and evolutionary search.

    python eval/compare_methods.py [overrides of configs/eval.yaml for every run, e.g.
        suite.prompts.samples_per_combination=2 bundle=<folder>]

Each method writes its suite folder under compare.out_root/<name> (resumable). Prints JSON and
a markdown table: attribute accuracy, CLIP score, FD on CLIP features, seconds per image."""

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from clipgen.evaluation.suite import run_suite, suite_summary
from clipgen.jobs.benchmark import print_report
from clipgen.jobs.entry import run_job


def compare(cfg: DictConfig) -> list[dict]:
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("compare.")]
    rows = []
    for name, method in cfg.compare.methods.items():
        run_cfg = compose("eval", overrides=[*method, *overrides,
                                             f"out_dir={cfg.compare.out_root}/{name}"])
        rows.append({"method": name, **suite_summary(run_suite(run_cfg))})
    return rows


@hydra.main(version_base="1.3", config_path="../configs", config_name="compare_methods")
def main(cfg: DictConfig) -> None:
    print_report(run_job(compare, cfg), "generators compared")


if __name__ == "__main__":
    main()
