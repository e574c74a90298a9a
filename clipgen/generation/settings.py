"""The generator a sampling or evaluation config names: device, models and method settings.

Shared by `sample.py`, `eval/evaluate.py` and the benchmarks; the config is passed in, never
read globally."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from clipgen.generation.generators import METHODS
from clipgen.generation.text_to_image import TextToImage
from clipgen.models.bundle import default_bundle


def resolve_device(name: str) -> torch.device:
    """`auto` is the GPU when there is one, else the CPU; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_generator(cfg: DictConfig, device: torch.device) -> TextToImage:
    """The models of `cfg`: a `bundle=` folder (the shipped one when unset), or the pieces
    `vqgan=`, `clip.arch=` (+ `clip.pretrained=`) and `prior=` together."""
    pieces = (cfg.get("vqgan"), cfg.clip.get("arch"), cfg.get("prior"))
    if any(pieces):
        if not all(pieces):
            raise ValueError("giving pieces separately needs vqgan=, clip.arch= (with "
                             "clip.pretrained=) and prior= together; or give bundle=<folder>")
        return TextToImage.from_files(cfg.vqgan, cfg.clip.arch, cfg.clip.get("pretrained"),
                                      cfg.prior, device)
    return TextToImage.from_bundle(cfg.get("bundle") or default_bundle(), device)


def method_settings(cfg: DictConfig) -> dict:
    """The config section of the chosen method: `sampling`, `optimize` or `evolve`."""
    method = cfg.get("method", "clipgen")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    section = "sampling" if method == "clipgen" else method
    return OmegaConf.to_container(cfg[section], resolve=True)
