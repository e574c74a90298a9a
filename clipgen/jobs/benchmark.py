"""Throughput measurements shared by the benchmark scripts under eval/."""

from __future__ import annotations

import json
import time
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from clipgen.jobs.training import build_stage, compiled_if_asked, trainer_precision
from clipgen.run_info import machine_description


class StepTimer(pl.Callback):
    """Wall-clock time of each whole training step after `warmup` steps: from the end of one
    batch to the end of the next, so fetching and collating the data counts (throughput, not
    compute alone)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self._last: float | None = None
        self._seen = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self._seen += 1
        if self._last is not None and self._seen > self.warmup:
            self.times.append(now - self._last)
        self._last = now


def measure_training(cfg: DictConfig, warmup: int, steps: int) -> dict[str, Any]:
    """Train `cfg.stage` for warmup + steps batches (no validation, logging or checkpoints)
    and report the median step time."""
    pl.seed_everything(cfg.seed)
    module = build_stage(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    timer = StepTimer(warmup)
    precision, _ = trainer_precision(cfg)
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, max_steps=warmup + steps, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, callbacks=[timer],
        precision=precision)
    trainer.fit(compiled_if_asked(module, cfg), datamodule=datamodule)
    times = sorted(timer.times)
    median = times[len(times) // 2]
    batch = cfg.data.batch_size
    row = {"stage": cfg.stage.name, "precision": precision, "compile": bool(cfg.get("compile")),
           "batch_size": batch, "steps_timed": len(times),
           "median_step_s": round(median, 4), "steps_per_s": round(1 / median, 3),
           "images_per_s": round(batch / median, 2)}
    tokens = getattr(module, "tokens_per_sample", None)
    if tokens:
        row["tokens_per_s"] = round(batch * tokens / median, 1)
    return {**row, **machine_description()}


def print_report(rows: list[dict[str, Any]], title: str) -> None:
    """JSON first (machine-readable), then a markdown table over every key of the rows."""
    print(json.dumps(rows, indent=2))
    keys = list(dict.fromkeys(k for row in rows for k in row))
    print(f"\n### {title}\n")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
