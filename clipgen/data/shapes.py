"""The Shapes world: a procedural, captioned image domain rendered from a seed.

The constants in this module are normative (docs/SHAPES.md): evaluation
code reads attributes back from pixels and relies on these exact values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
    "cyan": (40, 200, 210),
    "pink": (240, 120, 180),
}
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
SIZES: dict[str, float] = {"small": 0.13, "large": 0.22}
SIZE_JITTER: tuple[float, float] = (0.92, 1.08)
GRID: tuple[float, float, float] = (0.28, 0.50, 0.72)
POSITION_JITTER: float = 0.03
STAR_INNER_RATIO: float = 0.45
# Colour-free silhouettes (`ShapesWorld(colorless_rate=...)`, for CLIP training only): the
# object in a gray that stands out from its background, captioned without a colour word
SILHOUETTE_FILL: dict[str, tuple[int, int, int]] = {
    "white": (90, 90, 90),
    "black": (170, 170, 170),
    "gray": (40, 40, 40),
}
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "color": tuple(OBJECT_COLORS),
    "shape": SHAPES,
    "size": tuple(SIZES),
    "position": tuple(POSITIONS),
    "background": tuple(BACKGROUND_COLORS),
}
SUPERSAMPLE = 4
SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2, "heldout": 3}


@dataclass(frozen=True)
class ShapeRecord:
    """Everything about one rendered image: the attribute words and the exact geometry."""

    color: str
    shape: str
    size: str
    position: str
    background: str
    cx: float  # object centre, pixels
    cy: float
    radius: float  # outer radius, pixels
    # drawn as a gray silhouette (SILHOUETTE_FILL): `color` is then the palette colour it
    # replaced, not what the pixels show
    colorless: bool = False

    def attributes(self) -> dict[str, str]:
        """The five attribute words."""
        return {k: getattr(self, k) for k in ATTRIBUTE_VALUES}

    def to_dict(self) -> dict:
        return asdict(self)


def shape_vertices(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices of a non-circle shape (y grows downwards, 'up' is -y)."""

    def ring(n: int, radii: Sequence[float]) -> list[tuple[float, float]]:
        pts = []
        for i in range(n):
            ang = -math.pi / 2 + 2 * math.pi * i / n
            rad = radii[i % len(radii)]
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        return pts

    if shape == "square":
        h = r / math.sqrt(2)
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return ring(3, [r])
    if shape == "diamond":
        return ring(4, [r])
    if shape == "star":
        return ring(10, [r, STAR_INNER_RATIO * r])
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(record: ShapeRecord, image_size: int) -> Image.Image:
    """Render one record as an anti-aliased RGB image of `image_size` pixels."""
    big = image_size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND_COLORS[record.background])
    draw = ImageDraw.Draw(img)
    fill = (SILHOUETTE_FILL[record.background] if record.colorless
            else OBJECT_COLORS[record.color])
    # Continuous coordinates (pixel i spans [i, i+1)) to PIL's (pixel i centred on i).
    cx, cy = record.cx * SUPERSAMPLE - 0.5, record.cy * SUPERSAMPLE - 0.5
    r = record.radius * SUPERSAMPLE
    if record.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(shape_vertices(record.shape, cx, cy, r), fill=fill)
    return img.resize((image_size, image_size), Image.Resampling.BOX)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _where(position: str) -> str:
    if position == "center":
        return "in the center"
    if position in ("top", "bottom"):
        return f"at the {position}"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"in the {position}"


# Each template is a function of the record; together they cover every subset pattern
# users write (full descriptions, terse labels, photo-style prompts).
CAPTION_TEMPLATES: tuple[str, ...] = (
    "{a_size} {size} {color} {shape} {where} on a {background} background",
    "{a_size} {size} {color} {shape}, {position}, {background} background",
    "a photo of {a_color} {color} {shape}",
    "{color} {shape}",
    "{a_color} {color} {shape} {where}",
    "{a_color} {color} {shape} on a {background} background",
    "{a_size} {size} {shape} colored {color}",
    "a drawing of {a_color} {color} {shape}",
    "{a_size} {size} {color} {shape}",
    "{a_shape} {shape} in {color}, {where}",
    "{color} {shape} on {background}",
    "an image of {a_size} {size} {color} {shape} {where}",
    "{a_shape} {shape}",
    "a {background} background with {a_color} {color} {shape}",
)


