"""open_clip behind one interface: frozen, offline-first, embeddings L2-normalised.

`encode_image` takes images in the VQGAN's [-1, 1] space and applies CLIP's own preprocessing
(shorter-side bicubic resize, centre crop, CLIP mean/std) differentiably, so gradients flow
from the embedding back to the pixels (stage-2 embedding loss, CLIP-guided generation).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).with_name("clip_configs")
open_clip.add_model_config(CONFIG_DIR)  # clipgen's own small architectures

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def _looks_like_path(pretrained: str) -> bool:
    return "/" in pretrained or "\\" in pretrained or pretrained.endswith(WEIGHT_SUFFIXES)


def create_clip(arch: str, pretrained: str | None) -> nn.Module:
    """An open_clip model by architecture name with weights from a local file, a pretrained
    tag (needs the model hub), or none (random weights)."""
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown CLIP architecture {arch!r}; open_clip knows "
                         f"{len(open_clip.list_models())} (open_clip.list_models()), "
                         f"clipgen adds those in {CONFIG_DIR}")
    if pretrained is None:
        log.warning("CLIP %s has random weights (pretrained=None)", arch)
        return open_clip.create_model(arch, pretrained=None)
    if _looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"CLIP weights file {path} not found. Download the open_clip checkpoint for "
                f"{arch} on a machine with network access (e.g. open_clip.create_model("
                f"'{arch}', pretrained='openai', cache_dir=...) and copy the file it saved, "
                f"or `huggingface-cli download` the model's open_clip_pytorch_model.bin), then "
                "set model.clip.pretrained=<path to the file>")
        return open_clip.create_model(arch, pretrained=str(path))
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        raise ValueError(f"unknown pretrained tag {pretrained!r} for {arch}; known: {tags}, "
                         "or give a path to a weights file")
    try:
        return open_clip.create_model(arch, pretrained=pretrained)
    except Exception as error:
        raise RuntimeError(
            f"could not fetch CLIP weights {arch}/{pretrained} (no network?): {error}. "
            "Download them where the model hub is reachable and pass the file as "
            "model.clip.pretrained=<path>") from error


class FrozenCLIP(nn.Module):
    """A frozen open_clip model in eval mode with [-1, 1] image input."""

    def __init__(self, arch: str, pretrained: str | None = None,
                 random_weights: bool = False) -> None:
        """`pretrained`: a weights file or an open_clip tag. A frozen CLIP with random weights
        conditions and scores nothing meaningful, so leaving it out is an error unless
        `random_weights` asks for that on purpose (tests, speed measurements)."""
        super().__init__()
        if not pretrained and not random_weights:
            raise ValueError(
                f"CLIP {arch} has no weights: set model.clip.pretrained=<weights file> (for "
                "ViT-B-32 also the CLIP_WEIGHTS variable), or model.clip.random_weights=true "
                "to use random weights on purpose")
        self.arch = arch
        self.model = create_clip(arch, pretrained)
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.image_size, mean, std = preprocess_stats(self.model)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenCLIP:
        return super().train(False)  # stays in eval mode

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if hasattr(
            self.model, "text_projection") and self.model.text_projection is not None else int(
            self.model.visual.output_dim)

    @property
    def context_length(self) -> int:
        return int(self.tokenizer.context_length)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP's transform on (B, 3, H, W) tensors in [-1, 1], differentiable."""
        return clip_preprocess(images, self.image_size, self.mean, self.std)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] to (B, D) unit-norm embeddings."""
        feats = self.model.encode_image(self.preprocess(images))
        return unit_fp32(feats)

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Tokenise prompts (see `tokenize_prompts`)."""
        return tokenize_prompts(self.tokenizer, prompts)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts to (B, D) unit-norm embeddings."""
        tokens = self.tokenize(prompts).to(self.mean.device)
        return unit_fp32(self.model.encode_text(tokens))


def unit_fp32(features: torch.Tensor) -> torch.Tensor:
    """CLIP features as unit-norm fp32 embeddings, whatever dtype the model ran in (bf16 under
    bf16-mixed or with bf16 weights): what losses, metrics and the prior expect."""
    return F.normalize(features.float(), dim=-1)


def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Tokenise prompts with an open_clip tokenizer; reject empty ones and warn when one is cut
    at the context length."""
    if isinstance(prompts, str):
        prompts = [prompts]
    for p in prompts:
        if not p or not p.strip():
            raise ValueError("empty prompt: give a text describing the image")
    context = int(tokenizer.context_length)
    if hasattr(tokenizer, "encode"):
        limit = context - 2  # start and end tokens
        for p in prompts:
            n = len(tokenizer.encode(p))
            if n > limit:
                warnings.warn(f"prompt truncated to {limit} of its {n} tokens (CLIP context "
                              f"length {context}): {p[:60]!r}", stacklevel=3)
    return tokenizer(list(prompts))


def preprocess_stats(model: nn.Module) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Input size and normalisation (mean, std as (1, 3, 1, 1)) of an open_clip model."""
    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
    return _as_int(cfg["size"]), mean, std


def clip_preprocess(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor
                    ) -> torch.Tensor:
    """[-1, 1] images -> shorter side `size` (bicubic, antialiased) -> centre crop -> normalise."""
    x = (images.float() + 1) / 2
    h, w = x.shape[-2:]
    if min(h, w) != size:
        scale = size / min(h, w)
        new = (max(size, round(h * scale)), max(size, round(w * scale)))
        x = F.interpolate(x, size=new, mode="bicubic", align_corners=False, antialias=True)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    x = x[..., top:top + size, left:left + size]
    return (x - mean) / std


def _as_int(size: int | Sequence[int]) -> int:
    if isinstance(size, int):
        return size
    if len(set(size)) != 1:
        raise ValueError(f"non-square CLIP input size {size} is not supported")
    return int(size[0])
