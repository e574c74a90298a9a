"""One LightningDataModule over any of the readers (map-style or streaming)."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from clipgen.data.resumable import ResumableSampler
from clipgen.data.skips import describe_skips, skip_summary
from clipgen.distributed import process_rank

log = logging.getLogger(__name__)


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


def split_configured(data: Any, split: str) -> bool:
    """Whether a data config defines `split` (train or val): a dataset node that is not null
    and, for shard readers, whose `urls` are given (`data=webdataset` leaves `val.urls` null)."""
    node = data.get(split)
    return node is not None and not ("urls" in node and node.urls is None)


class ImageTextDataModule(pl.LightningDataModule):
    """Train and validation loaders over datasets built from config (`_target_` entries).

    Map-style training sets are read through a `ResumableSampler` (split across ranks by
    itself, so trainers run with `use_distributed_sampler=False`); the data position (epoch and
    batches done in it) is stored in every checkpoint and restored on resume. Streaming sets
    (webdataset) resume at epoch level: the shard order of an epoch starts over."""

    def __init__(self, train: Dataset, val: Dataset | None = None, batch_size: int = 32,
                 val_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.train_set = train
        self.val_set = val
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self._resume: tuple[int, int] | None = None

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None = None,
                drop_last: bool = False) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          collate_fn=collate_samples, drop_last=drop_last,
                          persistent_workers=self.num_workers > 0)

    @property
    def resumes_mid_epoch(self) -> bool:
        """Whether a resumed run continues its epoch where it stopped (map-style data)."""
        return not isinstance(self.train_set, IterableDataset)

    def train_dataloader(self) -> DataLoader:
        if isinstance(self.train_set, IterableDataset):
            return self._loader(self.train_set, self.batch_size)
        rank, world = process_rank()
        sampler = ResumableSampler(len(self.train_set), self.batch_size, self.seed, True,
                                   rank, world)
        if self._resume is not None:
            sampler.resume(*self._resume)
        return self._loader(self.train_set, self.batch_size, sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return self._loader(self.val_set, self.val_batch_size)

    def state_dict(self) -> dict[str, int]:
        """The data position: the epoch and the batches trained in it so far."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": int(trainer.current_epoch), "batches": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state:
            self._resume = (int(state["epoch"]), int(state["batches"]))

    def skipped(self) -> int:
        """Samples skipped as unreadable so far, over every dataset and worker."""
        return self.skip_summary()["skipped_samples"]

    def skip_summary(self) -> dict[str, int]:
        """Samples skipped and shards cut short so far, over every dataset and worker."""
        return skip_summary(d for d in (self.train_set, self.val_set) if d is not None)


class LogSkippedSamples(pl.Callback):
    """Log the datamodule's count of skipped (corrupt) samples as `data/skipped`."""

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        if isinstance(dm, ImageTextDataModule):
            pl_module.log("data/skipped", float(dm.skipped()), rank_zero_only=True)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module)
        dm = trainer.datamodule
        if isinstance(dm, ImageTextDataModule) and trainer.is_global_zero:
            log.info("epoch %d: %s", trainer.current_epoch, describe_skips(dm.skip_summary()))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule
                                ) -> None:
        self._log(trainer, pl_module)