def colorless_template(template: str) -> str:
    """The caption template with its colour words taken out (for colour-free silhouettes):
    "a photo of {a_color} {color} {shape}" becomes "a photo of {a_shape} {shape}"."""
    out = (template.replace("{a_color} {color} ", "{a_shape} ")
           .replace(" colored {color}", "").replace(" in {color}", "")
           .replace("{color} ", ""))
    if "color}" in out:
        raise ValueError(f"caption template {template!r} names a colour in a way "
                         "colorless_template does not know how to take out")
    return out


def caption(record: ShapeRecord, template: str) -> str:
    """Fill one caption template with the record's attribute words."""
    return fill_template(record.attributes(), template)


def fill_template(words: Mapping[str, str], template: str) -> str:
    """Fill one caption template from the five attribute words."""
    return template.format(
        **words,
        where=_where(words["position"]),
        a_size=_article(words["size"]),
        a_color=_article(words["color"]),
        a_shape=_article(words["shape"]),
    )


def mentioned_attributes(template: str) -> set[str]:
    """Which attributes a template states."""
    out = {k for k in ATTRIBUTE_VALUES if "{" + k + "}" in template}
    if "{where}" in template:
        out.add("position")
    return out


def prompt_for(attributes: Mapping[str, str]) -> str:
    """A canonical prompt stating exactly the given attributes (any subset of the five)."""
    parts = []
    if "size" in attributes:
        parts.append(attributes["size"])
    if "color" in attributes:
        parts.append(attributes["color"])
    parts.append(attributes.get("shape", "shape"))
    text = " ".join(parts)
    text = f"{_article(text)} {text}"
    if "position" in attributes:
        text += " " + _where(attributes["position"])
    if "background" in attributes:
        text += f" on a {attributes['background']} background"
    return text


Combination = Mapping[str, str]


def check_attribute_names(names: Iterable[str], where: str = "") -> tuple[str, ...]:
    """The names, refused unless each is one of the five attributes (`where` says, in the
    error, what named them)."""
    names = tuple(names)
    unknown = sorted(set(names) - set(ATTRIBUTE_VALUES))
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}{where}; expected some of "
                         f"{list(ATTRIBUTE_VALUES)}")
    return names


def matches_any(attributes: Mapping[str, str], combos: Iterable[Combination]) -> bool:
    """Whether the attributes contain every key/value of at least one combination."""
    return any(all(attributes.get(k) == v for k, v in c.items()) for c in combos)


def validate_combinations(combos: Iterable[Combination]) -> list[dict[str, str]]:
    """Check that held-out combinations name real attributes and values."""
    out = []
    for c in combos:
        c = dict(c)
        if not c:
            raise ValueError("an empty held-out combination would hold out every image")
        check_attribute_names(c, f" in held-out combination {c}")
        for k, v in c.items():
            if v not in ATTRIBUTE_VALUES[k]:
                raise ValueError(f"unknown {k} {v!r} in held-out combination {c}; "
                                 f"expected one of {list(ATTRIBUTE_VALUES[k])}")
        out.append(c)
    return out


@dataclass(frozen=True)
class ShapesSample:
    image: Image.Image
    caption: str
    record: ShapeRecord


