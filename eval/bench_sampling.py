"""Sampling speed: KV cache versus recomputing the whole sequence at every step (what some
public implementations do), same weights and settings, in one run.

    python eval/bench_sampling.py [--models shapes_small gpt2_medium] [--batches 1 16]

Models have random weights (speed does not depend on them). Reports tokens/s and sequences/s
(token sampling only; VQGAN decoding excluded), the cache speed-up, and model FLOP/s as a
fraction of this machine's fp32 matmul FLOP/s measured in the same run. Prints JSON and a
markdown table. `--max-uncached-s` skips uncached runs whose estimated time exceeds it."""

import argparse
import time

import torch

from clipgen.benchmark import machine_description, print_report
from clipgen.models.prior import CLIPPrior, PriorConfig
from clipgen.sampling import SamplingConfig, sample_tokens

MODELS = {
    "shapes_small": PriorConfig(vocab_size=512, n_tokens=256, cond_dim=128, n_layer=4, n_embd=256,
                                n_head=4),
    "gpt2_medium": PriorConfig(vocab_size=16384, n_tokens=256, cond_dim=512, n_layer=24,
                               n_embd=1024, n_head=16),
}


def matmul_flops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """Achieved fp32 FLOP/s of an n x n matrix product on this device."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_flops_per_token(cfg: PriorConfig, context: int) -> float:
    """Forward FLOPs of one token at a given context length: 2 x (non-embedding weights +
    output head) plus attention scores and weighted sums."""
    block = 12 * cfg.n_embd ** 2
    head = cfg.n_embd * cfg.vocab_size
    attention = 2 * cfg.n_embd * context
    return 2 * (cfg.n_layer * block + head) + cfg.n_layer * 2 * attention


def sampling_flops(cfg: PriorConfig, batch: int, cached: bool) -> float:
    """Model FLOPs of sampling all tokens for `batch` rows."""
    total_len = cfg.n_prefix + cfg.n_tokens
    if cached:
        return batch * sum(forward_flops_per_token(cfg, t) for t in range(1, total_len))
    # every step runs the whole prefix + tokens so far
    return batch * sum(sum(forward_flops_per_token(cfg, t) for t in range(1, length + 1))
                       for length in range(cfg.n_prefix, total_len))


def time_sampling(prior: CLIPPrior, batch: int, cached: bool, device: torch.device) -> float:
    cond = torch.nn.functional.normalize(torch.randn(batch, prior.config.cond_dim,
                                                     device=device), dim=-1)
    gen = torch.Generator(device=device).manual_seed(0)
    _sync(device)
    start = time.perf_counter()
    sample_tokens(prior, cond, SamplingConfig(top_k=100, use_cache=cached), generator=gen)
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-uncached-s", type=float, default=600.0)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    peak = matmul_flops(device)
    rows = []
    for name in args.models:
        cfg = MODELS[name]
        torch.manual_seed(0)
        prior = CLIPPrior(cfg).to(device).eval()
        time_sampling(prior, 1, True, device)  # warm-up
        for batch in args.batches:
            cached_s = time_sampling(prior, batch, True, device)
            ratio = sampling_flops(cfg, batch, False) / sampling_flops(cfg, batch, True)
            estimate = cached_s * ratio
            uncached_s = (time_sampling(prior, batch, False, device)
                          if estimate <= args.max_uncached_s else None)
            for mode, seconds in (("kv-cache", cached_s), ("recompute", uncached_s)):
                flops = sampling_flops(cfg, batch, mode == "kv-cache")
                row = {"model": name, "batch": batch, "mode": mode, "tokens": cfg.n_tokens}
                if seconds is None:
                    row.update({"seconds": f"skipped (est. {estimate:.0f})", "tokens_per_s": "",
                                "images_per_s": "", "mfu": "", "speedup": ""})
                else:
                    row.update({"seconds": round(seconds, 3),
                                "tokens_per_s": round(batch * cfg.n_tokens / seconds, 1),
                                "images_per_s": round(batch / seconds, 3),
                                "mfu": round(flops / seconds / peak, 4),
                                "speedup": round(uncached_s / cached_s, 1)
                                if mode == "kv-cache" and uncached_s else ""})
                rows.append(row)
    info = machine_description()
    info["matmul_gflops"] = round(peak / 1e9, 1)
    print_report(rows, f"sampling speed on {info.get('gpu', info['cpu'])} "
                       f"({info['matmul_gflops']} GFLOP/s fp32 matmul)")
    print(info)


if __name__ == "__main__":
    main()
