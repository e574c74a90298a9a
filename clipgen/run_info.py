"""Facts about a run recorded in logs and checkpoints: the code version and the effective
batch size."""

from __future__ import annotations

import subprocess
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
