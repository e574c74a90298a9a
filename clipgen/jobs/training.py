"""Training driver shared by every stage: data, model, logger, checkpoints, resume."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import hydra
import hydra.errors
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

from clipgen.atomic import remove_stale_temps
from clipgen.data.datamodule import LogSkippedSamples
from clipgen.evaluation.plots import footer_text
from clipgen.evaluation.run_plots import plot_run
from clipgen.lit.base import ClipgenModule
from clipgen.lit.checkpoint_io import AtomicCheckpointIO
from clipgen.lit.rank_sync import CheckRanksInSync
from clipgen.run_info import effective_batch, git_commit, training_precision

log = logging.getLogger(__name__)


def build_stage(cfg: DictConfig) -> ClipgenModule:
    """The LightningModule of the chosen stage, instantiated from `cfg.stage.module` (its
    `_target_` and arguments) with the whole resolved run config stored for checkpoints."""
    if not cfg.get("stage"):
        raise ValueError("no stage chosen: pass stage=<vqgan|clip|prior> (configs/stage/) or an "
                         "experiment=<name> that sets one (configs/experiment/)")
    module = hydra.utils.instantiate(cfg.stage.module)
    # Set after construction: as a constructor argument, Hydra would instantiate every
    # `_target_` inside the run config (data, trainer, logger) too.
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    return module


def compiled_if_asked(module: ClipgenModule, cfg: DictConfig) -> pl.LightningModule:
    """`torch.compile(module)` when `cfg.compile` is set (Lightning fits the compiled module and
    saves the original's weights), else `module` itself."""
    return torch.compile(module) if cfg.get("compile") else module


def trainer_precision(cfg: DictConfig) -> tuple[str, str]:
    """The Lightning precision `cfg.trainer` asks for (`auto` resolved for this hardware), and
    why."""
    return training_precision(str(cfg.trainer.get("precision", "32-true")),
                              str(cfg.trainer.get("accelerator", "auto")))


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """`last` means the newest of run_dir/checkpoints/last.ckpt and the checkpoints Lightning
    writes on a SLURM preemption signal (run_dir/hpc_ckpt_*.ckpt); a fresh start when there is
    none."""
    if ckpt_path != "last":
        if ckpt_path is not None and Path(ckpt_path).is_dir():
            raise ValueError(f"{ckpt_path} is a folder (a sharded torch.distributed.checkpoint): "
                             "clipgen resumes only from single-file checkpoints, which load "
                             "without unpickling; train with trainer.strategy.state_dict_type="
                             "full (the fsdp trainer's default)")
        if ckpt_path is not None and not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"checkpoint to resume from not found: {ckpt_path}")
        return ckpt_path
    found = [p for p in [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
             if p.is_file()]
    if found:
        newest = max(found, key=lambda p: p.stat().st_mtime)
        log.info("resuming from %s", newest)
        return str(newest)
    log.info("no checkpoint in %s yet: starting fresh", run_dir)
    return None


class FinalStepCheckpoint(pl.Callback):
    """Write `last.ckpt` right after the batch that reaches `trainer.max_steps`, while the
    loops are still mid-epoch. Saved after `fit` returns instead, the loops would record the
    epoch as finished, and a run resumed from it with a larger `max_steps` would skip to the
    next epoch's data order instead of continuing exactly."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: object, batch: object, batch_idx: int) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.save_checkpoint(self.path, weights_only=False)


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint without its end-of-training `last.ckpt`: that one is written
    after the loops record the epoch as finished, and when no periodic save came before it
    (a run shorter than `checkpoint_every_n_steps`) it would replace the mid-epoch one that
    FinalStepCheckpoint (or `run_training`'s end) wrote."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        return None


STEP_IN_NAME = re.compile(r"step=(\d+)")


class CleanInterruptedSaves(pl.Callback):
    """At the start of fit (after any resume), on rank zero: delete partial checkpoint files
    left by a kill mid-write, and checkpoints from beyond the step the run resumes at (a kill
    between the periodic save and `last.ckpt` leaves one the resumed run would keep besides
    its own, whatever `save_top_k` says)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        remove_stale_temps(self.folder)
        for path in self.folder.glob("*.ckpt"):
            match = STEP_IN_NAME.search(path.name)
            if match and int(match.group(1)) > trainer.global_step:
                log.info("removing %s: written after step %d, where this run resumes", path,
                         trainer.global_step)
                path.unlink()


class RunSummary(pl.Callback):
    """Print, at the start of training, the effective batch size, the base learning rates, the
    code version, the strategy and how many parameter values rank zero holds (under FSDP, its
    shard: about 1 / world size of them)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        batch = getattr(trainer.datamodule, "batch_size", None)
        held = sum(p.numel() for p in trainer.model.parameters())
        lines = [f"code: {git_commit()}",
                 f"strategy: {type(trainer.strategy).__name__}, {trainer.world_size} "
                 f"process(es); parameter values held by rank 0: {held}"]
        if batch is not None:
            eff = effective_batch(batch, trainer.num_devices, trainer.num_nodes,
                                  trainer.accumulate_grad_batches)
            lines.append(f"effective batch size {eff['effective']} = {batch} per device x "
                         f"{eff['devices']} devices x {eff['num_nodes']} nodes x "
                         f"{eff['accumulate_grad_batches']} accumulated")
        for i, opt in enumerate(trainer.optimizers):
            rates = sorted({g.get("initial_lr", g["lr"]) for g in opt.param_groups})
            lines.append(f"optimizer {i} ({type(opt).__name__}): base learning rate "
                         f"{', '.join(f'{r:.3g}' for r in rates)}")
        for line in lines:
            print(line)
            log.info(line)


def build_logger(cfg: DictConfig) -> Logger | bool:
    """The configured logger; when wandb cannot start (not installed, or its service fails),
    a CSV logger in the run folder instead, with a warning saying why."""
    if not cfg.get("logger"):
        return False
    if "Wandb" not in str(cfg.logger.get("_target_", "")):
        return hydra.utils.instantiate(cfg.logger)
    try:
        logger = hydra.utils.instantiate(cfg.logger)
        _ = logger.experiment  # starts the wandb run (on rank zero) now, not mid-fit
        return logger
    except Exception as error:  # wandb raises its own errors (service, auth, timeouts)
        log.warning("wandb logger unavailable (%s: %s): logging to CSV in %s/logs instead",
                    type(error).__name__, error, cfg.run_dir)
        print(f"wandb could not start ({type(error).__name__}: {error}); logging to CSV in "
              f"{cfg.run_dir}/logs")
        return CSVLogger(save_dir=cfg.run_dir, name="logs")


def run_training(cfg: DictConfig) -> pl.Trainer:
    """Train `cfg.stage` as configured; return the fitted Trainer."""
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.run_dir)
    datamodule = hydra.utils.instantiate(cfg.data)  # data errors before any model loads
    if getattr(datamodule, "val_set", True) is None:
        log.warning("no validation set: stage %s trains without validation metrics; give one "
                    "(data=folder holds out data.train.val_fraction, data=webdataset takes "
                    "data.val.urls; see data/README.md)", cfg.stage.name)
    module = build_stage(cfg)
    if getattr(datamodule, "resumes_mid_epoch", False):
        # Lightning warns that a mid-epoch resume repeats data unless the DataLoader itself is
        # stateful; here the datamodule restores the position (ImageTextDataModule.state_dict).
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended "
                                "before the epoch ended")
    logger = build_logger(cfg)
    loggers = [logger] if logger else []
    if isinstance(logger, WandbLogger):  # the run folder keeps CSV logs (and curves) too
        loggers.append(CSVLogger(save_dir=str(run_dir), name="logs"))
    overrides = {}
    if cfg.trainer.get("strategy") == "ddp" and getattr(module, "ddp_unused_parameters", False):
        overrides["strategy"] = "ddp_find_unused_parameters_true"
        log.info("stage %s: DDP with unused-parameter detection", cfg.stage.name)
    precision, why = trainer_precision(cfg)
    overrides["precision"] = precision
    print(f"precision: {precision} ({why})")
    log.info("precision: %s (%s)", precision, why)
    final = run_dir / "checkpoints" / "last.ckpt"
    # No version counter: when the final step is also a periodic save, ModelCheckpoint finds
    # the last.ckpt FinalStepCheckpoint just wrote (the same state) and must overwrite it, not
    # add last-v1.ckpt.
    checkpoints = PeriodicCheckpoint(dirpath=run_dir / "checkpoints", save_last=True,
                                    every_n_train_steps=cfg.checkpoint_every_n_steps,
                                    save_top_k=-1 if cfg.get("keep_all_checkpoints") else 1,
                                    enable_version_counter=False)
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=loggers or False,
        callbacks=[checkpoints, LogSkippedSamples(), RunSummary(), FinalStepCheckpoint(final),
                   CleanInterruptedSaves(final.parent)]
        + ([CheckRanksInSync()] if cfg.get("check_rank_sync") else []),
        plugins=[AtomicCheckpointIO()], default_root_dir=str(run_dir), **overrides)
    for each in loggers:
        each.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "git": git_commit()})
    model = compiled_if_asked(module, cfg)
    # Resuming unpickles nothing but tensors and plain containers (weights_only=True).
    trainer.fit(model, datamodule=datamodule,
                ckpt_path=resolve_ckpt_path(cfg.get("ckpt_path"), run_dir), weights_only=True)
    # ModelCheckpoint saves every N steps and at validation; the steps after the last of those
    # would be lost, so the end of training always writes last.ckpt (every rank takes part):
    # at max_steps from inside the loop (FinalStepCheckpoint), otherwise (max_epochs, a time
    # limit) here.
    if not 0 < trainer.max_steps <= trainer.global_step:
        trainer.save_checkpoint(final, weights_only=False)  # full state: optimiser, loops, data
    log.info("final checkpoint (step %d): %s", trainer.global_step, final)
    if cfg.get("plot_curves") and trainer.is_global_zero:
        write_run_curves(run_dir, loggers)
    log.info("run folder: %s", run_dir)
    return trainer


def write_run_curves(run_dir: Path, loggers: list[Logger]) -> Path | None:
    """`<run>/curves.png` from the run's CSV logs, also sent to wandb when it is a logger."""
    if not any(isinstance(each, CSVLogger) for each in loggers):
        return None
    try:
        path = plot_run(run_dir, footer_text())
    except (ValueError, FileNotFoundError) as error:  # nothing logged (a run of a few steps)
        log.info("no curves drawn: %s", error)
        return None
    for each in loggers:
        if isinstance(each, WandbLogger):
            each.log_image(key="run/curves", images=[str(path)])
    log.info("curves: %s", path)
    return path
