"""Sampling speed: KV cache versus recomputing the whole sequence at every step, same weights
and settings, in one run (random weights: speed does not depend on them)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from clipgen.generation.sampling import SamplingConfig, sample_tokens
from clipgen.models.prior import CLIPPrior, PriorConfig


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device: torch.device, n: int = 2048, repeats: int = 10,
                 dtype: torch.dtype = torch.float32) -> float:
    """Achieved FLOP/s of an n x n matrix product on this device."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def time_sampling(prior: CLIPPrior, batch: int, sampling: SamplingConfig,
                  device: torch.device) -> float:
    """Seconds to sample every token of `batch` rows (VQGAN decoding excluded)."""
    cond = torch.nn.functional.normalize(torch.randn(batch, prior.config.cond_dim,
                                                     device=device), dim=-1)
    gen = torch.Generator(device=device).manual_seed(0)
    synchronize(device)
    start = time.perf_counter()
    sample_tokens(prior, cond, sampling, generator=gen)
    synchronize(device)
    return time.perf_counter() - start


def sampling_rows(models: Mapping[str, PriorConfig], batches: Sequence[int],
                  device: torch.device, max_uncached_s: float, peak_flops: float
                  ) -> list[dict[str, Any]]:
    """One row per model, batch and mode (kv-cache, recompute): seconds, tokens/s, images/s,
    model FLOP/s utilisation and the cache's speed-up."""
    rows = []
    for name, cfg in models.items():
        torch.manual_seed(0)
        prior = CLIPPrior(cfg).to(device).eval()
        time_sampling(prior, 1, SamplingConfig(top_k=100), device)  # warm-up
        for batch in batches:
            cached_s = time_sampling(prior, batch, SamplingConfig(top_k=100), device)
            ratio = prior.sampling_flops(batch, False) / prior.sampling_flops(batch, True)
            estimate = cached_s * ratio
            uncached_s = (time_sampling(prior, batch, SamplingConfig(top_k=100, use_cache=False),
                                        device) if estimate <= max_uncached_s else None)
            for mode, seconds in (("kv-cache", cached_s), ("recompute", uncached_s)):
                flops = prior.sampling_flops(batch, mode == "kv-cache")
                row: dict[str, Any] = {"model": name, "batch": batch, "mode": mode,
                                       "tokens": cfg.n_tokens}
                if seconds is None:
                    row.update({"seconds": f"skipped (est. {estimate:.0f})", "tokens_per_s": "",
                                "images_per_s": "", "mfu": "", "speedup": ""})
                else:
                    row.update({"seconds": round(seconds, 3),
                                "tokens_per_s": round(batch * cfg.n_tokens / seconds, 1),
                                "images_per_s": round(batch / seconds, 3),
                                "mfu": round(flops / seconds / peak_flops, 4),
                                "speedup": round(uncached_s / cached_s, 1)
                                if mode == "kv-cache" and uncached_s else ""})
                rows.append(row)
    return rows
