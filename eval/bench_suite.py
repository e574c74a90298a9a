"""Evaluation-suite generation speed: images/s of the generate step (prompts to PNG files, as
`eval/evaluate.py` runs it) for each batch size and sampling variant, in one run:

    python eval/bench_suite.py [batches=[8,16,32,64]] [images=128]
        ['eval_overrides=[suite=shapes]'] ['variants={plain: [], int8: [sampling.weights=int8]}']

Prints JSON and a markdown table with the speed-up over the first variant at the first batch
size (configs/bench_suite.yaml)."""

import hydra
from omegaconf import DictConfig

from clipgen.jobs.benchmark import machine_description, print_report
from clipgen.jobs.entry import run_job
from clipgen.jobs.suite_throughput import bench


@hydra.main(version_base="1.3", config_path="../configs", config_name="bench_suite")
def main(cfg: DictConfig) -> None:
    rows = run_job(bench, cfg)
    info = machine_description()
    print_report(rows, f"suite generation on {info.get('gpu', info['cpu'])}")
    print(info)


if __name__ == "__main__":
    main()
