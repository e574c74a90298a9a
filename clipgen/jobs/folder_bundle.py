"""A folder of images to a bundle in one command: the VQGAN, then the CLIP (copied from a
bundle, converted from an open_clip weights file, or trained on the folder's captions), then
the token cache and the prior, each exported into one bundle folder that `sample.py bundle=`
and the demo read; with `gap.scale`, last the CLIP's modality gap over the folder's captions.
Every stage runs in its own folder under `work_dir` and resumes there; a stage whose export is
already in the bundle is skipped, so an interrupted recipe is run again as it was given."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from hydra import compose
from omegaconf import DictConfig, OmegaConf

from clipgen.checkpoint import package_versions, save_safetensors
from clipgen.data.image_files import ImageFilesDataset, find_images, read_caption
from clipgen.generation.gap_shift import GAP_FILE
from clipgen.jobs.build_cache import run_precompute
from clipgen.jobs.export import export_checkpoint
from clipgen.jobs.gap_measure import measure_bundle_gap
from clipgen.jobs.training import run_training
from clipgen.models.bundle import bundle_clip, check_bundle, default_bundle, stage_files
from clipgen.models.clip import create_clip

log = logging.getLogger(__name__)
CLIP_SOURCES = ("bundle", "file", "train")


def check_recipe(cfg: DictConfig) -> None:
    """Refuse, before anything trains or is written, a folder without images, a CLIP source
    that cannot be had, or a caption-trained CLIP over a folder without captions."""
    folder = Path(cfg.folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"folder={folder} does not exist: give a folder of images")
    images = find_images(folder)
    if not images:
        raise ValueError(f"no images under folder={folder}")
    source = cfg.clip.source
    if source not in CLIP_SOURCES:
        raise ValueError(f"clip.source={source!r}: use one of {CLIP_SOURCES} (see "
                         "configs/make_bundle.yaml)")
    if source == "bundle":
        origin = clip_origin(cfg)
        missing = [f for f in stage_files(("clip",)) if not (origin / f).is_file()]
        if missing:
            raise FileNotFoundError(f"clip.bundle={origin} lacks {', '.join(missing)}")
    if source == "file" and not (cfg.clip.file and Path(cfg.clip.file).is_file()):
        raise FileNotFoundError(
            f"clip.source=file needs clip.file=<an open_clip weights file for {cfg.clip.arch}> "
            f"(got {cfg.clip.file}); or clip.source=train to train a small CLIP on the "
            "folder's captions, or clip.source=bundle clip.bundle=<folder> to reuse a bundle's")
    # read captions only where a stage needs them (a large uncaptioned folder is walked whole)
    needs_captions = source == "train" or cfg.gap.scale is not None
    captioned = needs_captions and any(read_caption(p) for p in images)
    if source == "train" and not captioned:
        raise ValueError(f"clip.source=train needs captions (photo.txt beside photo.png) and "
                         f"{folder} has none: use clip.source=file or clip.source=bundle")
    if cfg.gap.scale is not None:
        if isinstance(cfg.gap.scale, bool) or not isinstance(cfg.gap.scale, (int, float)) \
                or cfg.gap.scale < 0:
            raise ValueError(f"gap.scale must be a number >= 0 (the shift gap_shift=auto "
                             f"applies) or null (no gap measured), got {cfg.gap.scale!r}")
        if not captioned:
            raise ValueError(f"gap.scale={cfg.gap.scale} measures the CLIP's modality gap over "
                             f"captioned images, and {folder} has no caption (photo.txt beside "
                             "photo.png): set gap.scale=null")


def clip_origin(cfg: DictConfig) -> Path:
    """The bundle `clip.source=bundle` copies the CLIP from (`clip.bundle`, or the shipped
    Shapes bundle)."""
    return Path(cfg.clip.bundle) if cfg.clip.bundle else default_bundle()


def folder_overrides(cfg: DictConfig) -> list[str]:
    """The data settings every stage shares: the folder, its validation share, the resolution."""
    return ["data=folder", f"data.train.root={cfg.folder}",
            f"data.train.val_fraction={cfg.val_fraction}",
            f"data.train.split_seed={cfg.split_seed}", f"resolution={cfg.resolution}"]


def encoder_overrides(out: Path) -> list[str]:
    """The prior's (and the cache's) encoders: the bundle's VQGAN and CLIP."""
    arch, weights = bundle_clip(out)
    return [f"model.tokenizer.path={out / 'vqgan.safetensors'}", "model.tokenizer.arch=null",
            f"model.clip.arch={arch}", f"model.clip.pretrained={weights}"]