class ShapesWorld:
    """Deterministic generator of Shapes samples: the same (seed, split, index) gives the same
    image and caption.

    Held-out combinations (e.g. ``[{"color": "yellow", "shape": "triangle"}]``) never appear in
    the ``train``, ``val`` or ``test`` splits; the ``heldout`` split draws only from them.
    ``colorless_rate`` (train split only) draws that share of images as gray silhouettes
    captioned without a colour, so that a CLIP learns shape apart from colour without ever
    seeing a held-out combination.
    """

    def __init__(self, image_size: int = 64, seed: int = 0, split: str = "train",
                 holdout: Iterable[Combination] = (), full_caption_rate: float = 0.0,
                 colorless_rate: float = 0.0) -> None:
        if split not in SPLIT_IDS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_IDS)}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        self.image_size = image_size
        self.seed = seed
        self.split = split
        self.holdout = validate_combinations(holdout)
        if not 0.0 <= full_caption_rate <= 1.0:
            raise ValueError(f"full_caption_rate must lie in [0, 1], got {full_caption_rate}")
        self.full_caption_rate = full_caption_rate
        if not 0.0 <= colorless_rate <= 1.0:
            raise ValueError(f"colorless_rate must lie in [0, 1], got {colorless_rate}")
        if colorless_rate and split != "train":
            raise ValueError("colorless_rate is for the train split only: the attribute "
                             "records of silhouettes name a colour their pixels do not show")
        self.colorless_rate = colorless_rate
        if split == "heldout" and not self.holdout:
            raise ValueError("split 'heldout' needs at least one held-out combination")

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLIT_IDS[self.split], index])

    def _draw_attributes(self, rng: np.random.Generator) -> dict[str, str]:
        for _ in range(10_000):
            attrs = {k: str(rng.choice(v)) for k, v in ATTRIBUTE_VALUES.items()}
            if self.split == "heldout":
                if not matches_any(attrs, self.holdout):
                    # Draw the held-out attributes directly so rejection stays cheap.
                    attrs.update(self.holdout[int(rng.integers(len(self.holdout)))])
                return attrs
            if not matches_any(attrs, self.holdout):
                return attrs
        raise ValueError(f"held-out combinations {self.holdout} leave nothing to sample")

    def record(self, index: int) -> tuple[ShapeRecord, str]:
        """The attribute record and caption template of sample `index`."""
        if index < 0:
            raise IndexError(f"negative index {index}")
        rng = self._rng(index)
        attrs = self._draw_attributes(rng)
        s = self.image_size
        gx, gy = POSITIONS[attrs["position"]]
        cx = (GRID[gx] + rng.uniform(-POSITION_JITTER, POSITION_JITTER)) * s
        cy = (GRID[gy] + rng.uniform(-POSITION_JITTER, POSITION_JITTER)) * s
        radius = SIZES[attrs["size"]] * rng.uniform(*SIZE_JITTER) * s
        template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
        # drawn only when asked for, so that the default data stays what it was
        if self.full_caption_rate and rng.random() < self.full_caption_rate:
            template = CAPTION_TEMPLATES[0]  # names every attribute
        colorless = bool(self.colorless_rate) and rng.random() < self.colorless_rate
        if colorless:
            template = colorless_template(template)
        record = ShapeRecord(**attrs, cx=float(cx), cy=float(cy), radius=float(radius),
                             colorless=colorless)
        return record, template

    def captions(self, index: int, count: int) -> list[str]:
        """`count` captions of sample `index`: its own caption first, then captions from other
        templates, drawn without repeats (deterministic; at most one per template)."""
        if not 1 <= count <= len(CAPTION_TEMPLATES):
            raise ValueError(f"captions per image must lie in [1, {len(CAPTION_TEMPLATES)}], "
                             f"got {count}")
        record, template = self.record(index)
        templates = CAPTION_TEMPLATES
        if record.colorless:  # a silhouette's captions never name a colour
            templates = tuple(colorless_template(t) for t in CAPTION_TEMPLATES)
        others = [t for t in dict.fromkeys(templates) if t != template]
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index, 1])
        chosen = [others[i] for i in rng.permutation(len(others))[:count - 1]]
        return [caption(record, t) for t in [template, *chosen]]

    def negative_captions(self, index: int, count: int,
                          prefer: Sequence[str] = tuple(ATTRIBUTE_VALUES)) -> list[str]:
        """`count` hard negatives of sample `index`'s caption: the same template with one
        attribute it names set to another value (NegCLIP-style). The attribute is drawn from
        those named that are in `prefer`, or from all named when the caption names none of
        them (deterministic)."""
        check_attribute_names(prefer)
        record, template = self.record(index)
        named = [a for a in ATTRIBUTE_VALUES if a in mentioned_attributes(template)]
        pool = [a for a in named if a in prefer] or named
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index, 2])
        out = []
        for _ in range(count):
            attr = pool[int(rng.integers(len(pool)))]
            others = [v for v in ATTRIBUTE_VALUES[attr] if v != getattr(record, attr)]
            changed = replace(record, **{attr: others[int(rng.integers(len(others)))]})
            out.append(caption(changed, template))
        return out

    def __getitem__(self, index: int) -> ShapesSample:
        record, template = self.record(index)
        return ShapesSample(render(record, self.image_size), caption(record, template), record)
