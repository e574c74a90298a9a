"""Run an evaluation suite: generate (sharded, resumable), then score the images against the
prompts and the suite's real images, and write report.json, report.md and grid.png."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import make_grid
from tqdm import tqdm

from clipgen.atomic import write_atomic
from clipgen.data.shapes import ATTRIBUTE_VALUES
from clipgen.data.transforms import from_uint8, to_pil
from clipgen.distributed import process_rank
from clipgen.evaluation.plots import footer_text, write_suite_plots
from clipgen.evaluation.prompts import EvalPrompt
from clipgen.evaluation.reference_stats import fill_reference
from clipgen.evaluation.sharded_generation import (
    ImageGenerator,
    generate_images,
    missing_images,
    read_images,
    read_manifest,
)
from clipgen.generation.generators import generate_for_prompts
from clipgen.generation.settings import (
    build_generator,
    check_generation_settings,
    method_settings,
    resolve_device,
)
from clipgen.generation.shapes_requests import shapes_warnings
from clipgen.generation.text_to_image import TextToImage
from clipgen.metrics.attributes import (
    attribute_accuracy,
    attribute_confusion,
    clean_outline_share,
)
from clipgen.metrics.caps import CaptionScorer, caps_from_nll
from clipgen.metrics.clip_score import clip_scores
from clipgen.metrics.frechet import CLIPImageFeatures, FrechetSet
from clipgen.metrics.inception import (
    InceptionFeatures,
    find_inception_weights,
    inception_score_metric,
)
from clipgen.metrics.shapes_reader import CLEAN_OUTLINE_IOU, outline_iou, read_attributes
from clipgen.models.bundle import bundle_clip, default_bundle
from clipgen.models.clip import FrozenCLIP

log = logging.getLogger(__name__)


def generator_settings(cfg: DictConfig, pipe: TextToImage) -> dict[str, Any]:
    """What the images depend on, recorded in the folder's manifest: the method and its
    settings, the models by fingerprints of their weights (not by path: the shipped bundle
    changes between releases, and a path can be overwritten) and the prior's conditioning."""
    return {"method": cfg.method, "model": pipe.fingerprints(), "condition": pipe.condition,
            "settings": method_settings(cfg), "n_candidates": cfg.n_candidates,
            "batch_size": cfg.batch_size, "seed": cfg.seed}


def method_image_generator(pipe: TextToImage, cfg: DictConfig) -> ImageGenerator:
    """One image per prompt from the configured method (best of n_candidates by CLIP for
    clipgen sampling). Prompts with different numbers of parts (plain ones, composed ones) are
    sampled in separate batches, each with the batch's seed."""

    def generate(prompts: Sequence[str], seed: int) -> torch.Tensor:
        results, _ = generate_for_prompts(pipe, cfg.method, list(prompts), keep=1,
                                          settings=method_settings(cfg), seed=seed,
                                          n_candidates=cfg.n_candidates,
                                          batch_size=len(prompts) * cfg.n_candidates)
        return torch.cat([r.images for r in results])
    return generate


def metric_clip(cfg: DictConfig, device: torch.device) -> tuple[FrozenCLIP, str]:
    """The CLIP that scores images: `metrics.clip` when set, else the generator's own."""
    arch = cfg.metrics.clip.get("arch")
    if arch:
        pretrained = cfg.metrics.clip.get("pretrained")
        return FrozenCLIP(arch, pretrained).to(device), f"{arch} ({pretrained})"
    if cfg.get("clip") and cfg.clip.get("arch"):
        arch, pretrained = cfg.clip.arch, cfg.clip.get("pretrained")
    else:
        arch, weights = bundle_clip(cfg.get("bundle") or default_bundle())
        pretrained = str(weights)
    return FrozenCLIP(arch, pretrained).to(device), f"{arch} (the generator's CLIP)"


