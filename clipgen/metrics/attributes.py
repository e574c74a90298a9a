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

