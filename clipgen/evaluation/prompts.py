"""The prompt sets of the evaluation suites."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from clipgen.data.coco import coco_items, load_coco_captions
from clipgen.data.image_folder import ImageFolderDataset
from clipgen.data.shapes import ATTRIBUTE_VALUES, matches_any, prompt_for, validate_combinations


@dataclass(frozen=True)
class EvalPrompt:
    """One image to generate: its prompt, the attributes the prompt states (Shapes only) and
    the group it is reported under."""

    text: str
    attributes: dict[str, str] = field(default_factory=dict)
    group: str = "all"


def _shapes_prompt(rng: np.random.Generator, color: str, shape: str,
                   extra_attribute_rate: float) -> dict[str, str]:
    attrs = {"color": color, "shape": shape}
    for key in ("size", "position", "background"):
        value = str(rng.choice(ATTRIBUTE_VALUES[key]))
        if rng.random() < extra_attribute_rate:
            attrs[key] = value
    return attrs


def shapes_prompts(samples_per_combination: int = 8, extra_attribute_rate: float = 0.5,
                   holdout: Iterable[Mapping[str, str]] = (), seed: int = 0,
                   heldout_samples_per_combination: int | None = None) -> list[EvalPrompt]:
    """Every colour x shape combination, `samples_per_combination` prompts each; every prompt
    names its colour and shape, and each of size, position and background with probability
    `extra_attribute_rate` (values drawn with a fixed seed). Combinations matching `holdout`
    are grouped `heldout`, the others `seen`. `heldout_samples_per_combination` sets the
    held-out combinations' count apart: their first prompts and every seen prompt stay those
    of the default, and the extra ones come from a stream of their own."""
    held = validate_combinations(holdout)
    rng, extra_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    out = []
    for color in ATTRIBUTE_VALUES["color"]:
        for shape in ATTRIBUTE_VALUES["shape"]:
            group = "heldout" if matches_any({"color": color, "shape": shape}, held) else "seen"
            drawn = [_shapes_prompt(rng, color, shape, extra_attribute_rate)
                     for _ in range(samples_per_combination)]
            if group == "heldout" and heldout_samples_per_combination is not None:
                extra = max(0, heldout_samples_per_combination - samples_per_combination)
                drawn = [*drawn, *(_shapes_prompt(extra_rng, color, shape, extra_attribute_rate)
                                   for _ in range(extra))][:heldout_samples_per_combination]
            out += [EvalPrompt(prompt_for(attrs), attrs, group) for attrs in drawn]
    return out


def coco_prompts(annotations: str, num_samples: int = 30_000, seed: int = 0,
                 mode: str = "image") -> list[EvalPrompt]:
    """`num_samples` COCO captions drawn with a fixed seed: one per distinct image
    (`mode="image"`) or captions at random (`mode="caption"`); see `coco_items`. The suite's
    real images are those of the same records (`CocoCaptionsDataset` with the same settings)."""
    _, anns = load_coco_captions(annotations)
    return [EvalPrompt(a["caption"].strip()) for a in coco_items(anns, mode, num_samples, seed)]


def imagenet_prompts(root: str, class_names: str | None = None, per_class: int = 50,
                     template: str = "a photo of a {}") -> list[EvalPrompt]:
    """`per_class` prompts per class of an ImageNet-layout folder (root/<wnid>/...), the class
    names read from `class_names` (imagenet_class_index.json or {wnid: name})."""
    folder = ImageFolderDataset(root, class_names=class_names)
    unnamed = [c for c, name in zip(folder.classes, folder.class_names) if name is None]
    if unnamed:
        raise ValueError(f"class folders are WordNet ids ({unnamed[0]}, ...) and no names "
                         "were given: set suite.class_names=<imagenet_class_index.json> (or "
                         "IMAGENET_CLASS_INDEX); prompts are never made from ids")
    classes = folder.class_names
    return [EvalPrompt(template.format(name), group=name)
            for name in classes for _ in range(per_class)]


def prompt_list(texts: Sequence[str], repeats: int = 1) -> list[EvalPrompt]:
    """Plain prompts, each repeated `repeats` times."""
    return [EvalPrompt(t) for t in texts for _ in range(repeats)]
