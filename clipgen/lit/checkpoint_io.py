"""Checkpoint writing that never leaves a half-written file under a checkpoint's name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from clipgen.atomic import write_atomic
from clipgen.checkpoint import load_torch_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, flush it to disk, then rename it over the
    target: a crash or a kill during the write leaves the previous checkpoint intact. Read
    without running pickled code."""

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

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Resume through `load_torch_file`: tensors and plain containers only, and a refusal
        that names the file."""
        if weights_only is False:
            raise ValueError("clipgen never loads checkpoints with weights_only=False")
        return load_torch_file(path)