@torch.no_grad()
def score_images(cfg: DictConfig, prompts: Sequence[EvalPrompt], out_dir: Path,
                 device: torch.device) -> dict[str, Any]:
    """All configured metrics over the generated images of `out_dir`."""
    missing = missing_images(out_dir, range(len(prompts)))
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(prompts)} images are not generated yet "
                                f"(first: {missing[0]}); run the generate step to completion")
    m = cfg.metrics
    clip, clip_name = metric_clip(cfg, device)
    fd_sets: dict[str, FrechetSet] = {}
    for feature in m.fid_features:
        if feature == "inception":
            net = InceptionFeatures(find_inception_weights(m.get("inception_weights")), "2048")
        elif feature == "clip":
            net = CLIPImageFeatures(clip)
        else:
            raise ValueError(f"unknown FD feature {feature!r}: use inception or clip")
        fd_sets[feature] = FrechetSet(net.to(device), m.fid_radii).to(device)
        fill_reference(fd_sets[feature], cfg, feature)
    inception_score = None
    if m.inception_score:
        weights = find_inception_weights(m.get("inception_weights"))
        inception_score = inception_score_metric(
            InceptionFeatures(weights, "logits_unbiased"), m.is_splits).to(device)
    captioner = CaptionScorer(m.caps_model, device) if m.get("caps_model") else None
    cosines, reads, ious, nll, ntok = [], [], [], [], []
    for lo in tqdm(range(0, len(prompts), m.batch_size), desc="score", unit="batch"):
        idx = list(range(lo, min(lo + m.batch_size, len(prompts))))
        images = read_images(out_dir, idx)
        texts = [prompts[i].text for i in idx]
        for fd in fd_sets.values():
            fd.update(images, real=False)
        if inception_score is not None:
            inception_score.update(images.to(device))
        if m.clip_score:
            img_emb = clip.encode_image(from_uint8(images.to(device)))
            cosines.append((img_emb * clip.encode_text(texts)).sum(-1).cpu())
        if m.shapes_attributes:
            pixels = [im.permute(1, 2, 0).numpy() for im in images]
            reads += [read_attributes(p) for p in pixels]
            ious += [outline_iou(p, prompts[i].attributes["shape"])
                     if "shape" in prompts[i].attributes else None
                     for i, p in zip(idx, pixels)]
        if captioner is not None:
            s, n = captioner.token_nll([to_pil(from_uint8(im)) for im in images], texts)
            nll.append(s)
            ntok.append(n)
    metrics: dict[str, Any] = {}
    for feature, fd in fd_sets.items():
        prefix = "fid" if feature == "inception" else "fd_clip"
        for radius, value in fd.compute().items():
            metrics[f"{prefix}_{radius:g}" if radius else prefix] = round(value, 4)
        metrics[f"{prefix}_real_images"] = fd.real_count()
    if inception_score is not None:
        torch.manual_seed(cfg.seed)  # IS shuffles before splitting
        mean, std = inception_score.compute()
        metrics.update(inception_score=round(float(mean), 4),
                       inception_score_std=round(float(std), 4))
    if cosines:
        metrics.update({k: round(v, 4) for k, v in clip_scores(torch.cat(cosines)).items()})
        metrics["clip_model"] = clip_name
    if captioner is not None:
        metrics.update(caps=round(caps_from_nll(torch.cat(nll), torch.cat(ntok)), 4),
                       caps_model=captioner.name)
    if reads:
        metrics["attributes"] = attribute_accuracy(reads, prompts)
        for group, share in clean_outline_share(ious, prompts, CLEAN_OUTLINE_IOU).items():
            metrics["attributes"].setdefault(group, {})["clean_outline"] = share
        metrics["attribute_confusion"] = attribute_confusion(reads, prompts, ATTRIBUTE_VALUES)
    return metrics


def write_report(report: dict[str, Any], out_dir: Path, count: int, grid_size: int = 64) -> None:
    """report.json, report.md (one table) and grid.png (the first `grid_size` images), each
    written atomically."""
    write_atomic(out_dir / "report.json", lambda p: p.write_text(json.dumps(report, indent=2)))
    rows = [(k, v) for k, v in report["metrics"].items() if not isinstance(v, dict)]
    for group, by_key in report["metrics"].get("attributes", {}).items():
        rows += [(f"{key} accuracy ({group}, n={r['n']})", r["accuracy"])
                 for key, r in by_key.items()]
    lines = [f"# {report['suite']} suite: {report['images']} images", "",
             "| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    plots = write_suite_plots(report, out_dir, footer_text())
    lines += ["", *(f"![{p.stem}]({p.name})" for p in plots)]
    write_atomic(out_dir / "report.md", lambda p: p.write_text("\n".join(lines) + "\n"))
    grid = to_pil(make_grid(from_uint8(read_images(out_dir, range(min(grid_size, count)))),
                            nrow=8, padding=2, pad_value=1.0))
    write_atomic(out_dir / "grid.png", lambda p: grid.save(p, "PNG"))


def undrawable_note(prompts: Sequence[EvalPrompt], clip_arch: str) -> str | None:
    """One line counting the suite's prompts that a Shapes generator cannot draw as asked
    (counts, several objects, unknown words), with the first of them; None when all can be."""
    notes = shapes_warnings([p.text for p in prompts], clip_arch)
    if not notes:
        return None
    return (f"{len(notes)} of {len(prompts)} prompts ask for what the Shapes world cannot "
            f"draw; the first: {notes[0]}")


def suite_prompts(cfg: DictConfig) -> list[EvalPrompt]:
    """The suite's prompts in order, the first `suite.limit` of them when it is set."""
    limit = cfg.suite.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"suite.limit must be a whole number >= 1 (or null for every "
                         f"prompt), got {limit!r}")
    prompts: list[EvalPrompt] = instantiate(cfg.suite.prompts)
    if not prompts:
        raise ValueError(f"the {cfg.suite.name} suite's settings give no prompt "
                         f"({OmegaConf.to_container(cfg.suite.prompts)}); check its counts")
    return prompts if limit is None else prompts[:limit]