def train_and_export(overrides: list[str], run_dir: Path, out: Path) -> None:
    """Train one stage in `run_dir` (resuming its last checkpoint) and export it into `out`."""
    run_training(compose("train", overrides=[*overrides, f"run_dir={run_dir}",
                                             "ckpt_path=last"]))
    export_checkpoint(run_dir / "checkpoints" / "last.ckpt", out)


def clip_from_file(arch: str, weights: Path, out: Path) -> None:
    """An open_clip weights file as the bundle's `clip.safetensors` + `clip.yaml`."""
    model = create_clip(arch, str(weights))
    save_safetensors(model.state_dict(), out / "clip.safetensors",
                     metadata={"stage": "clip", "source": weights.name})
    OmegaConf.save(OmegaConf.create({"stage": "clip", "arch": {"arch": arch, "pretrained": None},
                                     "versions": package_versions(), "source": str(weights)}),
                   out / "clip.yaml")


def make_clip(cfg: DictConfig, out: Path, work: Path) -> None:
    """The bundle's CLIP from `cfg.clip.source`."""
    source = cfg.clip.source
    if source == "bundle":
        for name in stage_files(("clip",)):
            shutil.copyfile(clip_origin(cfg) / name, out / name)
    elif source == "file":
        clip_from_file(cfg.clip.arch, Path(cfg.clip.file), out)
    else:
        train_and_export([*folder_overrides(cfg), *cfg.stages.clip], work / "clip", out)


def measure_folder_gap(cfg: DictConfig, out: Path) -> None:
    """The bundle's modality gap over the folder's captioned training images, stored with
    `cfg.gap.scale` for `gap_shift=auto`."""
    train = ImageFilesDataset(cfg.folder, "train", val_fraction=cfg.val_fraction,
                              split_seed=cfg.split_seed, resolution=cfg.resolution)
    gap, path = measure_bundle_gap(out, train, f"training images under {cfg.folder}",
                                   float(cfg.gap.scale), cfg.gap.num_images, cfg.gap.batch_size)
    log.info("modality gap over %d images and %d captions: norm %.3f, stored with scale %g in %s",
             gap.images, gap.texts, gap.vector.norm().item(), gap.scale, path)


def run_folder_bundle(cfg: DictConfig) -> Path:
    """Build the bundle `cfg.out` from the images in `cfg.folder`; return the bundle folder."""
    check_recipe(cfg)
    out, work = Path(cfg.out), Path(cfg.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = folder_overrides(cfg)
    if not (out / "vqgan.safetensors").is_file():
        log.info("stage 1 of 4: the VQGAN, in %s", work / "vqgan")
        train_and_export([*data, *cfg.stages.vqgan], work / "vqgan", out)
    if not (out / "clip.safetensors").is_file():
        log.info("stage 2 of 4: the CLIP (%s)", cfg.clip.source)
        make_clip(cfg, out, work)
    cache, done = work / "cache", work / "cache" / "complete"
    if not (out / "prior.safetensors").is_file():
        if not done.is_file():
            log.info("stage 3 of 4: the token cache, in %s", cache)
            shutil.rmtree(cache, ignore_errors=True)  # a cache cut short is written again
            run_precompute(compose("precompute", overrides=[
                *data, *cfg.stages.precompute, *encoder_overrides(out), f"cache_dir={cache}",
                f"run_dir={work / 'precompute'}"]))
            done.write_text("written in full\n")
        log.info("stage 4 of 4: the prior, in %s", work / "prior")
        train_and_export([*cfg.stages.prior, *encoder_overrides(out), "data=precomputed",
                          f"cache_dir={cache}", f"resolution={cfg.resolution}"],
                         work / "prior", out)
    if cfg.gap.scale is not None and not (out / GAP_FILE).is_file():
        log.info("stage 5: the modality gap over the folder's captions")
        measure_folder_gap(cfg, out)
    check_bundle(out)
    log.info("bundle ready: python sample.py bundle=%s", out)
    print(f"bundle ready: {out} (python sample.py bundle={out})")
    return out
