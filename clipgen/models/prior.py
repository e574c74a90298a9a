"""Stage 2: a Hugging Face GPT-2 that models p(image tokens | CLIP embedding).

The CLIP embedding is projected to `n_prefix` input embeddings, followed by the image tokens in
raster order; the vocabulary is the VQGAN codebook. A learned null prefix replaces the
condition for classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from clipgen.checkpoint import dataclass_from_dict


@dataclass
class PriorConfig:
    """Size of the prior. `vocab_size` is the VQGAN codebook size, `n_tokens` its token grid
    (h*w), `cond_dim` the CLIP embedding dimension."""

    vocab_size: int = 16384
    n_tokens: int = 256
    cond_dim: int = 512
    n_prefix: int = 1
    n_layer: int = 24
    n_embd: int = 1024
    n_head: int = 16
    dropout: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PriorConfig:
        return dataclass_from_dict(cls, d, "prior")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CLIPPrior(nn.Module):
    """GPT-2 over [condition prefix, image tokens]."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}")
        self.config = config
        gpt_config = GPT2Config(
            vocab_size=config.vocab_size, n_positions=config.n_prefix + config.n_tokens,
            n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
            resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
            bos_token_id=None, eos_token_id=None, tie_word_embeddings=True)
        gpt_config._attn_implementation = "sdpa"
        self.gpt = GPT2LMHeadModel(gpt_config)
        self.cond_proj = nn.Linear(config.cond_dim, config.n_prefix * config.n_embd)
        self.null_prefix = nn.Parameter(0.02 * torch.randn(config.n_prefix, config.n_embd))

    def prefix(self, cond: torch.Tensor, null_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, cond_dim) conditions to (B, n_prefix, n_embd); rows where `null_mask` is True
        get the learned null prefix instead."""
        b = cond.shape[0]
        pre = self.cond_proj(cond.to(self.cond_proj.weight.dtype))
        pre = pre.view(b, self.config.n_prefix, self.config.n_embd)
        if null_mask is not None:
            null = self.null_prefix.to(pre.dtype).expand(b, -1, -1)
            pre = torch.where(null_mask.view(b, 1, 1), null, pre)
        return pre

    def forward(self, cond: torch.Tensor, tokens: torch.Tensor,
                null_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, n_tokens, vocab) for (B, n_tokens) target tokens."""
        if tokens.shape[1] != self.config.n_tokens:
            raise ValueError(f"expected {self.config.n_tokens} tokens per image, got "
                             f"{tokens.shape[1]}")
        k = self.config.n_prefix
        inputs = torch.cat([self.prefix(cond, null_mask),
                            self.gpt.transformer.wte(tokens[:, :-1])], dim=1)
        hidden = self.gpt.transformer(inputs_embeds=inputs, use_cache=False).last_hidden_state
        return self.gpt.lm_head(hidden[:, k - 1:])

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.gpt.transformer.wte(tokens)

    def step(self, inputs_embeds: torch.Tensor, past: Any = None
             ) -> tuple[torch.Tensor, Any]:
        """One cached decoding step: logits of the last position and the updated cache."""
        out = self.gpt(inputs_embeds=inputs_embeds, past_key_values=past, use_cache=True)
        return out.logits[:, -1], out.past_key_values

    def full_logits(self, prefix: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of the next token after [prefix, tokens], recomputing the whole sequence
        (no cache)."""
        inputs = torch.cat([prefix, self.gpt.transformer.wte(tokens)], dim=1)
        return self.gpt(inputs_embeds=inputs, use_cache=False).logits[:, -1]
