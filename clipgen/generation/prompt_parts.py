"""Composable prompts: "a blue shape AND a star NOT a diamond", each part conditioning the
prior on its own and the next-token distribution their product (`composed_logits`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

SEPARATOR = re.compile(r"(?<=\s)(AND|NOT)(?=\s)")
WEIGHT = re.compile(r"^(.*?)\s*::\s*([-+]?(?:\d+\.?\d*|\.\d+))$")


@dataclass(frozen=True)
class PromptPart:
    text: str
    weight: float


def is_composed(prompt: str) -> bool:
    """Whether `prompt` has parts: an upper-case AND or NOT between words, or a ` :: weight`."""
    return bool(SEPARATOR.search(f" {prompt.strip()} ") or WEIGHT.match(prompt.strip()))


def parse_prompt(prompt: str) -> list[PromptPart]:
    """The parts of a prompt. Parts are joined by AND (weight +1) or NOT (weight -1); `:: w`
    after a part sets its weight to w (to -w after NOT). One part of weight s samples like
    classifier-free guidance at scale s. Refuses empty parts and weights that sum to zero (the
    product would have no conditional term outside the guidance interval)."""
    pieces = SEPARATOR.split(f" {prompt.strip()} ")
    signs_and_texts = [(1.0, pieces[0])] + [(-1.0 if pieces[i] == "NOT" else 1.0, pieces[i + 1])
                                            for i in range(1, len(pieces), 2)]
    if not pieces[0].strip() and len(pieces) > 1 and pieces[1] == "NOT":
        signs_and_texts = signs_and_texts[1:]  # a prompt may start with NOT
    parts = []
    for sign, text in signs_and_texts:
        text, weight = text.strip(), 1.0
        found = WEIGHT.match(text)
        if found:
            text, weight = found.group(1).strip(), float(found.group(2))
        if not text:
            raise ValueError(f"empty part in prompt {prompt!r}: write text on both sides of "
                             "AND and NOT (e.g. 'a blue shape AND a star')")
        parts.append(PromptPart(text, sign * weight))
    if abs(sum(p.weight for p in parts)) < 1e-6:
        raise ValueError(f"the part weights of {prompt!r} sum to zero "
                         f"({', '.join(f'{p.weight:g}' for p in parts)}): raise a positive part's "
                         "weight (':: 2') so that the prompt still asks for something")
    return parts


def part_count(prompt: str) -> int:
    """How many parts the prompt has; 0 for a plain prompt (no parts)."""
    return len(parse_prompt(prompt)) if is_composed(prompt) else 0


def compose_prompt(parts: list[PromptPart]) -> str:
    """The prompt text of `parts`, as `parse_prompt` reads it back: parts joined by AND
    (positive weight) or NOT (negative), ` :: w` where a weight's size is not 1. Parts that
    `parse_prompt` would refuse (weights summing to zero) are refused here too."""
    pieces = []
    for i, part in enumerate(parts):
        if not part.text.strip() or SEPARATOR.search(f" {part.text} ") or "::" in part.text:
            raise ValueError(f"part text {part.text!r} is empty or holds AND, NOT or '::'")
        if part.weight == 0:
            raise ValueError(f"part {part.text!r} has weight 0: leave it out")
        joiner = "NOT " if part.weight < 0 else ("AND " if i else "")
        size = abs(part.weight)
        pieces.append(joiner + part.text + ("" if size == 1 else f" :: {size:.10g}"))
    prompt = " ".join(pieces)
    parse_prompt(prompt)
    return prompt
