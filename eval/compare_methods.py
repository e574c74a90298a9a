"""The generators compared on one suite, same CLIP, same prompts: CLIP-GEN sampling, CLIP-GEN
with CLIP reranking, optimisation of the VQGAN latent (VQGAN-CLIP) and evolutionary search.

    python eval/compare_methods.py [overrides of configs/eval.yaml for every run, e.g.
        suite.prompts.samples_per_combination=2 bundle=<folder>]

Each method writes its suite folder under compare.out_root/<name> (resumable). Prints JSON and
a markdown table: attribute accuracy, CLIP score, FD on CLIP features, seconds per image; and
compare.out_root/accuracy.png, the attribute accuracy of every method side by side.

Any set of runs can be compared the same way: `--config-name compare_conditionings
compare.bundles=<folder>` compares the three stage-2 conditionings
(configs/compare_conditionings.yaml)."""

from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from clipgen.evaluation.plots import accuracy_figure, footer_text, save_figure
from clipgen.evaluation.suite import run_suite, suite_summary
from clipgen.jobs.benchmark import print_report
from clipgen.jobs.entry import run_job


def method_configs(cfg: DictConfig, overrides: list[str]) -> dict[str, DictConfig]:
    """The eval config of each method: its own overrides, then the command line's (those of
    `compare.*` left out: they belong to this script), writing to out_root/<name>."""
    shared = [o for o in overrides if not o.lstrip("~+").startswith("compare.")]
    return {name: compose("eval", overrides=[*method, *shared,
                                             f"out_dir={cfg.compare.out_root}/{name}"])
            for name, method in cfg.compare.methods.items()}


def compare(cfg: DictConfig) -> list[dict]:
    rows, reports = [], {}
    for name, run_cfg in method_configs(cfg, list(HydraConfig.get().overrides.task)).items():
        reports[name] = run_suite(run_cfg)
        rows.append({"method": name, **suite_summary(reports[name])})
    if any(r["metrics"].get("attributes") for r in reports.values()):
        path = save_figure(accuracy_figure(reports), Path(cfg.compare.out_root) / "accuracy.png",
                           footer_text())
        print(f"attribute accuracy of every method: {path}")
    return rows


@hydra.main(version_base="1.3", config_path="../configs", config_name="compare_methods")
def main(cfg: DictConfig) -> None:
    print_report(run_job(compare, cfg), "generators compared")


if __name__ == "__main__":
    main()
