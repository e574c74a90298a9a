"""The VQGAN tokenizer: taming's Encoder/Decoder around a vector quantizer.

Parameter names follow taming's `VQModel` (`encoder.*`, `decoder.*`, `quantize.embedding.weight`,
`quant_conv.*`, `post_quant_conv.*`), so public taming checkpoints load strictly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from taming.modules.diffusionmodules import model as taming_model
from taming.modules.diffusionmodules.model import Decoder, Encoder
from torch import nn

from clipgen.checkpoint import (
    clipgen_metadata,
    dataclass_from_dict,
    load_safetensors,
    load_state_dict_strict,
    load_torch_file,
    strip_prefix,
)
from clipgen.models.quantizers import QuantOutput, build_quantizer


@dataclass
class VQGANConfig:
    """Architecture of a VQGAN; names match taming's `ddconfig` plus the quantizer."""

    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.0
    z_channels: int = 256
    n_embed: int = 16384
    embed_dim: int = 256
    quantizer: str = "taming"
    beta: float = 0.25
    quantizer_kwargs: dict[str, Any] = field(default_factory=dict)
    # taming normalises with GroupNorm(32 groups); small models need fewer groups (with 32
    # channels, 32 groups is per-channel normalisation, which erases colour). Parameter names
    # do not change, so checkpoints stay compatible.
    norm_groups: int = 32

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VQGANConfig:
        return dataclass_from_dict(cls, d, "VQGAN")

    def ddconfig(self) -> dict[str, Any]:
        return {"double_z": False, "z_channels": self.z_channels, "resolution": self.resolution,
                "in_channels": self.in_channels, "out_ch": self.out_ch, "ch": self.ch,
                "ch_mult": list(self.ch_mult), "num_res_blocks": self.num_res_blocks,
                "attn_resolutions": list(self.attn_resolutions), "dropout": self.dropout}

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@contextmanager
def taming_norm_groups(groups: int) -> Iterator[None]:
    """Build taming Encoders/Decoders with GroupNorm of `groups` groups (taming fixes 32)."""
    original = taming_model.Normalize

    def normalize(in_channels: int) -> nn.GroupNorm:
        if in_channels % groups:
            raise ValueError(f"norm_groups={groups} does not divide {in_channels} channels; "
                             "choose ch and norm_groups so that it does")
        return nn.GroupNorm(num_groups=groups, num_channels=in_channels, eps=1e-6, affine=True)

    taming_model.Normalize = normalize
    try:
        yield
    finally:
        taming_model.Normalize = original


class VQGAN(nn.Module):
    """Image <-> discrete token grid. Images are (B, 3, H, W) in [-1, 1]."""

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        self.config = config
        dd = config.ddconfig()
        with taming_norm_groups(config.norm_groups):
            self.encoder = Encoder(**dd)
            self.decoder = Decoder(**dd)
        self.quantize = build_quantizer(config.quantizer, config.n_embed, config.embed_dim,
                                        config.beta, **config.quantizer_kwargs)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    def encode(self, x: torch.Tensor) -> QuantOutput:
        h = self.quant_conv(self.encoder(x))
        # Quantised in fp32 whatever autocast is on (bf16-mixed training): code assignment
        # and the codebook's statistics must not depend on bf16 rounding.
        with torch.autocast(h.device.type, enabled=False):
            return self.quantize(h.float())

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction, codebook loss and (B, h, w) code indices."""
        q = self.encode(x)
        return self.decode(q.z_q), q.loss, q.indices

    def token_grid(self, resolution: int | None = None) -> tuple[int, int]:
        side = (resolution or self.config.resolution) // self.config.downsample
        return side, side

    @torch.no_grad()
    def encode_to_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] to (B, h, w) int64 tokens."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        return self.encode(images).indices

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w) tokens (or (B, h*w) in raster order, square grid) to images in [-1, 1]."""
        if tokens.ndim == 2:
            side = int(round(tokens.shape[1] ** 0.5))
            if side * side != tokens.shape[1]:
                raise ValueError(f"{tokens.shape[1]} tokens do not make a square grid")
            tokens = tokens.view(tokens.shape[0], side, side)
        if tokens.min() < 0 or tokens.max() >= self.config.n_embed:
            raise ValueError(f"token ids must lie in [0, {self.config.n_embed})")
        return self.decode(self.quantize.lookup(tokens.long()))

    def decode_code_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Decode (B, h, w, n_embed) weights over codes (one-hot, straight-through or Gumbel
        relaxed) differentiably: the weighted code vectors go through the decoder."""
        z = weights.to(self.quantize.codebook().dtype) @ self.quantize.codebook()
        return self.decode(z.permute(0, 3, 1, 2).contiguous())

    @property
    def last_layer(self) -> torch.Tensor:
        """The decoder's output convolution weight (for the GAN's adaptive weight)."""
        return self.decoder.conv_out.weight


def extract_vqgan_state(checkpoint: Mapping[str, Any], use_ema: bool = True
                        ) -> dict[str, torch.Tensor]:
    """The VQGAN weights of a checkpoint, with taming key names.

    Accepts taming's format (`{"state_dict": {"encoder...", "loss...", ...}}`), clipgen's
    Lightning checkpoints (keys under `model.` and, with EMA, `ema.module.`) and bare state
    dicts. `loss.*` (discriminator, LPIPS) is kept here and dropped by the loader.
    """
    state = checkpoint.get("state_dict", checkpoint)
    for prefix in (("ema.module.", "model.") if use_ema else ("model.",)):
        inner = strip_prefix(state, prefix)
        if inner:
            inner.update({k: v for k, v in state.items() if k.startswith("loss.")})
            return inner
    return dict(state)


def read_weights_file(path: str | Path) -> Mapping[str, Any]:
    """A checkpoint's contents: safetensors files as a state dict, others via
    `torch.load(weights_only=True)`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    return load_torch_file(path)


