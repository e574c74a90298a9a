"""A bundle: one folder holding the exports of the three stages (`vqgan`, `clip`, `prior`, each
as `.safetensors` + `.yaml`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

STAGES = ("vqgan", "clip", "prior")


def stage_files(stages: tuple[str, ...] = STAGES) -> tuple[str, ...]:
    """The files a bundle holds for `stages`: `<stage>.safetensors` and `<stage>.yaml` each."""
    return tuple(f"{stage}.{ext}" for stage in stages for ext in ("safetensors", "yaml"))


BUNDLE_FILES = stage_files()


def default_bundle() -> Path:
    """The Shapes bundle shipped inside the package."""
    return Path(__file__).resolve().parents[1] / "assets" / "shapes"


def check_bundle(folder: Path) -> None:
    """Raise a clear error naming the files a bundle folder lacks."""
    missing = [f for f in BUNDLE_FILES if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"model bundle {folder} lacks {', '.join(missing)}. A bundle holds the exports "
            "of the three stages: `clipgen-export <checkpoint> <folder>` for the vqgan, clip "
            "and prior checkpoints (see README)")


def bundle_clip(folder: str | Path) -> tuple[str, Path]:
    """The CLIP architecture name and weights file of a bundle."""
    folder = Path(folder)
    return OmegaConf.load(folder / "clip.yaml").arch.arch, folder / "clip.safetensors"
