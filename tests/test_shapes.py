import itertools
from dataclasses import replace

import numpy as np
import pytest

from clipgen.data.shapes import (
    ATTRIBUTE_VALUES,
    BACKGROUND_COLORS,
    CAPTION_TEMPLATES,
    GRID,
    OBJECT_COLORS,
    POSITIONS,
    SHAPES,
    ShapeRecord,
    ShapesWorld,
    caption,
    mentioned_attributes,
    render,
)
from clipgen.data.shapes_dataset import ShapesDataset
from clipgen.metrics.shapes_reader import read_attributes

HOLDOUT = [{"color": "yellow", "shape": "triangle"}]


def test_rendering_is_deterministic_for_a_seed():
    a, b = ShapesWorld(seed=3), ShapesWorld(seed=3)
    for i in range(20):
        assert np.array_equal(np.asarray(a[i].image), np.asarray(b[i].image))
        assert a[i].caption == b[i].caption
    other = ShapesWorld(seed=4)
    assert any(a[i].record != other[i].record for i in range(20))


def test_splits_differ():
    train, val = ShapesWorld(split="train"), ShapesWorld(split="val")
    assert [train[i].record for i in range(10)] != [val[i].record for i in range(10)]


@pytest.mark.parametrize("color,shape", list(itertools.product(OBJECT_COLORS, SHAPES)))
def test_every_color_and_shape_reads_back_from_pixels(color, shape):
    s = 64
    for background, (position, (gx, gy)) in zip(
            itertools.cycle(BACKGROUND_COLORS), POSITIONS.items()):
        rec = ShapeRecord(color, shape, "small", position, background,
                          GRID[gx] * s, GRID[gy] * s, 0.13 * s)
        arr = np.asarray(render(rec, s)).astype(float)
        bg = np.asarray(BACKGROUND_COLORS[background], dtype=float)
        # background: corners hold the exact palette colour
        assert np.allclose(arr[0, 0], bg, atol=1)
        mask = np.linalg.norm(arr - bg, axis=2) > 60
        core = np.linalg.norm(arr - bg, axis=2) > 0.9 * np.linalg.norm(
            np.asarray(OBJECT_COLORS[color], dtype=float) - bg)
        mean = arr[core].mean(axis=0)
        nearest = min(OBJECT_COLORS, key=lambda c: np.linalg.norm(mean - OBJECT_COLORS[c]))
        assert nearest == color
        ys, xs = np.nonzero(mask)
        cx, cy = (xs.mean() + 0.5) / s, (ys.mean() + 0.5) / s
        bounds = [0, 0.39, 0.61, 1]
        assert bounds[gx] < cx < bounds[gx + 1] and bounds[gy] < cy < bounds[gy + 1]
        assert read_attributes(arr.astype(np.uint8)) == rec.attributes()


def test_reader_reads_random_samples():
    world = ShapesWorld(seed=11)
    wrong = sum(read_attributes(world[i].image) != world[i].record.attributes()
                for i in range(300))
    assert wrong <= 3


def test_geometry_follows_the_spec():
    world = ShapesWorld(image_size=100, seed=1)
    for i in range(200):
        r = world[i].record
        gx, gy = POSITIONS[r.position]
        assert abs(r.cx / 100 - GRID[gx]) <= 0.03 + 1e-9
        assert abs(r.cy / 100 - GRID[gy]) <= 0.03 + 1e-9
        base = {"small": 13, "large": 22}[r.size]
        assert 0.92 * base - 1e-9 <= r.radius <= 1.08 * base + 1e-9


def test_held_out_combinations_never_in_train_and_only_in_heldout():
    train = ShapesWorld(seed=0, split="train", holdout=HOLDOUT)
    held = ShapesWorld(seed=0, split="heldout", holdout=HOLDOUT)
    for i in range(500):
        r = train[i].record
        assert not (r.color == "yellow" and r.shape == "triangle")
    for i in range(50):
        r = held[i].record
        assert (r.color, r.shape) == ("yellow", "triangle")


