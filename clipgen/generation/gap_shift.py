"""Text conditions moved across CLIP's modality gap, towards the image embeddings a prior
was trained on.

A CLIP-conditioned prior (condition=clip_image) learns from image embeddings and is asked, at
sampling, to follow text embeddings, which lie in a cone of their own (Liang et al. 2022,
"Mind the Gap"). The gap is measured once, as the mean image embedding minus the mean text
embedding over training images and their captions; at sampling a text embedding t becomes
normalize(t + scale * gap). The vector lives beside the prior in a bundle, as
`modality_gap.safetensors`, with the CLIP fingerprint it was measured with and the scale
measured best for that bundle (docs/BENCHMARKS.md, "Held-out composition: text conditions
moved across the modality gap").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from clipgen.checkpoint import fingerprint, read_safetensors, save_safetensors
from clipgen.models.clip import FrozenCLIP

GAP_FILE = "modality_gap.safetensors"
MAKE_COMMAND = "python eval/modality_gap.py bundle=<folder>"


@dataclass
class ModalityGap:
    """Mean image embedding minus mean text embedding of one CLIP, with where it came from."""

    vector: torch.Tensor  # (D,)
    clip: str  # fingerprint of the CLIP it was measured with
    scale: float  # the shift recommended for this bundle (`gap_shift=auto`)
    images: int
    texts: int
    source: str  # what the images and captions were (a dataset config, in words)

    def shift(self, scale: float) -> torch.Tensor:
        """The vector added to unit text embeddings at `scale`."""
        return scale * self.vector


def measure_modality_gap(clip: FrozenCLIP, batches: Iterable[Mapping[str, Any]],
                         source: str, scale: float, progress: bool = True) -> ModalityGap:
    """The gap over `batches` of {"image": (B, 3, H, W) in [-1, 1], "caption": [str]}:
    mean unit image embedding minus mean unit text embedding. Images without a caption
    (empty) count for the image mean only; a source without any caption is refused."""
    device = clip.mean.device
    image_sum = text_sum = None
    images = texts = 0
    with torch.no_grad():
        for batch in tqdm(batches, desc="modality gap", unit="batch", disable=not progress):
            if not batch:  # every sample of the batch was skipped (corrupt files)
                continue
            emb = clip.encode_image(batch["image"].to(device)).sum(0)
            image_sum = emb if image_sum is None else image_sum + emb
            images += len(batch["image"])
            captions = [c for c in batch["caption"] if c and c.strip()]
            if captions:
                emb = clip.encode_text(captions).sum(0)
                text_sum = emb if text_sum is None else text_sum + emb
                texts += len(captions)
    if not images:
        raise ValueError(f"no image read from {source}: nothing to measure the gap on")
    if not texts:
        raise ValueError(f"no image of {source} has a caption: the gap needs captions "
                         "(same-name .txt files beside the images, see data/README.md)")
    vector = (image_sum / images - text_sum / texts).cpu()
    return ModalityGap(vector, fingerprint(clip.model), float(scale), images, texts, source)


def save_modality_gap(gap: ModalityGap, path: str | Path) -> Path:
    """Write `gap` as safetensors (the vector; everything else in the metadata)."""
    path = Path(path)
    save_safetensors({"gap": gap.vector.float().contiguous()}, path, metadata={
        "clip": gap.clip, "scale": json.dumps(gap.scale), "images": str(gap.images),
        "texts": str(gap.texts), "source": gap.source})
    return path


def load_modality_gap(path: str | Path, clip: FrozenCLIP | None = None) -> ModalityGap:
    """Read a gap file; with `clip`, refuse one measured with other CLIP weights."""
    state, meta = read_safetensors(path)
    missing = [k for k in ("clip", "scale", "images", "texts", "source") if k not in meta]
    if "gap" not in state:
        missing.insert(0, "gap tensor")
    if missing:
        raise ValueError(f"{path} is not a modality-gap file (no {', '.join(missing)}); make "
                         f"it with `{MAKE_COMMAND}`")
    gap = ModalityGap(state["gap"].float(), meta["clip"], float(json.loads(meta["scale"])),
                      int(meta["images"]), int(meta["texts"]), meta["source"])
    if clip is not None:
        ours = fingerprint(clip.model)
        if ours != gap.clip:
            raise ValueError(f"{path} was measured with CLIP {gap.clip}, but this bundle's CLIP "
                             f"is {ours}: measure it again with `{MAKE_COMMAND}`, or set "
                             "gap_shift=0")
        if gap.vector.shape != (clip.embed_dim,):
            raise ValueError(f"{path} holds a {tuple(gap.vector.shape)} vector; this CLIP's "
                             f"embeddings have {clip.embed_dim} dimensions")
    return gap


def shift_text(emb: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """Unit text embeddings (..., D) moved by `shift` (D,) and renormalised; None: unchanged."""
    if shift is None:
        return emb
    return F.normalize(emb + shift.to(emb.device, emb.dtype), dim=-1)


def gap_shift_scale(setting: str | float | None) -> float | None:
    """A `gap_shift` setting checked: None for `auto` (or None), else the scale, >= 0."""
    if setting is None or setting == "auto":
        return None
    try:
        scale = float(setting)
    except (TypeError, ValueError):
        raise ValueError(f"gap_shift must be auto or a number >= 0, got {setting!r}") from None
    if scale < 0:
        raise ValueError(f"gap_shift must be auto or a number >= 0, got {scale}")
    return scale


def text_shift_for(setting: str | float | None, gap_file: str | Path | None, clip: FrozenCLIP,
                   condition: str) -> torch.Tensor | None:
    """The shift a `gap_shift` setting gives a pipeline: `auto` (or None) is the scale stored
    in `gap_file`, or no shift when there is no file or the prior does not read image
    embeddings; 0 is no shift; a number is that scale, and needs the file."""
    scale = gap_shift_scale(setting)
    if scale is None:
        if condition != "clip_image" or gap_file is None or not Path(gap_file).is_file():
            return None
        gap = load_modality_gap(gap_file, clip)
        return gap.shift(gap.scale) if gap.scale else None
    if scale == 0:
        return None
    if condition != "clip_image":
        raise ValueError(f"gap_shift={scale} moves text embeddings towards the image embeddings a "
                         f"prior was trained on (condition=clip_image); this prior reads "
                         f"{condition}: set gap_shift=0")
    if gap_file is None or not Path(gap_file).is_file():
        where = gap_file or "the bundle folder"
        raise FileNotFoundError(f"gap_shift={scale} needs the measured gap, {GAP_FILE}, in "
                                f"{where}: make it with `{MAKE_COMMAND}`, or set gap_shift=0")
    return load_modality_gap(gap_file, clip).shift(scale)
