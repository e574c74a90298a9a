"""Vector quantizers with one interface: `forward(z) -> QuantOutput`, `lookup(indices)`.

- `TamingQuantizer`: taming's `VectorQuantizer2` (the quantizer of the public checkpoints).
- `L2Quantizer`: l2-normalised, low-dimensional codes (as in LlamaGen / ViT-VQGAN), initialised
  from data and with dead codes restarted from recent encoder outputs, for training from
  scratch without codebook collapse.
- `FSQuantizer`: finite scalar quantisation (Mentzer et al. 2023, "Finite Scalar Quantization:
  VQ-VAE Made Simple"): each latent channel bounded and rounded to a few levels on its own; the
  code is the tuple of levels, so every combination of channel values is a code (the codebook
  is their product, never learnt, nothing to collapse or restart).

Each also has `project(z)`: a continuous latent as the decoder expects codes, without rounding
(for generators that optimise latents).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn


class QuantOutput(NamedTuple):
    z_q: torch.Tensor  # (B, C, h, w) quantised latents with straight-through gradients
    loss: torch.Tensor  # codebook + commitment loss
    indices: torch.Tensor  # (B, h, w) int64 code indices


class TamingQuantizer(VectorQuantizer2):
    """taming's VectorQuantizer2 (parameter `embedding.weight`) behind the common interface."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25,
                 legacy: bool = True) -> None:
        super().__init__(n_embed, embed_dim, beta=beta, legacy=legacy, sane_index_shape=True)

    def forward(self, z: torch.Tensor) -> QuantOutput:  # type: ignore[override]
        z_q, loss, (_, _, indices) = super().forward(z)
        return QuantOutput(z_q, loss, indices)

    def codebook(self) -> torch.Tensor:
        """(n_embed, embed_dim) code vectors as the decoder sees them."""
        return self.embedding.weight

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) code indices to (B, C, h, w) latents."""
        b, h, w = indices.shape
        return self.get_codebook_entry(indices.reshape(-1), (b, h, w, self.e_dim))

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Unbounded codes: a latent is decoded as it is."""
        return z