def run_suite(cfg: DictConfig) -> dict[str, Any] | None:
    """The configured steps (`generate`, `metrics`) of one suite; returns the report when the
    metrics step ran."""
    steps = list(cfg.steps)
    unknown = set(steps) - {"generate", "metrics"}
    if unknown:
        raise ValueError(f"unknown steps {sorted(unknown)}: use generate and/or metrics")
    check_generation_settings(cfg)  # before anything is loaded or written
    prompts = suite_prompts(cfg)
    device = resolve_device(cfg.device)
    out_dir = Path(cfg.out_dir)
    rank, world = process_rank()
    timing: dict[str, float] = {}
    if "generate" in steps:
        pipe = build_generator(cfg, device)
        if (note := undrawable_note(prompts, pipe.clip.arch)) is not None:
            log.warning(note)
            print(f"warning: {note}", file=sys.stderr)
        start = time.perf_counter()
        made = generate_images(method_image_generator(pipe, cfg), prompts, out_dir,
                               generator_settings(cfg, pipe), cfg.batch_size, cfg.seed, rank,
                               world)
        if made:
            seconds = time.perf_counter() - start
            timing = {"generated_now": made, "seconds": round(seconds, 2),
                      "seconds_per_image": round(seconds / made, 4),
                      "images_per_s": round(made / seconds, 2)}
            print(f"generated {made} images in {seconds:.1f} s ({made / seconds:.2f} "
                  "images/s)")
        log.info("rank %d/%d generated %d images into %s", rank, world, made, out_dir)
        if world > 1:
            print(f"rank {rank}: generation share done; run steps=[metrics] once every rank "
                  "has finished")
            return None
    if "metrics" not in steps:
        return None
    previous = out_dir / "report.json"
    if not timing and previous.is_file():  # a metrics-only rerun: keep the generation timing
        try:
            timing = json.loads(previous.read_text()).get("timing", {})
        except json.JSONDecodeError as error:
            log.warning("previous %s is unreadable (%s): its timing is lost", previous, error)
    report = {"suite": cfg.suite.name, "images": len(prompts), "out_dir": str(out_dir),
              "generator": read_manifest(out_dir)["settings"], "timing": timing,
              "metrics": score_images(cfg, prompts, out_dir, device)}
    write_report(report, out_dir, len(prompts))
    return report


def suite_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a suite report: attribute accuracy (all prompts; shape also for
    the seen and the held-out combinations apart), CLIP score, FD on CLIP features and
    generation time per image."""
    m = report["metrics"]
    attrs = m.get("attributes", {})

    def acc(group: str, key: str) -> float | None:
        return attrs.get(group, {}).get(key, {}).get("accuracy")

    return {"color": acc("all", "color"), "shape": acc("all", "shape"),
            "clean_outline": acc("all", "clean_outline"),
            "color_and_shape": acc("all", "color_and_shape"),
            "size": acc("all", "size"), "position": acc("all", "position"),
            "background": acc("all", "background"),
            "seen_shape": acc("seen", "shape"), "heldout_shape": acc("heldout", "shape"),
            "heldout_color_and_shape": acc("heldout", "color_and_shape"),
            "clip_score_100": m.get("clip_score_100"), "fd_clip": m.get("fd_clip"),
            "seconds_per_image": report["timing"].get("seconds_per_image")}
