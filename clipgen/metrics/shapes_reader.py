"""Read Shapes attributes back from pixels with the geometry of the Shapes spec.

No learned model is involved: background is the nearest palette entry to the border pixels,
the object is every pixel far from the background, its colour the nearest object palette
entry to its core pixels, position and size come from the mask's centroid and area, and the
shape is the spec shape whose rendered mask overlaps the object mask best.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from clipgen.data.shapes import (
    BACKGROUND_COLORS,
    GRID,
    OBJECT_COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeRecord,
    render,
)

# Area of each shape divided by r^2 (r = outer radius).
_STAR_AREA = 10 * 0.5 * 0.45 * math.sin(math.radians(36))
AREA_PER_R2: dict[str, float] = {
    "circle": math.pi,
    "square": 2.0,
    "triangle": 3 * math.sqrt(3) / 4,
    "diamond": 2.0,
    "star": _STAR_AREA,
}
OBJECT_THRESHOLD = 60.0  # RGB distance from the background above which a pixel is object


def _nearest(color: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    dists = [np.linalg.norm(color - np.asarray(palette[n], dtype=np.float64)) for n in names]
    return names[int(np.argmin(dists))]


def _to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {arr.shape}")
    return arr.astype(np.float64)


def _grid_index(value: float) -> int:
    return int(np.argmin([abs(value - g) for g in GRID]))


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _object_mask(arr: np.ndarray) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """(background name, its RGB, distance of each pixel from it, object mask)."""
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    background = _nearest(np.median(border, axis=0), BACKGROUND_COLORS)
    bg = np.asarray(BACKGROUND_COLORS[background], dtype=np.float64)
    dist = np.linalg.norm(arr - bg, axis=2)
    return background, bg, dist, dist > OBJECT_THRESHOLD


def _template(shape: str, cx: float, cy: float, r: float, size: int, background: str,
              bg: np.ndarray) -> np.ndarray:
    """The mask of the spec rendering of `shape` at (cx, cy) with outer radius r."""
    rec = ShapeRecord("red", shape, "small", "center", background, cx, cy, r)
    return np.linalg.norm(_to_array(render(rec, size)) - bg, axis=2) > OBJECT_THRESHOLD


CLEAN_OUTLINE_IOU = 0.85  # a drawn object counts as a clean outline of its shape from here


def outline_iou(image: Image.Image | np.ndarray, shape: str,
                scales: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1),
                shifts: tuple[float, ...] = (-1.0, 0.0, 1.0)) -> float:
    """How cleanly the image's object outlines `shape`: the best IoU of the object's mask
    with the spec template of that shape, placed at the mask's centroid (shifted up to a
    pixel) with the radius its area implies (scaled by up to 10%). 0 when nothing is drawn."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    arr = _to_array(image)
    background, bg, _, mask = _object_mask(arr)
    if mask.sum() < 4:
        return 0.0
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    r = math.sqrt(float(mask.sum()) / AREA_PER_R2[shape])
    return max(_mask_iou(mask, _template(shape, cx + dx, cy + dy, r * k, arr.shape[0],
                                         background, bg))
               for k in scales for dx in shifts for dy in shifts)


def read_attributes(image: Image.Image | np.ndarray) -> dict[str, str | None]:
    """Read colour, shape, size, position and background of a Shapes image.

    Returns None for object attributes when no object is visible.
    """
    arr = _to_array(image)
    s = arr.shape[0]
    background, bg, dist, mask = _object_mask(arr)
    out: dict[str, str | None] = {"background": background, "color": None, "shape": None,
                                  "size": None, "position": None}
    if mask.sum() < 4:
        return out
    core = dist >= np.quantile(dist[mask], 0.5)
    out["color"] = _nearest(arr[core].mean(axis=0), OBJECT_COLORS)
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    pos = (_grid_index(cx / s), _grid_index(cy / s))
    out["position"] = next(name for name, cell in POSITIONS.items() if cell == pos)
    area = float(mask.sum())
    best, best_iou, best_r = None, -1.0, 0.0
    for shape in SHAPES:
        r = math.sqrt(area / AREA_PER_R2[shape])
        iou = _mask_iou(mask, _template(shape, cx, cy, r, s, background, bg))
        if iou > best_iou:
            best, best_iou, best_r = shape, iou, r
    out["shape"] = best
    threshold = (SIZES["small"] + SIZES["large"]) / 2 * s
    out["size"] = "small" if best_r < threshold else "large"
    return out
