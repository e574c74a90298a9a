"""Facts about a run recorded in logs and checkpoints: the code version, the effective batch
size, and what the hardware runs fast."""

from __future__ import annotations

import platform
import subprocess
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any


def git_commit(folder: str | Path | None = None) -> dict[str, Any]:
    """The commit of the source tree clipgen runs from, and whether it has uncommitted
    changes; `{"commit": None}` outside a git checkout (e.g. an installed wheel)."""
    where = Path(folder) if folder else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):  # no git binary: nothing to record
        return {"commit": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def effective_batch(batch_size: int, devices: int, num_nodes: int, accumulate: int
                    ) -> dict[str, int]:
    """Samples per optimiser step across every process."""
    return {"per_device": batch_size, "devices": devices, "num_nodes": num_nodes,
            "accumulate_grad_batches": accumulate,
            "effective": batch_size * devices * num_nodes * accumulate}


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once; empty where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux), else the architecture."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX or AVX512-BF16): without either,
    PyTorch emulates bf16 and runs far slower than fp32 (and without /proc/cpuinfo, assume
    none)."""
    return any(f in _cpuinfo().split() for f in ("amx_bf16", "avx512_bf16"))


def training_precision(requested: str, accelerator: str) -> tuple[str, str]:
    """Lightning's precision for `requested` (`auto`, or any Lightning value kept as is) and
    why: on CPUs `auto` is bf16-mixed where bf16 runs natively, else 32-true; 16-mixed on a
    CPU is bf16-mixed (Lightning runs fp16 autocast only on GPUs and switches it)."""
    if requested in ("16-mixed", "16") and accelerator == "cpu":
        return "bf16-mixed", "16-mixed asked for: Lightning runs it as bf16-mixed on CPU"
    if requested != "auto":
        return requested, "as configured"
    if accelerator == "cpu":
        if cpu_has_fast_bf16():
            return "bf16-mixed", "CPU with native bf16 (AMX / AVX512-BF16)"
        return "32-true", "CPU without native bf16: emulated bf16 would be slower than fp32"
    import torch

    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return "16-mixed", "GPU without bf16"
    return "bf16-mixed", f"accelerator {accelerator}"


def machine_description() -> dict[str, Any]:
    """The processor, thread count, torch version, date and GPU (if any) of a measurement."""
    import torch

    out = {"cpu": cpu_model(), "cpu_native_bf16": cpu_has_fast_bf16(),
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "date": date.today().isoformat()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out
