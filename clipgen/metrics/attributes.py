"""Attribute accuracy: how often the attributes read back from generated Shapes images match
the ones their prompts named."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class NamedAttributes(Protocol):
    """A prompt as scored here: the attributes it names and the group it belongs to (e.g.
    `seen` or `heldout`)."""

    attributes: Mapping[str, str]
    group: str


def attribute_accuracy(reads: list[dict], prompts: Sequence[NamedAttributes]) -> dict[str, Any]:
    """Per attribute named in the prompts: the fraction of images whose read-back value matches,
    overall and per prompt group; plus colour-and-shape jointly."""
    hits: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for read, prompt in zip(reads, prompts):
        named = prompt.attributes
        for key, value in named.items():
            for group in ("all", prompt.group):
                hits[group][key].append(read.get(key) == value)
        if "color" in named and "shape" in named:
            both = read.get("color") == named["color"] and read.get("shape") == named["shape"]
            for group in ("all", prompt.group):
                hits[group]["color_and_shape"].append(both)
    return {group: {key: {"accuracy": round(sum(v) / len(v), 4), "n": len(v)}
                    for key, v in sorted(by_key.items())}
            for group, by_key in hits.items()}



UNREAD = "unread"


def attribute_confusion(reads: list[dict], prompts: Sequence[NamedAttributes],
                        values: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Per prompt group (`seen`, `heldout`, ...) and attribute named in the prompts: counts of
    what was asked (rows) against what was read back (columns, plus `unread` for a value
    outside `values`), as {"labels": [...], "columns": [...], "counts": [[...]]}."""
    out: dict[str, dict[str, Any]] = {}
    for read, prompt in zip(reads, prompts):
        for key, asked in prompt.attributes.items():
            if key not in values:
                continue
            labels = list(values[key])
            table = out.setdefault(prompt.group, {}).setdefault(key, {
                "labels": labels, "columns": labels + [UNREAD],
                "counts": [[0] * (len(labels) + 1) for _ in labels]})
            drawn = read.get(key)
            column = labels.index(drawn) if drawn in labels else len(labels)
            table["counts"][labels.index(asked)][column] += 1
    return {group: dict(sorted(by_key.items())) for group, by_key in sorted(out.items())}


def clean_outline_share(ious: Sequence[float | None], prompts: Sequence[NamedAttributes],
                        threshold: float) -> dict[str, dict[str, Any]]:
    """Per group (`all`, `seen`, `heldout` ...): the share of images whose object outlines the
    named shape with IoU >= `threshold`, as {"accuracy", "n", "mean_iou"}; images whose
    prompt names no shape (iou None) are left out."""
    by_group: dict[str, list[float]] = defaultdict(list)
    for iou, prompt in zip(ious, prompts):
        if iou is not None:
            for group in ("all", prompt.group):
                by_group[group].append(iou)
    return {group: {"accuracy": round(sum(v >= threshold for v in values) / len(values), 4),
                    "n": len(values), "mean_iou": round(sum(values) / len(values), 4)}
            for group, values in by_group.items()}