class L2Quantizer(nn.Module):
    """Cosine-similarity code lookup on l2-normalised, low-dimensional codes.

    Dead-code restart: an exponential moving average of code usage is kept; every
    `restart_every` training steps, codes whose average use is below `restart_threshold` of a
    uniform share are replaced by randomly chosen recent (normalised) encoder outputs. The
    codebook is initialised from the first training batch.
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25,
                 restart_every: int = 50, restart_threshold: float = 0.03,
                 usage_decay: float = 0.99, recent_size: int = 8192) -> None:
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_embed, embed_dim, beta
        self.restart_every = restart_every
        self.restart_threshold = restart_threshold
        self.usage_decay = usage_decay
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.normal_(self.embedding.weight)
        self.register_buffer("usage", torch.full((n_embed,), 1.0 / n_embed))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))
        self.register_buffer("recent", torch.zeros(recent_size, embed_dim), persistent=False)
        self.register_buffer("recent_filled", torch.tensor(0, dtype=torch.long),
                             persistent=False)
        self.restarted_total = 0

    def codebook(self) -> torch.Tensor:
        """(n_embed, embed_dim) code vectors as the decoder sees them (unit norm)."""
        return F.normalize(self.embedding.weight, dim=1)

    def forward(self, z: torch.Tensor) -> QuantOutput:
        b, c, h, w = z.shape
        if c != self.e_dim:
            raise ValueError(f"latent has {c} channels but codes have {self.e_dim} dimensions")
        flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, c), dim=1)
        if self.training and not bool(self.initialized):
            self._init_from(flat.detach())
        codes = self.codebook()
        indices = (flat @ codes.t()).argmax(dim=1)
        quant = codes[indices]
        loss = self.beta * F.mse_loss(flat, quant.detach()) + F.mse_loss(quant, flat.detach())
        quant = flat + (quant - flat).detach()
        if self.training:
            self._track(flat.detach(), indices)
        z_q = quant.view(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return QuantOutput(z_q, loss, indices.view(b, h, w))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) code indices to (B, C, h, w) latents."""
        return self.codebook()[indices].permute(0, 3, 1, 2).contiguous()

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Codes are unit vectors: a latent is normalised over its channels."""
        return F.normalize(z, dim=1)

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        picks = torch.randint(0, flat.shape[0], (self.n_e,), device=flat.device)
        noise = 0.01 * torch.randn(self.n_e, self.e_dim, device=flat.device)
        self.embedding.weight.data.copy_(flat[picks] + noise)
        self._sync_codebook()
        self.initialized.fill_(True)

    @torch.no_grad()
    def _track(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        counts = torch.bincount(indices, minlength=self.n_e).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        self.usage.mul_(self.usage_decay).add_(counts / counts.sum(), alpha=1 - self.usage_decay)
        # ring buffer of recent encoder outputs for restarts
        n = min(flat.shape[0], self.recent.shape[0])
        sel = flat[torch.randperm(flat.shape[0], device=flat.device)[:n]]
        start = int(self.recent_filled) % self.recent.shape[0]
        idx = (torch.arange(n, device=flat.device) + start) % self.recent.shape[0]
        self.recent[idx] = sel
        self.recent_filled.add_(n)
        self.steps.add_(1)
        if self.restart_every and int(self.steps) % self.restart_every == 0:
            self.restart_dead_codes()

    @torch.no_grad()
    def restart_dead_codes(self) -> int:
        """Replace rarely used codes with recent encoder outputs; return how many."""
        dead = self.usage < self.restart_threshold / self.n_e
        n_dead = int(dead.sum())
        available = min(int(self.recent_filled), self.recent.shape[0])
        if n_dead == 0 or available == 0:
            return 0
        picks = torch.randint(0, available, (n_dead,), device=self.recent.device)
        self.embedding.weight.data[dead] = self.recent[picks]
        self.usage[dead] = 1.0 / self.n_e
        self._sync_codebook()
        self.restarted_total += n_dead
        return n_dead

    def _sync_codebook(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(self.embedding.weight.data, src=0)


def place_values(counts: torch.Tensor) -> torch.Tensor:
    """The weight of each digit of a mixed-radix number over `counts`, digit 0 the least
    significant: 1, c0, c0 * c1, ..."""
    return torch.cumprod(torch.cat([counts.new_ones(1), counts[:-1]]), 0)


def code_digits(indices: torch.Tensor, levels: list[int] | tuple[int, ...]) -> torch.Tensor:
    """(..., len(levels)) level of each channel for fsq code indices: the index read as a
    mixed-radix number over `levels`, channel 0 the least significant digit."""
    counts = torch.tensor(list(levels), dtype=torch.long, device=indices.device)
    return (indices[..., None] // place_values(counts)) % counts


class FSQuantizer(nn.Module):
    """Finite scalar quantisation over `levels` (one count per latent channel, each >= 2).

    Channel i is bounded by a tanh to an interval that rounds to L_i integers (-(L_i - 1) / 2 ..
    (L_i - 1) / 2 for odd L_i; -L_i / 2 .. L_i / 2 - 1 for even L_i, the tanh shifted by half a
    step), rounded with a straight-through gradient, and divided by L_i // 2 (into [-1, 1]). A
    code's index is its levels read as a mixed-radix number, channel 0 the least significant
    digit; `n_embed` = prod(levels)."""

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25,
                 levels: list[int] | tuple[int, ...] = (8, 8, 8), eps: float = 1e-3) -> None:
        super().__init__()
        levels = [int(n) for n in levels]
        if any(n < 2 for n in levels):
            raise ValueError(f"fsq levels must each be at least 2, got {levels}")
        if len(levels) != embed_dim:
            raise ValueError(f"fsq has one level count per latent channel: {len(levels)} levels "
                             f"{levels} for embed_dim={embed_dim}; set embed_dim={len(levels)}")
        size = math.prod(levels)
        if size != n_embed:
            raise ValueError(f"fsq levels {levels} make {size} codes, not n_embed={n_embed}; "
                             f"set n_embed={size}")
        self.n_e, self.e_dim, self.levels, self.eps = n_embed, embed_dim, levels, eps
        counts = torch.tensor(levels, dtype=torch.long)
        # not saved: they follow from `levels`, which the config holds
        self.register_buffer("counts", counts, persistent=False)
        self.register_buffer("place", place_values(counts), persistent=False)

    def _view(self, t: torch.Tensor) -> torch.Tensor:
        """A per-channel constant shaped to broadcast over (B, C, h, w)."""
        return t.view(1, -1, 1, 1)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents bounded and scaled to [-1, 1] as codes are, not rounded."""
        return self._bound(z) / self._view(self.counts // 2).to(z.dtype)

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        counts = self._view(self.counts).to(z.dtype)
        half = (counts - 1) * (1 + self.eps) / 2  # a hair wider: the end levels are reached
        offset = (1 - counts % 2) * 0.5  # even counts: levels at half-integers, then shifted
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def forward(self, z: torch.Tensor) -> QuantOutput:
        if z.shape[1] != self.e_dim:
            raise ValueError(f"latent has {z.shape[1]} channels but fsq has {self.e_dim} levels")
        bounded = self._bound(z)
        levels = torch.round(bounded)
        rounded = bounded + (levels - bounded).detach()  # straight-through
        half_width = self._view(self.counts // 2)
        digits = levels.long() + half_width  # 0 .. L_i - 1 per channel
        indices = (digits * self._view(self.place)).sum(1)
        return QuantOutput(rounded / half_width.to(z.dtype), z.new_zeros(()), indices)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) code indices to (B, C, h, w) latents in [-1, 1]."""
        digits = code_digits(indices, self.levels).permute(0, 3, 1, 2)
        half_width = self._view(self.counts // 2)
        return ((digits - half_width).float() / half_width.float()).contiguous()

    def codebook(self) -> torch.Tensor:
        """(n_embed, embed_dim) every code's latent."""
        every = torch.arange(self.n_e, device=self.counts.device).view(1, -1, 1)
        return self.lookup(every)[0, :, :, 0].t().contiguous()


def build_quantizer(kind: str, n_embed: int, embed_dim: int, beta: float = 0.25,
                    **kwargs) -> nn.Module:
    """`kind` is "taming" (VectorQuantizer2), "l2" (normalised codes with restarts) or "fsq"
    (finite scalar quantisation; `levels` in kwargs)."""
    if kind == "taming":
        return TamingQuantizer(n_embed, embed_dim, beta, **kwargs)
    if kind == "l2":
        return L2Quantizer(n_embed, embed_dim, beta, **kwargs)
    if kind == "fsq":
        return FSQuantizer(n_embed, embed_dim, beta, **kwargs)
    raise ValueError(f"unknown quantizer {kind!r}; expected 'taming', 'l2' or 'fsq'")
