"""The three generators behind one call: CLIP-GEN sampling (`clipgen`), gradient ascent on the
VQGAN latent (`optimize`) and evolutionary search (`evolve`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid

from clipgen.data.transforms import to_pil
from clipgen.generation.clip_guided.evolve import EvolveConfig, evolve_latents
from clipgen.generation.clip_guided.optimize import OptimizeConfig, optimize_latents
from clipgen.generation.prompt_parts import part_count
from clipgen.generation.sampling import SamplingConfig
from clipgen.generation.text_to_image import Conditions, Generation, TextToImage

METHODS = ("clipgen", "optimize", "evolve")


def generate_by_method(pipe: TextToImage, method: str, conditions: Conditions, keep: int,
                       settings: Mapping[str, Any], seed: int = 0, n_candidates: int = 1,
                       batch_size: int = 16, init_images: torch.Tensor | None = None,
                       progress: bool = False,
                       on_preview: Callable[[torch.Tensor], None] | None = None
                       ) -> tuple[list[Generation], list[list[torch.Tensor]]]:
    """For each condition row, `keep` images best first with their CLIP cosine to the
    condition; plus, for `optimize`, each row's progress frames (else empty lists).

    `settings` holds the method's section of the config (sampling for clipgen, the fields of
    OptimizeConfig or EvolveConfig otherwise). `on_preview(images)` is shown the work so far:
    the batch being sampled as its token rows arrive (clipgen), the images of every step
    (optimize), each generation's best images (evolve)."""
    cond = conditions.clip  # what the CLIP-guided methods follow
    if method == "clipgen":
        results = pipe.generate(conditions, n_candidates=max(n_candidates, keep), keep=keep,
                                sampling=SamplingConfig(**settings), seed=seed,
                                batch_size=batch_size, progress=progress, on_preview=on_preview)
        return results, [[] for _ in results]
    if method == "optimize":
        cfg = OptimizeConfig(**settings)
        rows = cond.repeat_interleave(keep, dim=0)
        init = init_images.repeat(len(rows) // len(init_images), 1, 1, 1) \
            if init_images is not None else None
        result = optimize_latents(pipe.vqgan, pipe.clip, rows, cfg, seed=seed, init_images=init,
                                  on_step=(lambda _, im: on_preview(im.cpu())) if on_preview
                                  else None)
        final = result.similarity[-1].view(len(cond), keep)
        images = result.images.view(len(cond), keep, *result.images.shape[1:])
        out, frames = [], []
        for i in range(len(cond)):
            order = final[i].argsort(descending=True)
            out.append(Generation(images[i][order], final[i][order]))
            frames.append([f.view(len(cond), keep, *f.shape[1:])[i] for f in result.frames])
        return out, frames
    if method == "evolve":
        cfg = EvolveConfig(**settings)
        if keep > cfg.population:
            raise ValueError(f"keep ({keep}) exceeds the population ({cfg.population})")
        result = evolve_latents(pipe.vqgan, pipe.clip, cond, cfg, seed=seed,
                                on_generation=(lambda _, im: on_preview(im.cpu()))
                                if on_preview else None)
        return ([Generation(result.images[i, :keep], result.fitness[i, :keep])
                 for i in range(len(cond))], [[] for _ in range(len(cond))])
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


def generate_for_prompts(pipe: TextToImage, method: str, prompts: list[str], keep: int,
                         settings: Mapping[str, Any], seed: int = 0, n_candidates: int = 1,
                         batch_size: int = 16, init_images: torch.Tensor | None = None,
                         progress: bool = False
                         ) -> tuple[list[Generation], list[list[torch.Tensor]]]:
    """`generate_by_method` for text prompts, plain and composed ones together: prompts with
    different numbers of parts are sampled as separate groups (each with `seed`), and the
    results come back in the prompts' order."""
    groups: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(part_count(prompt), []).append(i)
    results: list[Generation | None] = [None] * len(prompts)
    frames: list[list[torch.Tensor]] = [[] for _ in prompts]
    for rows in groups.values():
        done, shown = generate_by_method(
            pipe, method, pipe.text_conditions([prompts[i] for i in rows]), keep=keep,
            settings=settings, seed=seed, n_candidates=n_candidates, batch_size=batch_size,
            init_images=init_images, progress=progress)
        for i, result, progress_frames in zip(rows, done, shown):
            results[i], frames[i] = result, progress_frames
    return [r for r in results if r is not None], frames


def save_animation(frames: list[torch.Tensor], path: str | Path, duration_ms: int = 150) -> Path:
    """An animated GIF of progress frames, each (N, 3, H, W) in [-1, 1] shown as a row."""
    if not frames:
        raise ValueError("no frames to animate (set optimize.frame_every > 0)")
    pictures = [to_pil(make_grid(f, nrow=len(f), padding=2, pad_value=1.0)) for f in frames]
    path = Path(path)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=duration_ms,
                     loop=0)
    return path
