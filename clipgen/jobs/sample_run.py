"""sample.py's work: build the generator, read prompts or an image, write PNGs, grids and
samples.jsonl."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig
from torchvision.utils import make_grid

from clipgen.atomic import write_atomic
from clipgen.data.image_folder import load_image
from clipgen.data.transforms import image_transform, to_pil
from clipgen.generation.generators import (
    generate_by_method,
    generate_for_prompts,
    save_animation,
)
from clipgen.generation.settings import (
    build_generator,
    check_generation_settings,
    method_settings,
    resolve_device,
    settings_record,
)
from clipgen.generation.shapes_requests import shapes_warnings
from clipgen.generation.text_to_image import TextToImage

log = logging.getLogger(__name__)


def read_prompts(cfg: DictConfig) -> list[str]:
    """Prompts from `prompt_file` (one per line, blank lines skipped) or `prompts`."""
    if cfg.get("prompt_file"):
        path = Path(cfg.prompt_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file {path} not found")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"prompt file {path} holds no prompt")
        return prompts
    prompts = cfg.prompts
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("no prompt given: set prompts=[...] or prompt_file=<file>")
    return [str(p) for p in prompts]  # empty ones are refused by the CLIP tokenizer


def read_image(path: str, generator: TextToImage) -> torch.Tensor:
    """An image file as a (1, 3, R, R) tensor in [-1, 1] at the VQGAN's resolution."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"input image {file} not found")
    try:
        image = load_image(file)
    except (OSError, ValueError) as error:  # PIL: UnidentifiedImageError, truncated data
        raise ValueError(f"{file} is not an image PIL can read ({error})") from error
    return image_transform(generator.vqgan.config.resolution)(image)[None]


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "prompt"


def sample_record(prompt: str, seed: int, rank: int, file: str, cosine: float,
                  settings: dict) -> dict:
    """One line of `samples.jsonl`: what an image shows, where it is, how it scored, how it
    was made."""
    return {"prompt": prompt, "seed": seed, "rank": rank, "file": file,
            "clip_cosine": round(cosine, 4), "clip_score": round(100 * max(cosine, 0.0), 2),
            "settings": settings}


def run_sampling(cfg: DictConfig) -> Path:
    """Generate for every prompt (or the image) and write the results into `cfg.out_dir`."""
    check_generation_settings(cfg)
    if cfg.get("image") and not Path(cfg.image).is_file():
        raise FileNotFoundError(f"input image {cfg.image} not found")
    device = resolve_device(cfg.device)
    generator = build_generator(cfg, device)
    method = cfg.get("method", "clipgen")
    init = None
    if cfg.get("init_image"):
        if method != "optimize":
            raise ValueError("init_image= is a start point for method=optimize")
        init = read_image(cfg.init_image, generator)
    run = dict(keep=cfg.samples_per_prompt, settings=method_settings(cfg), seed=cfg.seed,
               n_candidates=cfg.n_candidates, batch_size=cfg.batch_size, init_images=init,
               progress=True)
    if cfg.get("image"):
        if method != "clipgen":
            raise ValueError("image= gives variations with method=clipgen; to start "
                             f"{method} from an image use init_image=")
        labels = [f"variations of {Path(cfg.image).name}"]
        cond = generator.image_conditions(read_image(cfg.image, generator))
        results, frames = generate_by_method(generator, method, cond, **run)
    else:
        labels = read_prompts(cfg)
        for line in shapes_warnings(labels, generator.clip.arch):
            log.warning(line)
            print(f"warning: {line}", file=sys.stderr)
        # plain and composed prompts together: conditioned and sampled group by group
        results, frames = generate_for_prompts(generator, method, labels, **run)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings_record(cfg)
    records = []
    for i, (label, result) in enumerate(zip(labels, results)):
        name = f"{i:03d}_{slug(label)}"
        for j, (image, cos) in enumerate(zip(result.images, result.clip_cosine)):
            file = out / name / f"{j:02d}.png"
            file.parent.mkdir(exist_ok=True)
            to_pil(image).save(file)
            records.append(json.dumps(sample_record(label, cfg.seed, j,
                                                    str(file.relative_to(out)), float(cos),
                                                    settings)))
        grid = make_grid(result.images, nrow=len(result.images), padding=2, pad_value=1.0)
        to_pil(grid).save(out / f"{name}_grid.png")
        if frames[i]:
            save_animation(frames[i], out / f"{name}_progress.gif")
    # written last and whole: a folder without samples.jsonl holds no finished result
    write_atomic(out / "samples.jsonl", lambda p: p.write_text("\n".join(records) + "\n"))
    log.info("wrote %d prompts to %s", len(labels), out)
    print(f"samples written to {out}")
    return out
