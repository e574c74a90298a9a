"""Autoregressive sampling of image tokens from the prior: KV cache, top-k / top-p / temperature,
classifier-free guidance (conditional and null rows in one batch), CLIP reranking."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipgen.models.prior import CLIPPrior


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # 0 means greedy
    top_k: int | None = None
    top_p: float | None = None
    guidance_scale: float = 1.0  # 1 = plain conditional sampling (no null rows)
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
                  ) -> torch.Tensor:
    """Set to -inf every logit outside the top-k, and outside the smallest set of most likely
    tokens whose probability reaches top_p (the token crossing the threshold is kept)."""
    out = logits.clone()
    if top_k is not None and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out[out < kth] = float("-inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cum - sorted_logits.softmax(dim=-1) >= top_p  # mass before this token
        sorted_logits[remove] = float("-inf")
        out = torch.full_like(out, float("-inf")).scatter(-1, order, sorted_logits)
    return out


def pick_tokens(logits: torch.Tensor, cfg: SamplingConfig,
                generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from (B, V) logits."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float() / cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _guided(logits: torch.Tensor, b: int, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return logits
    cond, null = logits[:b], logits[b:]
    return null + scale * (cond - null)


@torch.no_grad()
def sample_tokens(prior: CLIPPrior, cond: torch.Tensor, cfg: SamplingConfig | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample (B, n_tokens) image tokens for (B, cond_dim) conditions.

    With guidance (scale != 1) the batch holds B conditional rows and B null rows; both get
    the same sampled token. With the cache, the prefix and every token are run through the
    transformer once; without it, the whole sequence is recomputed at every step.
    """
    cfg = cfg or SamplingConfig()
    b, n = cond.shape[0], prior.config.n_tokens
    guided = cfg.guidance_scale != 1.0
    rows = torch.cat([cond, cond]) if guided else cond
    null_mask = None
    if guided:
        null_mask = torch.zeros(2 * b, dtype=torch.bool, device=cond.device)
        null_mask[b:] = True
    prefix = prior.prefix(rows, null_mask)
    out = torch.zeros(b, n, dtype=torch.long, device=cond.device)
    if cfg.use_cache:
        logits, past = prior.step(prefix)
    else:
        logits = prior.full_logits(prefix, out[:, :0].repeat(2 if guided else 1, 1))
    for i in range(n):
        tok = pick_tokens(_guided(logits, b, cfg.guidance_scale), cfg, generator)
        out[:, i] = tok
        if i == n - 1:
            break
        step_tok = torch.cat([tok, tok]) if guided else tok
        if cfg.use_cache:
            logits, past = prior.step(prior.token_embeddings(step_tok)[:, None], past)
        else:
            so_far = out[:, :i + 1]
            logits = prior.full_logits(prefix, torch.cat([so_far, so_far]) if guided else so_far)
    return out


def rerank(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores per row of (P, N) candidate scores, best first."""
    if keep > scores.shape[1]:
        raise ValueError(f"cannot keep {keep} of {scores.shape[1]} candidates")
    return torch.topk(scores, keep, dim=1).indices
