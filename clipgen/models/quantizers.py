"""Vector quantizers with one interface: `forward(z) -> QuantOutput`, `lookup(indices)`.

- `TamingQuantizer`: taming's `VectorQuantizer2` (the quantizer of the public checkpoints).
- `L2Quantizer`: l2-normalised, low-dimensional codes (as in LlamaGen / ViT-VQGAN), initialised
  from data and with dead codes restarted from recent encoder outputs, for training from
  scratch without codebook collapse.
"""

from __future__ import annotations

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


def build_quantizer(kind: str, n_embed: int, embed_dim: int, beta: float = 0.25,
                    **kwargs) -> nn.Module:
    """`kind` is "taming" (VectorQuantizer2) or "l2" (normalised codes with restarts)."""
    if kind == "taming":
        return TamingQuantizer(n_embed, embed_dim, beta, **kwargs)
    if kind == "l2":
        return L2Quantizer(n_embed, embed_dim, beta, **kwargs)
    raise ValueError(f"unknown quantizer {kind!r}; expected 'taming' or 'l2'")
