"""The trainable stages: `stage=<name>` in train.py picks one of these builders."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytorch_lightning as pl
from omegaconf import DictConfig

# name -> "module:function" building the LightningModule from the whole config.
STAGES: dict[str, str] = {
    "vqgan": "clipgen.lit.vqgan:build_vqgan_module",
    "clip": "clipgen.lit.clip:build_clip_module",
    "gpt": "clipgen.lit.prior:build_prior_module",
}


def build_stage(cfg: DictConfig) -> pl.LightningModule:
    """Build the LightningModule of `cfg.stage`."""
    name = cfg.get("stage")
    if name not in STAGES:
        choices = ", ".join(sorted(STAGES)) or "none yet"
        raise ValueError(f"unknown stage {name!r}: pass stage=<name> with one of: {choices}")
    module_name, func = STAGES[name].split(":")
    builder: Callable[[DictConfig], pl.LightningModule] = getattr(
        importlib.import_module(module_name), func)
    return builder(cfg)
