"""Token embeddings factorised over the levels of finite-scalar-quantised codes.

A code of an fsq tokenizer is a tuple of levels, one per latent channel. A prior with
`token_factors` (the tokenizer's levels) learns one vector per level of each channel and
embeds code j as the sum of its levels' vectors; the output head is tied to that table, so
logit j = h . sum_c E_c[level_c(j)] = sum_c (h . E_c[level_c(j)]): a product of per-channel
experts over the joint code. A code never seen in some context is still made of levels that
were, which is what held-out colour x shape combinations need (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from clipgen.models.quantizers import code_digits


class FactorisedEmbedding(nn.Module):
    """A (prod(factors), dim) token table whose row j is the sum of one learnt row per factor,
    at code j's level in that factor. `weight` is the whole table, computed."""

    def __init__(self, factors: Sequence[int], dim: int) -> None:
        super().__init__()
        factors = [int(f) for f in factors]
        self.table = nn.Parameter(0.02 * torch.randn(sum(factors), dim))
        offsets = torch.tensor([0, *factors[:-1]]).cumsum(0)
        codes = torch.arange(math.prod(factors))
        # rows of `table` summed for each code; follows from `factors`, so not saved
        self.register_buffer("rows", code_digits(codes, factors) + offsets, persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        """(vocab, dim): every code's embedding."""
        return self.table[self.rows].sum(1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table[self.rows[tokens]].sum(-2)


class TiedFactorisedHead(nn.Module):
    """The output head tied to a `FactorisedEmbedding`: hidden states times its table. The
    embedding is referenced, not registered, so its table is saved once (under the
    embedding's name)."""

    def __init__(self, embedding: FactorisedEmbedding) -> None:
        super().__init__()
        self.__dict__["embedding"] = embedding

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.embedding.weight.t()
