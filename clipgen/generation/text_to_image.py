"""Text-to-image (and image-variation) generation from the three trained pieces."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clipgen.checkpoint import fingerprint
from clipgen.generation.sampling import SamplingConfig, rerank, sample_tokens
from clipgen.models.bundle import bundle_clip, check_bundle
from clipgen.models.clip import FrozenCLIP
from clipgen.models.prior import CLIPPrior, load_prior
from clipgen.models.vqgan import VQGAN, load_vqgan


@dataclass
class Generation:
    """Images kept for one condition, best CLIP score first."""

    images: torch.Tensor  # (keep, 3, H, W) in [-1, 1]
    clip_cosine: torch.Tensor  # (keep,) cosine between image and condition embeddings


class TextToImage:
    """VQGAN + CLIP + prior: conditions from text (or images), tokens by the prior, pixels by
    the VQGAN, candidates reranked by CLIP."""

    def __init__(self, vqgan: VQGAN, clip: FrozenCLIP, prior: CLIPPrior,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.vqgan = vqgan.to(self.device).eval().requires_grad_(False)
        self.clip = clip.to(self.device).eval()
        self.prior = prior.to(self.device).eval()

    @classmethod
    def from_bundle(cls, folder: str | Path, device: str | torch.device = "cpu") -> TextToImage:
        """Load `vqgan`, `clip` and `prior` exports (safetensors + yaml) from one folder."""
        folder = Path(folder)
        check_bundle(folder)
        clip_arch, clip_weights = bundle_clip(folder)
        return cls.from_files(folder / "vqgan.safetensors", clip_arch, clip_weights,
                              folder / "prior.safetensors", device)

    @classmethod
    def from_files(cls, vqgan: str | Path, clip_arch: str, clip_weights: str | Path | None,
                   prior: str | Path, device: str | torch.device = "cpu",
                   vqgan_arch: Mapping[str, Any] | None = None) -> TextToImage:
        """Load each piece from its own file (checkpoints or exports); `vqgan_arch` is the
        architecture of a VQGAN file that does not carry it (a taming checkpoint)."""
        vq = load_vqgan(vqgan, vqgan_arch)
        clip = FrozenCLIP(clip_arch, str(clip_weights) if clip_weights else None)
        return cls(vq, clip, load_prior(prior, vq, clip), device)

    def _previewer(self, show: Callable[[torch.Tensor], None]
                   ) -> Callable[[int, torch.Tensor], None]:
        """An `on_token` callback that decodes the tokens so far at the end of each token row
        and greys out the image rows below them."""
        h, w = self.vqgan.token_grid()

        def on_token(i: int, tokens: torch.Tensor) -> None:
            if (i + 1) % w:
                return
            images = self.vqgan.decode_tokens(tokens).clamp(-1, 1)
            done = (i + 1) // w * images.shape[-2] // h
            images[..., done:, :] = 0.0  # grey where no token is sampled yet
            show(images.cpu())

        return on_token

    def fingerprints(self) -> dict[str, str]:
        """The weights of the three pieces, by fingerprint (what a result was made with)."""
        return {"vqgan": fingerprint(self.vqgan), "clip": fingerprint(self.clip.model),
                "prior": fingerprint(self.prior)}

    @torch.no_grad()
    def text_conditions(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.clip.encode_text(list(prompts))

    @torch.no_grad()
    def image_conditions(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images in [-1, 1] to conditions (variations of those images)."""
        return self.clip.encode_image(images.to(self.device))

    @torch.no_grad()
    def generate(self, cond: torch.Tensor, n_candidates: int = 1, keep: int = 1,
                 sampling: SamplingConfig | None = None, seed: int = 0, batch_size: int = 16,
                 progress: bool = False,
                 on_preview: Callable[[torch.Tensor], None] | None = None
                 ) -> list[Generation]:
        """For each condition row, sample `n_candidates` images and keep the `keep` with the
        highest CLIP similarity to the condition. Deterministic for (seed, batch_size).
        `on_preview(images)` receives the batch being sampled, decoded as far as its tokens go
        (rows not sampled yet grey), each time a row of tokens is complete."""
        if keep > n_candidates:
            raise ValueError(f"keep ({keep}) cannot exceed n_candidates ({n_candidates})")
        cond = cond.to(self.device)
        rows = cond.repeat_interleave(n_candidates, dim=0)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        images, cosines = [], []
        for start in tqdm(range(0, len(rows), batch_size), disable=not progress,
                          desc="sampling", unit="batch"):
            chunk = rows[start:start + batch_size]
            on_token = self._previewer(on_preview) if on_preview else None
            tokens = sample_tokens(self.prior, chunk, sampling, generator=gen, on_token=on_token)
            decoded = self.vqgan.decode_tokens(tokens).clamp(-1, 1)
            images.append(decoded.cpu())
            cosines.append((self.clip.encode_image(decoded) * chunk).sum(-1).cpu())
        all_images = torch.cat(images).view(len(cond), n_candidates, *images[0].shape[1:])
        all_cos = torch.cat(cosines).view(len(cond), n_candidates)
        best = rerank(all_cos, keep)
        return [Generation(all_images[i][best[i]], all_cos[i][best[i]]) for i in range(len(cond))]
