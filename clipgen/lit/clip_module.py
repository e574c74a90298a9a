"""CLIP training for domains with no pretrained CLIP (open_clip model, contrastive loss)."""

from __future__ import annotations

import math
from typing import Any

import open_clip
import torch
import torch.nn.functional as F

from clipgen.data.shapes import ATTRIBUTE_VALUES
from clipgen.lit.base import ClipgenModule
from clipgen.lit.optim import adamw_with_schedule, decay_groups
from clipgen.metrics.zero_shot import retrieval_r1, zero_shot_accuracy
from clipgen.models.clip import (
    clip_preprocess,
    create_clip,
    preprocess_stats,
    tokenize_prompts,
    unit_fp32,
)

MAX_LOGIT_SCALE = math.log(100.0)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor,
                     negatives: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over a batch of paired unit embeddings. Hard negative texts
    (any number, shape (M, D)) join every image's candidates (NegCLIP); they are no queries of
    their own."""
    targets = torch.arange(len(img), device=img.device)
    candidates = txt if negatives is None else torch.cat([txt, negatives])
    image_to_text = F.cross_entropy(scale * img @ candidates.t(), targets)
    text_to_image = F.cross_entropy(scale * txt @ img.t(), targets)
    return (image_to_text + text_to_image) / 2


class CLIPModule(ClipgenModule):
    """Trains a (small, registered) open_clip architecture from scratch on captioned images.
    Built by Hydra from `configs/stage/clip.yaml`."""

    stage = "clip"

    def __init__(self, arch: str, pretrained: str | None = None, lr: float = 1e-3,
                 weight_decay: float = 0.1, warmup_steps: int = 100, max_steps: int = 1000,
                 run_config: dict[str, Any] | None = None) -> None:
        super().__init__(run_config)
        self.model = create_clip(arch, pretrained)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.image_size, mean, std = preprocess_stats(self.model)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.max_steps = warmup_steps, max_steps
        self._val: list[tuple[torch.Tensor, torch.Tensor, list[str], dict | None]] = []

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return tokenize_prompts(self.tokenizer, captions).to(self.device)

    def embed(self, images: torch.Tensor, captions: list[str]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit image and caption embeddings in fp32, whatever precision the model runs in
        (under bf16-mixed its outputs are bf16; the loss and the metrics expect fp32)."""
        img = self.model.encode_image(clip_preprocess(images, self.image_size, self.mean,
                                                      self.std))
        return unit_fp32(img), unit_fp32(self.model.encode_text(self.tokenize(captions)))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if not batch:  # every sample of this batch was unreadable (skipped and counted)
            return None
        img, txt = self.embed(batch["image"], batch["caption"])
        negatives = None
        if "negative_captions" in batch:  # hard negatives of each caption (data config)
            flat = [c for per_image in batch["negative_captions"] for c in per_image]
            negatives = unit_fp32(self.model.encode_text(self.tokenize(flat)))
        scale = self.model.logit_scale.exp()
        loss = contrastive_loss(img, txt, scale, negatives)
        self.log_dict({"train/loss": loss, "train/logit_scale": scale}, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():  # as in open_clip training: temperature at most 100
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if not batch:  # every sample of this batch was unreadable (skipped and counted)
            return None
        img, txt = self.embed(batch["image"], batch["caption"])
        self._val.append((img.cpu(), txt.cpu(), batch["caption"], batch.get("attributes")))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        img = torch.cat([v[0] for v in self._val])
        txt = torch.cat([v[1] for v in self._val])
        captions = [c for v in self._val for c in v[2]]
        i2t, t2i = retrieval_r1(img, txt, captions)
        metrics = {"val/i2t_r1": i2t, "val/t2i_r1": t2i}
        if all(v[3] is not None for v in self._val):
            metrics.update(self.zero_shot(img, {k: [a for v in self._val for a in v[3][k]]
                                                for k in ATTRIBUTE_VALUES}))
        self.log_dict(metrics, prog_bar=True)

    @torch.no_grad()
    def zero_shot(self, img: torch.Tensor, truth: dict[str, list[str]]) -> dict[str, float]:
        """Zero-shot accuracy of each Shapes attribute (prompt ensembles)."""

        def encode(prompts: list[str]) -> torch.Tensor:
            return unit_fp32(self.model.encode_text(self.tokenize(prompts))).cpu()

        return {f"val/zero_shot_{k}": v
                for k, v in zero_shot_accuracy(img, truth, encode).items()}

    def configure_optimizers(self) -> dict:
        groups = decay_groups(self.model.named_parameters(), self.weight_decay,
                              exclude=("logit_scale", "embedding", "bn"))
        return adamw_with_schedule(groups, self.lr, (0.9, 0.98), self.warmup_steps,
                                   self.max_steps, eps=1e-6)
