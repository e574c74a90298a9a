"""The GPU check, one command: python eval/gpu_check.py [out=<file.json>] [parts=[...]].

bf16-mixed training steps of the paper-size stages (f16_16384 VQGAN at 256 px with its
discriminator, the gpt2_medium prior at batch 32, gpt2_xl with activation checkpointing):
seconds per step, samples/s, peak memory, MFU; the decoder on gpt2_medium (256 tokens, batch 16,
guidance, bf16) eager and with CUDA graphs: tokens/s and the fraction of the memory roofline;
two batches of the COCO suite's generation path. Random weights throughout; each part in its
own process under its own time limit. Prints JSON and a table and writes both to `out`. On a
CPU the same parts run at tiny sizes (under a minute)."""

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from clipgen.jobs.entry import run_job
from clipgen.jobs.hardware_check import run_all, run_part, write_report
from clipgen.run_info import machine_description


def check(cfg: DictConfig) -> None:
    if cfg.part:
        run_part(cfg, cfg.part)
        return
    overrides = [a for a in sys.argv[1:] if not a.startswith(("out=", "hydra."))]
    rows = run_all(cfg, overrides)
    info = machine_description()
    table = write_report(rows, info, Path(cfg.out))
    print(json.dumps({"machine": info, "rows": rows}, indent=2))
    print(f"\n### GPU check ({info.get('gpu', info['cpu'])}, {info['date']})\n\n{table}")
    print(f"\nwritten: {cfg.out} and {Path(cfg.out).with_suffix('.md')}")


@hydra.main(version_base="1.3", config_path="../configs", config_name="gpu_check")
def main(cfg: DictConfig) -> None:
    run_job(check, cfg)


if __name__ == "__main__":
    main()
