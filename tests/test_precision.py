"""Each stage, evaluation path and generator in each precision, forced explicitly: what `auto`
would pick depends on the processor (bf16-mixed on CPUs with native bf16, fp32 elsewhere), so
no test here relies on it. Runs are tiny because bf16 is emulated, and slow, on CPUs without
native bf16."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import clipgen.run_info as run_info
from clipgen.jobs.training import run_training
from clipgen.lit.clip_module import CLIPModule
from clipgen.lit.prior_module import PriorModule
from clipgen.lit.vqgan_module import VQGANModule
from tests.helpers import TINY_STAGE, TINY_TRAINER, tiny_prior_overrides

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["trainer.max_steps=2", "trainer.val_check_interval=2", "checkpoint_every_n_steps=2",
         "plot_curves=false"]
# What validation logs for each stage: proof that it ran to its end in the forced precision.
VALIDATION_METRIC = {"vqgan": "val/psnr", "clip": "val/zero_shot_color", "prior": "val/token_loss",
                     "prior_text": "val/token_loss",
                     "prior_clip_text": "val/token_loss"}


def _stage_overrides(stage: str, folder: Path) -> list[str]:
    if stage == "vqgan":  # with the discriminator from the first step
        return [*TINY_STAGE["vqgan"], *TINY_TRAINER, "model.loss.disc_start=0"]
    if stage == "clip":
        return [*TINY_STAGE["clip"], *TINY_TRAINER]
    trainer = [t for t in TINY_TRAINER if not t.startswith("data.val.length")]
    if stage == "prior":  # with the embedding loss: decodes and re-embeds every batch
        return [*tiny_prior_overrides(folder), *trainer, "model.train.emb_loss_weight=0.2"]
    condition = stage.removeprefix("prior_")
    experiment = {"text": "shapes_prior_text", "clip_text": "shapes_prior_clip_text"}[condition]
    overrides = tiny_prior_overrides(folder, captions_per_image=2)
    return [f"experiment={experiment}", *overrides[1:], *trainer, "model.prior.text_layers=1"]


def _train(stage: str, precision: str, folder: Path) -> tuple:
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[*_stage_overrides(stage, folder), *STEPS,
                                          f"trainer.precision={precision}",
                                          f"run_dir={folder / 'run'}"])
    return run_training(cfg), folder / "run"


@pytest.fixture
def autocast_seen(monkeypatch) -> set[tuple[str, str]]:
    """(step, dtype) of every training and validation step of any stage: the autocast dtype
    on the CPU, or float32 when autocast is off."""
    seen: set[tuple[str, str]] = set()
    for cls in (VQGANModule, CLIPModule, PriorModule):
        for hook in ("training_step", "validation_step"):
            original = getattr(cls, hook)

            def recorded(self, *args, _original=original, _hook=hook, **kwargs):
                dtype = (torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                         else torch.float32)
                seen.add((_hook, str(dtype).removeprefix("torch.")))
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(cls, hook, recorded)
    return seen


def _logged(run_dir: Path) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for path in run_dir.glob("logs/version_*/metrics.csv"):
        with open(path) as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if value and key not in ("step", "epoch"):
                        values.setdefault(key, []).append(float(value))
    return values


@pytest.mark.parametrize("stage", ["vqgan", "clip", "prior", "prior_text", "prior_clip_text"])
def test_each_stage_trains_and_validates_in_bf16_mixed(stage, autocast_seen, tmp_path):
    trainer, run_dir = _train(stage, "bf16-mixed", tmp_path)
    assert trainer.precision == "bf16-mixed"
    assert autocast_seen == {("training_step", "bfloat16"), ("validation_step", "bfloat16")}
    logged = _logged(run_dir)
    assert VALIDATION_METRIC[stage] in logged, sorted(logged)
    losses = [v for k, vs in logged.items() if k.startswith("train/") and "loss" in k for v in vs]
    assert losses and all(math.isfinite(v) for v in losses)


def test_16_mixed_on_cpu_is_said_to_run_as_bf16_mixed():
    # Lightning runs 16-mixed as bf16-mixed on a CPU accelerator; the printed choice says so
    assert run_info.training_precision("16-mixed", "cpu") == (
        "bf16-mixed", "16-mixed asked for: Lightning runs it as bf16-mixed on CPU")
    assert run_info.training_precision("16-mixed", "gpu") == ("16-mixed", "as configured")


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_auto_precision_trains_as_the_hardware_check_says(fast_bf16, autocast_seen, tmp_path,
                                                          monkeypatch):
    monkeypatch.setattr(run_info, "cpu_has_fast_bf16", lambda: fast_bf16)
    trainer, _ = _train("clip", "auto", tmp_path)
    dtype = "bfloat16" if fast_bf16 else "float32"
    assert trainer.precision == ("bf16-mixed" if fast_bf16 else "32-true")
    assert autocast_seen == {("training_step", dtype), ("validation_step", dtype)}