def test_bad_holdout_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown color 'teal'"):
        ShapesWorld(holdout=[{"color": "teal"}])
    with pytest.raises(ValueError, match="needs at least one"):
        ShapesWorld(split="heldout")


def test_captions_never_state_a_wrong_attribute():
    world = ShapesWorld(seed=5)
    for i in range(300):
        sample = world[i]
        text = sample.caption
        for attr, values in ATTRIBUTE_VALUES.items():
            for value in values:
                if value == sample.record.attributes()[attr]:
                    continue
                # "top" is part of "top left": compare whole positions only
                if attr == "position" and value in sample.record.position:
                    continue
                assert f" {value} " not in f" {text.replace(',', ' ')} ", (text, value)


def test_every_template_states_what_it_claims():
    rec = ShapeRecord("orange", "star", "large", "top left", "gray", 10, 10, 14)
    for template in CAPTION_TEMPLATES:
        text = caption(rec, template)
        for attr in mentioned_attributes(template):
            assert rec.attributes()[attr] in text


def test_dataset_yields_image_in_range_caption_attributes():
    ds = ShapesDataset(length=4, image_size=32)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32)
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["image"].min() < 0 < item["image"].max()
    assert isinstance(item["caption"], str) and item["caption"]
    assert set(item["attributes"]) == set(ATTRIBUTE_VALUES)
    with pytest.raises(IndexError):
        ds[4]


def test_clean_outline_is_high_on_renders_and_low_on_blobs():
    from PIL import Image, ImageDraw

    from clipgen.data.shapes import ShapesWorld
    from clipgen.metrics.shapes_reader import CLEAN_OUTLINE_IOU, outline_iou

    world = ShapesWorld(image_size=64, seed=11, split="test")
    ious = [outline_iou(world[i].image, world[i].record.shape) for i in range(40)]
    assert np.mean(np.array(ious) >= CLEAN_OUTLINE_IOU) >= 0.95
    disc = Image.new("RGB", (64, 64), (255, 255, 255))
    ImageDraw.Draw(disc).ellipse((16, 16, 48, 48), fill=(230, 30, 30))
    assert outline_iou(disc, "circle") >= CLEAN_OUTLINE_IOU
    assert outline_iou(disc, "square") < CLEAN_OUTLINE_IOU  # a disc labelled square
    rng = np.random.default_rng(0)
    blob = Image.new("RGB", (64, 64), (255, 255, 255))
    angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
    radii = rng.uniform(6, 18, 9)
    ImageDraw.Draw(blob).polygon([(32 + r * np.cos(a), 32 + r * np.sin(a))
                                  for a, r in zip(angles, radii)], fill=(30, 30, 230))
    assert max(outline_iou(blob, s) for s in ("star", "square", "triangle")) < 0.8
    assert outline_iou(Image.new("RGB", (64, 64), (255, 255, 255)), "star") == 0.0


def test_full_caption_rate_names_every_attribute_as_often_as_asked():
    from clipgen.data.shapes import ShapesWorld

    plain, default = ShapesWorld(seed=3), ShapesWorld(seed=3, full_caption_rate=0.0)
    assert [plain[i].caption for i in range(30)] == [default[i].caption for i in range(30)]
    full = ShapesWorld(seed=3, full_caption_rate=1.0)
    for i in range(30):
        sample = full[i]
        assert all(v.replace("_", " ") in sample.caption or k == "position"
                   for k, v in sample.record.attributes().items())
        assert sample.record == plain[i].record  # same images, other captions
    half = ShapesWorld(seed=3, full_caption_rate=0.5)
    changed = sum(half[i].caption != plain[i].caption for i in range(200))
    assert 60 < changed < 110
    with pytest.raises(ValueError, match="full_caption_rate"):
        ShapesWorld(full_caption_rate=1.5)


