"""Zero-shot attribute accuracy and retrieval recall of a CLIP on the Shapes world."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from clipgen.data.shapes import ATTRIBUTE_VALUES, OBJECT_COLORS, SHAPES, prompt_for


def zero_shot_prompts() -> dict[str, list[list[str]]]:
    """For each attribute, for each of its values, an ensemble of prompts naming that value:
    with each shape (or, for the shape itself, with each colour), so that no prompt uses a
    word ("shape") that captions never contain."""
    out: dict[str, list[list[str]]] = {}
    for attr, values in ATTRIBUTE_VALUES.items():
        if attr == "shape":
            out[attr] = [[prompt_for({"shape": v, "color": c}) for c in OBJECT_COLORS]
                         for v in values]
        else:
            out[attr] = [[prompt_for({attr: v, "shape": s}) for s in SHAPES] for v in values]
    return out


def zero_shot_accuracy(image_emb: torch.Tensor, truth: dict[str, Sequence[str]],
                       encode_text: Callable[[list[str]], torch.Tensor]) -> dict[str, float]:
    """Accuracy of each attribute: every image gets the value whose prompt ensemble (mean of
    unit text embeddings, renormalised) is most similar to its embedding."""
    out = {}
    for attr, ensembles in zero_shot_prompts().items():
        classes = torch.stack([F.normalize(encode_text(prompts).float().mean(0), dim=-1)
                               for prompts in ensembles]).to(image_emb.device)
        pred = (image_emb @ classes.t()).argmax(dim=1).tolist()
        values = ATTRIBUTE_VALUES[attr]
        out[attr] = sum(values[p] == t for p, t in zip(pred, truth[attr])) / len(pred)
    return out


def in_context_accuracy(image_emb: torch.Tensor, truth: dict[str, Sequence[str]],
                        encode_text: Callable[[list[str]], torch.Tensor]) -> dict[str, float]:
    """Accuracy of each attribute read in context: for each image, the prompts name all five of
    its attributes truly except one, which takes each of its values in turn; the image gets the
    most similar. This is the question a prompt to the generator asks (the other words are
    given), where `zero_shot_accuracy` averages over prompts with the other attributes wrong."""
    n = len(image_emb)
    records = [{k: truth[k][i] for k in ATTRIBUTE_VALUES} for i in range(n)]
    candidates = {attr: [[prompt_for({**r, attr: v}) for v in values] for r in records]
                  for attr, values in ATTRIBUTE_VALUES.items()}
    prompts = sorted({p for per_image in candidates.values() for ps in per_image for p in ps})
    emb = F.normalize(encode_text(prompts).float(), dim=-1).to(image_emb.device)
    row = {p: i for i, p in enumerate(prompts)}
    out = {}
    for attr, values in ATTRIBUTE_VALUES.items():
        right = 0
        for i, (record, ps) in enumerate(zip(records, candidates[attr])):
            scores = emb[[row[p] for p in ps]] @ image_emb[i].float()
            right += values[int(scores.argmax())] == record[attr]
        out[attr] = right / n
    return out


def shape_readings(image_emb: torch.Tensor, truth: dict[str, Sequence[str]],
                   encode_text: Callable[[list[str]], torch.Tensor]
                   ) -> dict[str, dict[str, int]]:
    """For each colour x shape combination among the images, how often each shape is read:
    an image's shape is the one whose prompt with the image's true colour ("a blue star",
    "a blue diamond", ...) is most similar to its embedding. Keys "<colour> <shape>"."""
    shapes = ATTRIBUTE_VALUES["shape"]
    out: dict[str, dict[str, int]] = {}
    for color in dict.fromkeys(truth["color"]):
        classes = F.normalize(encode_text([prompt_for({"color": color, "shape": s})
                                           for s in shapes]).float(), dim=-1)
        for i in (i for i, c in enumerate(truth["color"]) if c == color):
            read = shapes[int((classes.to(image_emb.device) @ image_emb[i].float()).argmax())]
            counts = out.setdefault(f"{color} {truth['shape'][i]}", dict.fromkeys(shapes, 0))
            counts[read] += 1
    return dict(sorted(out.items()))


def retrieval_r1(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: list[str]
                 ) -> tuple[float, float]:
    """Image-to-text and text-to-image recall@1 over paired embeddings. A retrieved item counts
    as right when its caption is the query's own caption text (Shapes captions repeat)."""
    sims = image_emb @ text_emb.t()
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    labels = torch.tensor([ids[c] for c in captions])
    i2t = (labels[sims.argmax(dim=1)] == labels).float().mean().item()
    t2i = (labels[sims.argmax(dim=0)] == labels).float().mean().item()
    return i2t, t2i
