"""Training driver shared by every stage: data, model, logger, checkpoints, resume."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from clipgen.data.datamodule import LogSkippedSamples
from clipgen.stages import build_stage

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`last` means run_dir/checkpoints/last.ckpt when it exists (a fresh start otherwise)."""
    if ckpt_path != "last":
        if ckpt_path is not None and not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"checkpoint to resume from not found: {ckpt_path}")
        return ckpt_path
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    log.info("no %s yet: starting fresh", last)
    return None


def run_training(cfg: DictConfig) -> pl.Trainer:
    """Train `cfg.stage` as configured; return the fitted Trainer."""
    torch.set_flush_denormal(True)  # denormals make CPU steps several times slower
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.run_dir)
    module = build_stage(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    checkpoints = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True,
                                  every_n_train_steps=cfg.checkpoint_every_n_steps,
                                  save_top_k=-1 if cfg.get("keep_all_checkpoints") else 1)
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=logger, callbacks=[checkpoints, LogSkippedSamples()],
        default_root_dir=str(run_dir))
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule,
                ckpt_path=resolve_ckpt_path(cfg.get("ckpt_path"), run_dir))
    log.info("run folder: %s", run_dir)
    return trainer
