"""The standard FID/IS Inception network (torch-fidelity's port of the TF 2015 graph), from a
local weights file: nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from clipgen.checkpoint import load_torch_file

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 + INCEPTION_FILE)


def inception_search_paths() -> list[Path]:
    """Where the weights are looked for when no path is given: the torch hub cache."""
    return [Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE]


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: `path` when given, else the torch hub cache. A missing file
    is an error naming the file, where to put it and where to get it."""
    candidates = [Path(path)] if path else inception_search_paths()
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Inception weights not found (looked for {', '.join(map(str, candidates))}). FID and IS "
        f"use torch-fidelity's {INCEPTION_FILE}: download it from {INCEPTION_URL} and put it "
        f"in {inception_search_paths()[0].parent} or pass its path as "
        "metrics.inception_weights=<file>. FD on CLIP features needs no extra weights "
        "(metrics.fid_features=[clip])")


class InceptionFeatures(nn.Module):
    """uint8 (N, 3, H, W) images to Inception features: `pool` (2048, for FID) or
    `logits_unbiased` (1008, for IS)."""

    def __init__(self, weights: Path, feature: str = "2048") -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        # torch-fidelity loads the file with the full unpickler; loading it once with
        # weights_only=True first guarantees that it holds nothing but tensors.
        load_torch_file(weights)
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[feature],
                                      feature_extractor_weights_path=str(weights))
        self.num_features = 1008 if feature == "logits_unbiased" else int(feature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def inception_score_metric(classifier: nn.Module, splits: int = 10):
    """torchmetrics' Inception Score over `classifier` (uint8 images to class logits; the
    suites use `InceptionFeatures(weights, "logits_unbiased")`): exp of the mean KL divergence
    between p(y|x) and the marginal p(y), as mean and std over `splits` parts of the images
    (shuffled first: seed torch for a reproducible split)."""
    from torchmetrics.image.inception import InceptionScore

    return InceptionScore(feature=classifier, splits=splits)