def test_colorless_rate_draws_gray_silhouettes_captioned_without_colour():
    plain = ShapesWorld(seed=3, holdout=HOLDOUT)
    same = ShapesWorld(seed=3, holdout=HOLDOUT, colorless_rate=0.0)
    assert [plain[i].caption for i in range(30)] == [same[i].caption for i in range(30)]
    world = ShapesWorld(seed=3, holdout=HOLDOUT, colorless_rate=0.4)
    silhouettes = [world[i] for i in range(200) if world[i].record.colorless]
    assert 50 < len(silhouettes) < 110
    colour_words = set(OBJECT_COLORS)
    for sample in silhouettes[:40]:
        index = next(i for i in range(200) if world[i].record == sample.record)
        for text in world.captions(index, 4) + world.negative_captions(index, 3):
            assert not colour_words & set(text.replace(",", " ").split()), text
        assert sample.record.shape in sample.caption
        arr = np.asarray(sample.image).reshape(-1, 3).astype(int)
        assert (arr.max(axis=1) - arr.min(axis=1)).max() <= 1  # gray pixels only
        bg = np.asarray(BACKGROUND_COLORS[sample.record.background])
        assert np.abs(arr - bg).max() > 60  # the object stands out from its background
        # everything but the colour is the coloured render's
        coloured = render(replace(sample.record, colorless=False), 64)
        mask = np.abs(np.asarray(coloured).astype(int) - bg).max(axis=2) > 0
        assert np.array_equal(mask, np.abs(np.asarray(sample.image).astype(int) - bg).max(
            axis=2) > 0)
    with pytest.raises(ValueError, match="train split only"):
        ShapesWorld(split="val", colorless_rate=0.2)
    with pytest.raises(ValueError, match="colorless_rate"):
        ShapesWorld(colorless_rate=1.2)


def test_negative_captions_change_one_attribute_the_caption_names():
    world = ShapesWorld(seed=2)
    hard = ("position", "size")
    seen = set()
    for i in range(150):
        record, template = world.record(i)
        named = mentioned_attributes(template)
        pool = (named & set(hard)) or named
        for negative in world.negative_captions(i, 3, prefer=hard):
            changed = {(a, v) for a in ATTRIBUTE_VALUES for v in ATTRIBUTE_VALUES[a]
                       if v != getattr(record, a)
                       and caption(replace(record, **{a: v}), template) == negative}
            assert changed and {a for a, _ in changed} <= pool, (template, negative)
            seen |= {a for a, _ in changed}
    assert seen == set(ATTRIBUTE_VALUES)  # captions naming neither fall back to what they name
    assert world.negative_captions(7, 4) == ShapesWorld(seed=2).negative_captions(7, 4)
    with pytest.raises(ValueError, match="unknown attribute"):
        ShapesDataset(4, negative_captions=2, negative_attributes=["place"])
    sample = ShapesDataset(4, negative_captions=2)[1]
    negatives = sample["negative_captions"]
    assert len(negatives) == 2 and sample["caption"] not in negatives


@pytest.mark.parametrize("prompt, reason", [
    ("two circles", "several objects (circles, two)"),
    ("3 red stars", "several objects (3, stars)"),
    ("a red circle and a blue star", "several objects (blue, circle, red, star)"),
    ("a brown circle", "unknown colour brown"),
    ("a large hexagon", "unknown shape hexagon"),
    ("a star AND two squares", "several objects (squares, two)"),
])
def test_prompts_the_shapes_world_cannot_draw_are_named(prompt, reason):
    from clipgen.generation.shapes_requests import undrawable_requests

    assert any(r.startswith(reason) for r in undrawable_requests(prompt)), \
        undrawable_requests(prompt)


@pytest.mark.parametrize("prompt", ["a large green star on a black background",
                                    "a small cyan diamond in the top left",
                                    "a blue shape AND a star", "a photo of an orange square"])
def test_prompts_the_shapes_world_draws_raise_no_warning(prompt):
    from clipgen.generation.shapes_requests import shapes_warnings, undrawable_requests

    assert undrawable_requests(prompt) == []
    assert shapes_warnings(["two cats"], "ViT-B-32") == []  # other worlds: no Shapes reading
