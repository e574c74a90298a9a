"""Kill trials: train a tiny run without interruption, then the same run killed (SIGKILL) at
random moments and resumed each time, and an end-of-run extension; compare the weights bit
for bit. Used by `eval/kill_trials.py` for the figures quoted in the README."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from clipgen.checkpoint import load_torch_file


def train_command(script: Path, overrides: list[str], run_dir: Path) -> list[str]:
    return [sys.executable, str(script), *overrides, "ckpt_path=last", f"hydra.run.dir={run_dir}"]


def run_to_end(command: list[str], timeout: float) -> None:
    """Run a training command to completion; raise with its output's tail on failure."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"training failed ({done.returncode}): {done.stdout[-2000:]}"
                           f"{done.stderr[-2000:]}")


def same_weights(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold bit-identical weights."""
    x, y = load_torch_file(a)["state_dict"], load_torch_file(b)["state_dict"]
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def kill_trials(script: Path, overrides: list[str], work_dir: Path, kills: int,
                max_steps: int, seed: int = 0, timeout: float = 600) -> dict[str, Any]:
    """`kills` SIGKILLs at random moments of one run (each followed by a resume), then the
    run finished; and a run stopped at half the steps and extended. Both are compared with
    an uninterrupted run."""
    rng = random.Random(seed)
    steps = [f"trainer.max_steps={max_steps}"]
    reference = work_dir / "uninterrupted"
    start = time.perf_counter()
    run_to_end(train_command(script, overrides + steps, reference), timeout)
    seconds_per_run = time.perf_counter() - start
    killed = work_dir / "killed"
    command = train_command(script, overrides + steps, killed)
    landed = 0
    for _ in range(kills):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * seconds_per_run)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            landed += 1
        proc.wait()
    run_to_end(command, timeout)
    last = killed / "checkpoints" / "last.ckpt"
    extended = work_dir / "extended"
    run_to_end(train_command(script, overrides + [f"trainer.max_steps={max_steps // 2}"],
                             extended), timeout)
    run_to_end(train_command(script, overrides + steps, extended), timeout)
    leftovers = sorted(p.name for p in (killed / "checkpoints").iterdir()
                       if p.name.endswith(".tmp"))
    return {"kills_sent": kills, "kills_landed_mid_run": landed,
            "resumed_step": int(load_torch_file(last)["global_step"]),
            "planned_step": max_steps,
            "killed_run_bit_identical": same_weights(last, reference / "checkpoints" / "last.ckpt"),
            "extended_run_bit_identical": same_weights(
                extended / "checkpoints" / "last.ckpt", reference / "checkpoints" / "last.ckpt"),
            "temp_files_left": len(leftovers),
            "seconds_per_uninterrupted_run": round(seconds_per_run, 1)}
