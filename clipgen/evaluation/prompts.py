"""The prompt sets of the evaluation suites."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from clipgen.data.coco import coco_items, load_coco_captions
from clipgen.data.image_folder import ImageFolderDataset
from clipgen.data.shapes import (
    ATTRIBUTE_VALUES,
    CAPTION_TEMPLATES,
    Combination,
    fill_template,
    matches_any,
    mentioned_attributes,
    prompt_for,
    validate_combinations,
)
from clipgen.generation.prompt_parts import PromptPart, compose_prompt

PROMPT_STYLES = ("canonical", "templates")
HELDOUT_PHRASINGS = ("plain", "analogy")


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


Phrase = Callable[[Mapping[str, str]], str]  # attribute words to a prompt in one phrasing


def _template_prompt(rng: np.random.Generator, color: str, shape: str) -> tuple[Phrase, dict]:
    """A phrasing in one of the caption templates, drawn uniformly, and the attributes it
    states (the template decides which; the unstated ones are drawn but not asked for)."""
    words = {"color": color, "shape": shape}
    for key in ("size", "position", "background"):
        words[key] = str(rng.choice(ATTRIBUTE_VALUES[key]))
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    stated = mentioned_attributes(template)
    return (lambda w: fill_template({**words, **w}, template),
            {k: v for k, v in words.items() if k in stated})


def analogy_parts(attributes: Mapping[str, str], phrase: Phrase, holdout: Sequence[Combination],
                  rng: np.random.Generator, analogies: int = 1,
                  plain_weight: float = 0.0) -> list[PromptPart]:
    """A colour x shape prompt composed from seen combinations by analogy: for colour X and
    shape Y, the parts (X, Z) AND (W, Y) NOT (W, Z), in the same phrasing with every other
    word kept, for a colour W and shape Z whose three combinations are all seen. In the
    product of experts every stated attribute then has net weight 1 and the substitutes
    cancel (0 for W and Z); the weights sum to 1, so no null rows are needed. `analogies`
    such triples, no two sharing a W or a Z, drawn from `rng`, each at weight 1 / analogies;
    with `plain_weight` p > 0 the prompt itself is a part of weight p and the triples share
    1 - p."""
    if not 0.0 <= plain_weight < 1.0:
        raise ValueError(f"plain_weight must lie in [0, 1), got {plain_weight}")
    x, y = attributes["color"], attributes["shape"]

    def seen(color: str, shape: str) -> bool:
        return not matches_any({"color": color, "shape": shape}, holdout)

    pairs = [(w, z) for w in ATTRIBUTE_VALUES["color"] if w != x
             for z in ATTRIBUTE_VALUES["shape"] if z != y
             if seen(x, z) and seen(w, y) and seen(w, z)]
    chosen: list[tuple[str, str]] = []
    for i in rng.permutation(len(pairs)):
        w, z = pairs[int(i)]
        if len(chosen) < analogies and all(w != v and z != u for v, u in chosen):
            chosen.append((w, z))
    if analogies < 1 or len(chosen) < analogies:
        raise ValueError(f"analogies must lie in [1, {len(chosen)}] for {x} {y} (triples of "
                         f"seen combinations with distinct substitutes), got {analogies}")
    share = (1.0 - plain_weight) / analogies
    parts = [PromptPart(phrase({}), plain_weight)] if plain_weight else []
    for w, z in chosen:
        parts += [PromptPart(phrase({"color": x, "shape": z}), share),
                  PromptPart(phrase({"color": w, "shape": y}), share),
                  PromptPart(phrase({"color": w, "shape": z}), -share)]
    return parts


def shapes_prompts(samples_per_combination: int = 8, extra_attribute_rate: float = 0.5,
                   holdout: Iterable[Mapping[str, str]] = (), seed: int = 0,
                   heldout_samples_per_combination: int | None = None,
                   style: str = "canonical", heldout_phrasing: str = "plain",
                   analogies: int = 1, plain_weight: float = 0.0) -> list[EvalPrompt]:
    """Every colour x shape combination, `samples_per_combination` prompts each (values drawn
    with a fixed seed). `style="canonical"`: every prompt names its colour and shape in one
    fixed phrasing, and each of size, position and background with probability
    `extra_attribute_rate`. `style="templates"`: each prompt is one of the training caption
    templates, drawn uniformly, and states what that template states (`extra_attribute_rate`
    is unused). Prompts stating a combination of `holdout` are grouped `heldout`, the others
    `seen`. `heldout_samples_per_combination` sets the held-out combinations' count apart:
    their first prompts and every seen prompt stay those of the default, and the extra ones
    come from a stream of their own. `heldout_phrasing="analogy"` writes each held-out
    prompt as composable parts of seen combinations (`analogy_parts`: `analogies` triples,
    and the prompt itself at `plain_weight`); the substitutes come from a stream of their
    own, so every plain prompt stays the same."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown Shapes prompt style {style!r}; expected one of {PROMPT_STYLES}")
    if heldout_phrasing not in HELDOUT_PHRASINGS:
        raise ValueError(f"unknown held-out phrasing {heldout_phrasing!r}; expected one of "
                         f"{HELDOUT_PHRASINGS}")

    def draw(rng: np.random.Generator, color: str, shape: str) -> tuple[Phrase, dict]:
        if style == "templates":
            return _template_prompt(rng, color, shape)
        attrs = _shapes_prompt(rng, color, shape, extra_attribute_rate)
        return (lambda w: prompt_for({**attrs, **w})), attrs

    held = validate_combinations(holdout)
    rng, extra_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    analogy_rng = np.random.default_rng([seed, 2])

    def text(phrase: Phrase, attrs: dict) -> str:
        if heldout_phrasing == "analogy" and matches_any(attrs, held):
            return compose_prompt(analogy_parts(attrs, phrase, held, analogy_rng, analogies,
                                                plain_weight))
        return phrase({})

    out = []
    for color in ATTRIBUTE_VALUES["color"]:
        for shape in ATTRIBUTE_VALUES["shape"]:
            drawn = [draw(rng, color, shape) for _ in range(samples_per_combination)]
            if (heldout_samples_per_combination is not None
                    and matches_any({"color": color, "shape": shape}, held)):
                extra = max(0, heldout_samples_per_combination - samples_per_combination)
                drawn = [*drawn, *(draw(extra_rng, color, shape)
                                   for _ in range(extra))][:heldout_samples_per_combination]
            out += [EvalPrompt(text(phrase, attrs), attrs,
                               "heldout" if matches_any(attrs, held) else "seen")
                    for phrase, attrs in drawn]
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
