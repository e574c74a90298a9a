"""One LightningDataModule over any of the readers (map-style or streaming)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset


def collate_samples(batch: list[dict | None]) -> dict[str, Any]:
    """Collate reader samples: drop skipped (None) samples, stack tensors, keep other fields as
    lists (attribute dicts become dicts of lists)."""
    samples = [s for s in batch if s is not None]
    if not samples:
        return {}
    out: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], dict) and key == "attributes":
            out[key] = {k: [v[k] for v in values] for k in values[0]}
        elif isinstance(values[0], int):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


class ImageTextDataModule(pl.LightningDataModule):
    """Train and validation loaders over datasets built from config (`_target_` entries)."""

    def __init__(self, train: Dataset, val: Dataset | None = None, batch_size: int = 32,
                 val_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool = False) -> None:
        super().__init__()
        self.train_set = train
        self.val_set = val
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        streaming = isinstance(dataset, IterableDataset)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and not streaming,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          collate_fn=collate_samples, drop_last=shuffle and not streaming,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return self._loader(self.val_set, self.val_batch_size, shuffle=False)

    def skipped(self) -> int:
        """Samples skipped as unreadable so far, over every dataset and worker."""
        return sum(d.skipped.count for d in (self.train_set, self.val_set)
                   if d is not None and hasattr(d, "skipped"))


class LogSkippedSamples(pl.Callback):
    """Log the datamodule's count of skipped (corrupt) samples as `data/skipped`."""

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        if isinstance(dm, ImageTextDataModule):
            pl_module.log("data/skipped", float(dm.skipped()), rank_zero_only=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule
                                ) -> None:
        self._log(trainer, pl_module)
