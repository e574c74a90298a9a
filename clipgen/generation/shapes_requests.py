"""What a prompt asks of the Shapes world that it cannot draw: counts or several objects,
colours and shapes outside its palette. The world draws one object per image, in one of
eight colours and five shapes, on one of three backgrounds."""

from __future__ import annotations

import re

from clipgen.data.shapes import BACKGROUND_COLORS, OBJECT_COLORS, SHAPES
from clipgen.generation.prompt_parts import is_composed, parse_prompt

COUNT_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
               "several", "many", "multiple", "pair", "couple", "some", "few", "dozen")
OTHER_COLORS = ("brown", "violet", "magenta", "teal", "beige", "gold", "golden", "silver",
                "grey", "maroon", "navy", "turquoise", "lime", "indigo", "olive", "crimson")
OTHER_SHAPES = ("hexagon", "pentagon", "octagon", "oval", "ellipse", "rectangle", "heart",
                "cross", "crescent", "cube", "sphere", "cylinder", "cone", "pyramid", "line",
                "arrow", "ring", "polygon", "rhombus", "trapezoid")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+|\d+", text.lower())


def undrawable_requests(prompt: str) -> list[str]:
    """Plain-language reasons why the Shapes world cannot draw `prompt` as asked (empty when
    it can). Each part of a composable prompt is read on its own."""
    texts = [p.text for p in parse_prompt(prompt)] if is_composed(prompt) else [prompt]
    found: list[str] = []
    for text in texts:
        words = _words(text)
        counts = [w for w in words if w in COUNT_WORDS or (w.isdigit() and int(w) > 1)]
        plurals = [w for w in words if w.endswith("s") and w[:-1] in SHAPES]
        shapes = {w for w in words if w in SHAPES}
        colors = {w for w in words if w in OBJECT_COLORS}
        if counts or plurals or len(shapes) > 1 or len(colors) > 1:
            asked = sorted(set(counts + plurals) | (shapes if len(shapes) > 1 else set())
                           | (colors if len(colors) > 1 else set()))
            found.append(f"several objects ({', '.join(asked)}): the Shapes world draws one "
                         "object per image, in one colour")
        unknown_colors = sorted({w for w in words if w in OTHER_COLORS})
        if unknown_colors:
            found.append(f"unknown colour {', '.join(unknown_colors)}: object colours are "
                         f"{', '.join(OBJECT_COLORS)}; backgrounds {', '.join(BACKGROUND_COLORS)}")
        # each word as it is, and without a plural "s"
        unknown_shapes = sorted({s for w in words for s in (w, w[:-1]) if s in OTHER_SHAPES})
        if unknown_shapes:
            found.append(f"unknown shape {', '.join(unknown_shapes)}: shapes are "
                         f"{', '.join(SHAPES)}")
    return list(dict.fromkeys(found))


def draws_shapes(clip_arch: str) -> bool:
    """Whether a generator with this CLIP draws the Shapes world (clipgen's Shapes CLIPs)."""
    return clip_arch.startswith("clipgen-shapes")


def shapes_warnings(prompts: list[str], clip_arch: str) -> list[str]:
    """One line per prompt the Shapes world cannot draw as asked, for a Shapes generator;
    none for other generators."""
    if not draws_shapes(clip_arch):
        return []
    return [f"prompt {p!r} asks for what the Shapes world cannot draw: {'; '.join(reasons)}"
            for p in prompts if (reasons := undrawable_requests(p))]
