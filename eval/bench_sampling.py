"""Sampling speed: KV cache versus recomputing the whole sequence at every step (what some
public implementations do), same weights and settings, in one run:

    python eval/bench_sampling.py [models=[shapes_small,gpt2_medium]] [batches=[1,16]]

Models have random weights (speed does not depend on them); sizes in
configs/bench_sampling.yaml. Reports tokens/s and sequences/s (token sampling only; VQGAN
decoding excluded), the cache speed-up, and model FLOP/s as a fraction of this machine's fp32
matmul FLOP/s measured in the same run. Prints JSON and a markdown table."""

import hydra
from omegaconf import DictConfig

from clipgen.generation.settings import resolve_device
from clipgen.jobs.benchmark import machine_description, print_report
from clipgen.jobs.entry import run_job
from clipgen.jobs.sampling_benchmark import matmul_flops, sampling_rows
from clipgen.models.prior import PriorConfig


def bench(cfg: DictConfig) -> tuple[list[dict], dict]:
    device = resolve_device(cfg.device)
    unknown = set(cfg.models) - set(cfg.sizes)
    if unknown:
        raise ValueError(f"unknown models {sorted(unknown)}; known: {sorted(cfg.sizes)}")
    peak = matmul_flops(device)
    models = {name: PriorConfig.from_dict(cfg.sizes[name]) for name in cfg.models}
    rows = sampling_rows(models, list(cfg.batches), device, cfg.max_uncached_s, peak)
    return rows, {**machine_description(), "matmul_gflops": round(peak / 1e9, 1)}


@hydra.main(version_base="1.3", config_path="../configs", config_name="bench_sampling")
def main(cfg: DictConfig) -> None:
    rows, info = run_job(bench, cfg)
    print_report(rows, f"sampling speed on {info.get('gpu', info['cpu'])} "
                       f"({info['matmul_gflops']} GFLOP/s fp32 matmul)")
    print(info)


if __name__ == "__main__":
    main()