def load_vqgan_state(model: VQGAN, checkpoint: Mapping[str, Any], use_ema: bool = True,
                     name: str = "checkpoint") -> list[str]:
    """Load checkpoint contents strictly into `model` (see `load_vqgan_weights`)."""
    state = extract_vqgan_state(checkpoint, use_ema=use_ema)
    return load_state_dict_strict(model, state, ignore_prefixes=("loss.",),
                                  what=f"VQGAN checkpoint {name}")


def load_vqgan_weights(model: VQGAN, path: str | Path, use_ema: bool = True) -> list[str]:
    """Load a taming-format, clipgen or safetensors checkpoint strictly into `model`.

    Training-loss keys (`loss.*`) are dropped on purpose and returned; any other missing or
    unexpected key raises CheckpointMismatchError.
    """
    return load_vqgan_state(model, read_weights_file(path), use_ema, Path(path).name)


def load_vqgan(path: str | Path, arch: Mapping[str, Any] | None = None) -> VQGAN:
    """A frozen VQGAN in eval mode from any of the weight formats:

    - a clipgen training checkpoint (`.ckpt` holding its config),
    - an exported `vqgan.safetensors` (architecture from `arch`, else the `vqgan.yaml` beside it),
    - a taming checkpoint such as `vqgan_imagenet_f16_16384.ckpt` (needs `arch`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQGAN weights {path} not found: train one with "
                                "`python train.py experiment=shapes_vqgan` and export it with "
                                "`clipgen-export`, or give a taming checkpoint with its arch")
    if path.suffix == ".safetensors":
        if arch is None:
            sidecar = path.with_suffix(".yaml")
            if not sidecar.is_file():
                raise FileNotFoundError(f"{path} needs its architecture: {sidecar} is missing "
                                        "(clipgen-export writes it), or pass arch")
            arch = OmegaConf.to_container(OmegaConf.load(sidecar).arch, resolve=True)
        model = VQGAN(VQGANConfig.from_dict(arch))
        load_vqgan_weights(model, path)
    else:
        checkpoint = load_torch_file(path)
        if arch is None:
            if "clipgen" not in checkpoint:
                raise ValueError(
                    f"{path} holds no architecture (a taming-format checkpoint): name it with "
                    "vqgan_arch=<name of configs/model/vqgan, e.g. f16_16384 for "
                    "vqgan_imagenet_f16_16384> or vqgan_arch=<arch .yaml file> (for "
                    "precompute.py: model/vqgan@model.tokenizer.arch=<name>)")
            meta = clipgen_metadata(checkpoint, path)
            if meta["stage"] != "vqgan":
                raise ValueError(f"{path} is a {meta['stage']!r} checkpoint, not a VQGAN one")
            arch = meta["config"]["model"]["vqgan"]
        model = VQGAN(VQGANConfig.from_dict(arch))
        load_vqgan_state(model, checkpoint, name=path.name)
    return model.eval().requires_grad_(False)
