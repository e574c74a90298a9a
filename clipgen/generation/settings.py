"""The generator a sampling or evaluation config names: device, models and method settings.

Shared by `sample.py`, `eval/evaluate.py` and the benchmarks; the config is passed in, never
read globally."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from clipgen.generation.gap_shift import gap_shift_scale
from clipgen.generation.generators import METHODS
from clipgen.generation.sampling import SamplingConfig
from clipgen.generation.text_to_image import TextToImage
from clipgen.models.bundle import default_bundle


def resolve_device(name: str) -> torch.device:
    """`auto` is the GPU when there is one, else the CPU; anything else as torch spells it,
    refused when this machine does not have it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device={name} is not a device torch knows ({error}); use auto, "
                         "cpu or cuda[:N]") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name}, but torch sees no GPU here; use device=auto or "
                             "device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={name}, but this machine has "
                             f"{torch.cuda.device_count()} GPU(s)")
    return device


def check_generation_settings(cfg: DictConfig) -> None:
    """Refuse bad generation settings before any model loads or any file is written: counts
    below one, more images kept than sampled, an unknown method, sampling values out of
    range, a gap_shift that is neither auto nor a scale, a device this machine lacks."""
    for key in ("n_candidates", "batch_size", "samples_per_prompt"):
        if key in cfg and (not isinstance(cfg[key], int) or cfg[key] < 1):
            raise ValueError(f"{key} must be a whole number >= 1, got {cfg[key]!r}")
    if "samples_per_prompt" in cfg and cfg.samples_per_prompt > cfg.n_candidates:
        raise ValueError(f"samples_per_prompt ({cfg.samples_per_prompt}) cannot exceed "
                         f"n_candidates ({cfg.n_candidates}): the kept images are the best "
                         "of the candidates; raise n_candidates")
    method_settings(cfg)
    SamplingConfig(**OmegaConf.to_container(cfg.sampling, resolve=True))
    gap_shift_scale(cfg.get("gap_shift", "auto"))
    resolve_device(cfg.device)


def config_dirs() -> list[Path]:
    """The primary config folders of the running Hydra job (none outside a Hydra job)."""
    if not HydraConfig.initialized():
        return []
    return [Path(source.path) for source in HydraConfig.get().runtime.config_sources
            if source.schema == "file" and source.provider == "main"]


def vqgan_arch_setting(value: str, cfg: DictConfig,
                       search: Sequence[Path] | None = None) -> dict[str, Any]:
    """The architecture `vqgan_arch=` names: a `.yaml` file, or an option of the
    `model/vqgan` config group (`f16_16384` ...). Interpolations such as `${resolution}`
    resolve against `cfg`."""
    search = config_dirs() if search is None else search
    candidates = [Path(value)] + [d / "model" / "vqgan" / f"{value}.yaml" for d in search]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        names = sorted({p.stem for d in search for p in (d / "model" / "vqgan").glob("*.yaml")})
        raise FileNotFoundError(f"vqgan_arch={value} is neither a .yaml file nor a config of "
                                f"model/vqgan (available: {', '.join(names) or 'none found'})")
    arch = OmegaConf.load(path)
    combined = OmegaConf.merge(cfg, {"vqgan_arch": arch})
    try:
        return OmegaConf.to_container(combined.vqgan_arch, resolve=True)
    except InterpolationResolutionError as err:
        raise ValueError(f"vqgan_arch={value} ({path}) refers to a setting this run does not "
                         f"have ({err}); add it, e.g. +resolution=<pixels>") from err


def build_generator(cfg: DictConfig, device: torch.device) -> TextToImage:
    """The models of `cfg`: a `bundle=` folder (the shipped one when unset), or the pieces
    `vqgan=` (+ `vqgan_arch=` for a taming checkpoint), `clip.arch=` (+ `clip.pretrained=`)
    and `prior=` together (+ `modality_gap=` for a measured gap); `gap_shift=` as
    `clipgen.generation.gap_shift.text_shift_for` reads it."""
    pieces = (cfg.get("vqgan"), cfg.clip.get("arch"), cfg.get("prior"))
    if cfg.get("vqgan_arch") and not cfg.get("vqgan"):
        raise ValueError("vqgan_arch= describes the checkpoint given by vqgan=<file>; "
                         "set vqgan= too (with clip.arch= and prior=)")
    if any(pieces):
        if not all(pieces):
            raise ValueError("giving pieces separately needs vqgan=, clip.arch= (with "
                             "clip.pretrained=) and prior= together; or give bundle=<folder>")
        arch = vqgan_arch_setting(cfg.vqgan_arch, cfg) if cfg.get("vqgan_arch") else None
        return TextToImage.from_files(cfg.vqgan, cfg.clip.arch, cfg.clip.get("pretrained"),
                                      cfg.prior, device, vqgan_arch=arch,
                                      condition=cfg.get("condition"),
                                      gap_file=cfg.get("modality_gap"),
                                      gap_shift=cfg.get("gap_shift", "auto"))
    if cfg.get("modality_gap"):
        raise ValueError("modality_gap=<file> goes with pieces (vqgan=, clip.arch=, prior=); a "
                         "bundle reads its own modality_gap.safetensors")
    return TextToImage.from_bundle(cfg.get("bundle") or default_bundle(), device,
                                   condition=cfg.get("condition"),
                                   gap_shift=cfg.get("gap_shift", "auto"))


def method_settings(cfg: DictConfig) -> dict:
    """The config section of the chosen method: `sampling`, `optimize` or `evolve`."""
    method = cfg.get("method", "clipgen")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    return OmegaConf.to_container(cfg[method_section(method)], resolve=True)


def method_section(method: str) -> str:
    """The config section a method reads: `sampling` for clipgen, else its own name."""
    return "sampling" if method == "clipgen" else method


def settings_record(cfg: DictConfig) -> dict[str, Any]:
    """How images were made, as `samples.jsonl` records it: the method, its settings, the
    candidate count and batch size."""
    method = cfg.get("method", "clipgen")
    return {"method": method, method_section(method): method_settings(cfg),
            "n_candidates": cfg.n_candidates, "batch_size": cfg.batch_size}
