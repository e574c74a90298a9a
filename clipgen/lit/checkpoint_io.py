"""Checkpoint writing that never leaves a half-written file under a checkpoint's name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from clipgen.atomic import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, flush it to disk, then rename it over the
    target: a crash or a kill during the write leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

        write_atomic(path, write)
