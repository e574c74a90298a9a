"""Text-to-image (and image-variation) generation from the three trained pieces."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clipgen.checkpoint import fingerprint, state_fingerprint
from clipgen.generation.gap_shift import GAP_FILE, shift_text, text_shift_for
from clipgen.generation.prompt_parts import is_composed, parse_prompt
from clipgen.generation.sampling import SamplingConfig, rerank, sample_tokens
from clipgen.models.bundle import bundle_clip, check_bundle
from clipgen.models.clip import FrozenCLIP
from clipgen.models.prior import CLIPPrior, load_prior
from clipgen.models.vqgan import VQGAN, load_vqgan


@dataclass
class Conditions:
    """What B prompts (or images) condition: `clip`, their (B, D) CLIP embeddings (what samples
    are reranked against, and what CLIP-guided methods follow), and `prior`, what the prior
    reads (the same embeddings, or (B, L) caption token ids for a caption-conditioned
    prior)."""

    clip: torch.Tensor
    prior: torch.Tensor
    # composable prompts: (B, P) weights of the P parts whose conditions `prior` holds as
    # (B, P, ...); None for plain prompts
    part_weights: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.clip)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditions:
        return Conditions(fn(self.clip), fn(self.prior),
                          None if self.part_weights is None else fn(self.part_weights))

    def to(self, device: torch.device) -> Conditions:
        return self._map(lambda t: t.to(device))

    def repeat_interleave(self, repeats: int) -> Conditions:
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def __getitem__(self, rows: slice) -> Conditions:
        return self._map(lambda t: t[rows])


@dataclass
class Generation:
    """Images kept for one condition, best CLIP score first."""

    images: torch.Tensor  # (keep, 3, H, W) in [-1, 1]
    clip_cosine: torch.Tensor  # (keep,) cosine between image and condition embeddings


def unsampled_canvas(batch: int, side: int, cells: int) -> torch.Tensor:
    """(batch, 3, side, side) images in [-1, 1] showing a grey checkerboard of `cells` x
    `cells` squares: where a preview has no sampled token yet."""
    index = torch.arange(side) * cells // side
    checker = ((index[:, None] + index[None, :]) % 2).float() * 0.3 - 0.15
    return checker.expand(batch, 3, side, side).clone()


class TextToImage:
    """VQGAN + CLIP + prior: conditions from text (or images), tokens by the prior, pixels by
    the VQGAN, candidates reranked by CLIP. `text_shift` (D,), where given, moves the text
    embeddings the prior reads across CLIP's modality gap (`clipgen.generation.gap_shift`);
    reranking still scores against the prompts' own embeddings."""

    def __init__(self, vqgan: VQGAN, clip: FrozenCLIP, prior: CLIPPrior,
                 device: str | torch.device = "cpu",
                 text_shift: torch.Tensor | None = None) -> None:
        self.device = torch.device(device)
        self.vqgan = vqgan.to(self.device).eval().requires_grad_(False)
        self.clip = clip.to(self.device).eval()
        self.prior = prior.to(self.device).eval()
        self.text_shift = None if text_shift is None else text_shift.to(self.device)

    @classmethod
    def from_bundle(cls, folder: str | Path, device: str | torch.device = "cpu",
                    condition: str | None = None,
                    gap_shift: str | float | None = "auto") -> TextToImage:
        """Load `vqgan`, `clip` and `prior` exports (safetensors + yaml) from one folder; with
        `condition`, refuse a prior trained on another conditioning. `gap_shift` (`auto`, 0 or
        a scale) reads the folder's `modality_gap.safetensors` (`text_shift_for`)."""
        folder = Path(folder)
        check_bundle(folder)
        clip_arch, clip_weights = bundle_clip(folder)
        return cls.from_files(folder / "vqgan.safetensors", clip_arch, clip_weights,
                              folder / "prior.safetensors", device, condition=condition,
                              gap_file=folder / GAP_FILE, gap_shift=gap_shift)

    @classmethod
    def from_files(cls, vqgan: str | Path, clip_arch: str, clip_weights: str | Path | None,
                   prior: str | Path, device: str | torch.device = "cpu",
                   vqgan_arch: Mapping[str, Any] | None = None,
                   condition: str | None = None, gap_file: str | Path | None = None,
                   gap_shift: str | float | None = "auto") -> TextToImage:
        """Load each piece from its own file (checkpoints or exports); `vqgan_arch` is the
        architecture of a VQGAN file that does not carry it (a taming checkpoint); `gap_file`
        a measured modality gap, applied as `gap_shift` says (`text_shift_for`)."""
        vq = load_vqgan(vqgan, vqgan_arch)
        clip = FrozenCLIP(clip_arch, str(clip_weights) if clip_weights else None)
        loaded = load_prior(prior, vq, clip, condition)
        shift = text_shift_for(gap_shift, gap_file, clip, loaded.config.condition)
        return cls(vq, clip, loaded, device, text_shift=shift)

    @property
    def condition(self) -> str:
        """The prior's conditioning: clip_image, clip_text or text."""
        return self.prior.config.condition

    def _previewer(self, show: Callable[[torch.Tensor], None]
                   ) -> Callable[[int, torch.Tensor], None]:
        """An `on_token` callback that, at the end of each token row, decodes the rows sampled
        so far on their own (the tokens not yet drawn never reach the decoder) and shows them
        above a checkerboard of the cells still to come."""
        h, w = self.vqgan.token_grid()

        def on_token(i: int, tokens: torch.Tensor) -> None:
            if (i + 1) % w:
                return
            rows = (i + 1) // w
            done = self.vqgan.decode_tokens(tokens.view(len(tokens), h, w)[:, :rows])
            images = unsampled_canvas(len(tokens), done.shape[-1], h)
            images[..., :done.shape[-2], :] = done.float().clamp(-1, 1).cpu()
            show(images)

        return on_token

    def fingerprints(self) -> dict[str, str]:
        """The weights of the three pieces, by fingerprint (what a result was made with), and
        the text shift where there is one."""
        prints = {"vqgan": fingerprint(self.vqgan), "clip": fingerprint(self.clip.model),
                  "prior": fingerprint(self.prior)}
        if self.text_shift is not None:
            prints["text_shift"] = state_fingerprint({"shift": self.text_shift})
        return prints

    @torch.no_grad()
    def text_conditions(self, prompts: Sequence[str]) -> Conditions:
        """The conditions of text prompts, for this prior's conditioning. Composable prompts
        ("a blue shape AND a star", `clipgen.generation.prompt_parts`) condition on each part;
        candidates are reranked against the weighted mean of their positive parts."""
        prompts = list(prompts)
        if any(is_composed(p) for p in prompts):
            return self._composed_conditions(prompts)
        emb = self.clip.encode_text(prompts)
        if not self.prior.config.reads_captions:
            return Conditions(emb, shift_text(emb, self.text_shift))
        return Conditions(emb, self.prior.prompt_condition(prompts, self.clip))

    def _composed_conditions(self, prompts: list[str]) -> Conditions:
        parsed = [parse_prompt(p) for p in prompts]
        if len({len(parts) for parts in parsed}) > 1:
            raise ValueError("composable prompts sampled together must have the same number of "
                             f"parts; got {[len(parts) for parts in parsed]} for {prompts}: "
                             "condition them in separate calls (generate_for_prompts groups them)")
        texts = [part.text for parts in parsed for part in parts]
        weights = torch.tensor([[part.weight for part in parts] for parts in parsed])
        emb = self.clip.encode_text(texts).view(len(prompts), weights.shape[1], -1)
        positive = weights.clamp(min=0).to(emb.device)[..., None]
        rerank_emb = torch.nn.functional.normalize((positive * emb).sum(1), dim=-1)
        if self.prior.config.reads_captions:
            cond = self.prior.prompt_condition(texts, self.clip)
            cond = cond.view(len(prompts), weights.shape[1], *cond.shape[1:])
        else:
            cond = shift_text(emb, self.text_shift)
        return Conditions(rerank_emb, cond, weights.to(emb.device))

    @torch.no_grad()
    def image_conditions(self, images: torch.Tensor) -> Conditions:
        """(N, 3, H, W) images in [-1, 1] to conditions (variations of those images); a
        caption-conditioned prior has no image path and refuses."""
        if self.prior.config.reads_captions:
            raise ValueError("this prior was trained on caption tokens (condition=text): it "
                             "reads text, not images, so it cannot make variations of an image. "
                             "Give prompts, or use a CLIP-conditioned bundle for image=")
        emb = self.clip.encode_image(images.to(self.device))
        return Conditions(emb, emb)

    @torch.no_grad()
    def generate(self, cond: Conditions, n_candidates: int = 1, keep: int = 1,
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
        rows = cond.repeat_interleave(n_candidates)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        images, cosines = [], []
        for start in tqdm(range(0, len(rows), batch_size), disable=not progress,
                          desc="sampling", unit="batch"):
            chunk = rows[start:start + batch_size]
            on_token = self._previewer(on_preview) if on_preview else None
            tokens = sample_tokens(self.prior, chunk.prior, sampling, generator=gen,
                                   on_token=on_token, part_weights=chunk.part_weights)
            decoded = self.vqgan.decode_tokens(tokens).float().clamp(-1, 1)
            images.append(decoded.cpu())
            cosines.append((self.clip.encode_image(decoded) * chunk.clip).sum(-1).cpu())
        all_images = torch.cat(images).view(len(cond), n_candidates, *images[0].shape[1:])
        all_cos = torch.cat(cosines).view(len(cond), n_candidates)
        best = rerank(all_cos, keep)
        return [Generation(all_images[i][best[i]], all_cos[i][best[i]]) for i in range(len(cond))]
