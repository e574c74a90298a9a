"""Sampling speed of the three decoders (static cache, Hugging Face reference, full
recomputation) in each precision and batch size, against this machine's limits measured in the
same run: memory bandwidth (the weight-read roofline of decoding) and matmul FLOP/s."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from clipgen.generation.decoder import DTYPES, decoder_weights
from clipgen.generation.sampling import SamplingConfig, sample_tokens
from clipgen.models.prior import CLIPPrior, PriorConfig
from clipgen.run_info import cpu_has_fast_bf16


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                 repeats: int = 3) -> float:
    """Achieved FLOP/s of an n x n matrix product on this device in `dtype` (best of repeats)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / _best_seconds(lambda: a @ b, device, repeats)


def copy_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 5) -> float:
    """Achieved bytes/s of copying a large buffer (read + write)."""
    src = torch.empty(megabytes * 2 ** 20 // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _best_seconds(lambda: dst.copy_(src), device, repeats)


@dataclass
class Machine:
    """Limits of the device measured in the benchmark's own run."""

    bandwidth: float  # bytes/s
    matmul: dict[str, float]  # dtype name -> FLOP/s


def measure_machine(device: torch.device, dtypes: Sequence[str]) -> Machine:
    return Machine(copy_bandwidth(device),
                   {d: matmul_flops(device, DTYPES[d]) for d in dtypes})


def time_sampling(prior: CLIPPrior, batch: int, sampling: SamplingConfig,
                  device: torch.device, conditions: torch.Tensor | None = None,
                  stats: dict[str, Any] | None = None) -> float:
    """Seconds to sample every token of `batch` rows (VQGAN decoding excluded), conditioned
    on `conditions` (cycled to the batch; random unit embeddings when not given)."""
    if conditions is not None:
        cond = conditions.to(device)[torch.arange(batch) % len(conditions)]
    elif prior.tokenizer is not None:  # caption tokens (the caption encoder runs once, timed)
        cond = prior.tokenizer.encode(["a small yellow star in the top left"] * batch).to(device)
    else:
        cond = torch.nn.functional.normalize(torch.randn(batch, prior.config.cond_dim,
                                                         device=device), dim=-1)
    gen = torch.Generator(device=device).manual_seed(0)
    synchronize(device)
    start = time.perf_counter()
    sample_tokens(prior, cond, sampling, generator=gen, stats=stats)
    synchronize(device)
    return time.perf_counter() - start


def _best_sampling_time(prior: CLIPPrior, batch: int, sampling: SamplingConfig,
                        device: torch.device, conditions: torch.Tensor | None = None,
                        stats: dict[str, Any] | None = None, repeats: int = 1) -> float:
    """The best of `repeats` runs of `time_sampling` (shared machines are noisy)."""
    return min(time_sampling(prior, batch, sampling, device, conditions, stats)
               for _ in range(max(repeats, 1)))


def _fraction(value: float) -> float:
    """A fraction for the table: 3 decimals, or 2 significant digits below 0.001 (tiny models
    on a busy machine), so that a measured value never prints as 0."""
    return round(value, 3) if value >= 1e-3 else float(f"{value:.2g}")


@dataclass
class BenchPrior:
    """A prior to time: random weights of a size, or trained weights with the conditions to
    sample them under (what decides how many drafts speculative decoding accepts)."""

    prior: CLIPPrior
    conditions: torch.Tensor | None = None


def _variants(decoders: Sequence[str], compile_modes: Sequence[bool], windows: Sequence[int],
              weight_formats: Sequence[str] = ("dtype",)) -> list[tuple[str, bool, int, str]]:
    """(decoder, compiled, speculative window (0 = off), weight format) of every timed
    variant: the reference decoders in the sampling dtype only; the static decoder in each
    weight format, plain (each compile mode; int8_dynamic uncompiled) and per window."""
    out = [(d, False, 0, "dtype") for d in decoders if d != "static"]
    if "static" in decoders:
        for fmt in weight_formats:
            modes = [False] if fmt == "int8_dynamic" else compile_modes
            out += [("static", c, 0, fmt) for c in modes]
            out += [("static", False, w, fmt) for w in windows]
    return out


def _emulated(dtype: str, device: torch.device) -> bool:
    """Whether `dtype` is emulated here: bf16 on a CPU without native bf16."""
    return dtype == "bfloat16" and device.type == "cpu" and not cpu_has_fast_bf16()


def sampling_rows(models: Mapping[str, PriorConfig | BenchPrior], batches: Sequence[int],
                  decoders: Sequence[str], dtypes: Sequence[str], compile_modes: Sequence[bool],
                  device: torch.device, machine: Machine, guidance_scale: float = 1.0,
                  top_k: int | None = 100, max_seconds: float = 300.0,
                  windows: Sequence[int] = (), weight_formats: Sequence[str] = ("dtype",),
                  repeats: int = 1) -> list[dict[str, Any]]:
    """One row per model, batch, decoder, precision and compile mode, and per speculative
    window (`windows`) and weight format (`weight_formats`, `sampling.weights`) on the static
    decoder: seconds, tokens/s, decode steps per image, weight bytes read per token, the
    fraction of the weight-read roofline for the bytes the steps read (each step reads the
    weights once, in their format) and of matmul peak, the speed-up over full recomputation
    and over the plain static decoder in fp32. Plain static rows also give the key/value cache
    bytes the decode reads per token and the fraction of the memory roofline for weights and
    cache together. Each time is the best of `repeats` runs. Runs estimated to
    take longer than `max_seconds` (from the static fp32 time, the FLOP ratio and the matmul
    speed of the precision) are skipped and say so."""
    rows: list[dict[str, Any]] = []
    for name, model in models.items():
        if isinstance(model, PriorConfig):
            torch.manual_seed(0)
            model = BenchPrior(CLIPPrior(model).to(device).eval())
        prior, cfg = model.prior, model.prior.config
        rows_per_batch = 2 if guidance_scale != 1.0 else 1
        for batch in batches:
            timed = partial(_best_sampling_time, prior, batch, device=device,
                            conditions=model.conditions, repeats=repeats)
            base = SamplingConfig(top_k=top_k, guidance_scale=guidance_scale, dtype="float32")
            timed(base)  # warm-up: weights prepared, caches
            reference_s = timed(base)
            measured: list[tuple[dict[str, Any], float]] = []  # this batch's timed rows
            for dtype in dtypes:
                slowdown = machine.matmul["float32"] / machine.matmul[dtype]
                for decoder, compiled, window, fmt in _variants(decoders, compile_modes, windows,
                                                                weight_formats):
                    ratio = (prior.sampling_flops(batch, False) / prior.sampling_flops(batch)
                             if decoder == "recompute" else 1.0)
                    estimate = reference_s * ratio * max(slowdown, 1.0)
                    row: dict[str, Any] = {"model": name, "batch": batch, "decoder": decoder,
                                           "dtype": dtype,
                                           "emulated": _emulated(dtype, device),
                                           "weights": fmt, "compile": compiled,
                                           "speculative": f"jacobi {window}" if window else ""}
                    if estimate > max_seconds:
                        row["seconds"] = f"skipped (est. {estimate:.0f})"
                        rows.append(row)
                        continue
                    settings = SamplingConfig(
                        top_k=top_k, guidance_scale=guidance_scale, decoder=decoder,
                        dtype=dtype, compile=compiled, speculative="jacobi" if window else None,
                        window=window or 16, weights=fmt)
                    first = None
                    if compiled:  # the first call compiles: report it apart
                        first = timed(settings, repeats=1)
                    stats: dict[str, Any] = {}
                    seconds = timed(settings, stats=stats)
                    measured.append((row, seconds))
                    steps = stats.get("decode_steps", cfg.n_tokens - 1) + 1  # with the prefill
                    prepared = decoder_weights(prior, DTYPES[dtype], device, weights=fmt)
                    step_bytes = prepared.step_bytes()
                    roofline_s = steps * step_bytes / machine.bandwidth
                    plain_static = decoder == "static" and not window
                    cache_bytes = (prepared.cache_read_bytes(rows_per_batch * batch,
                                                             cfg.n_prefix, cfg.n_tokens)
                                   if plain_static else 0)
                    flops = rows_per_batch * prior.sampling_flops(batch, decoder != "recompute")
                    row.update({
                        "seconds": round(seconds, 3),
                        "compile_s": round(first - seconds, 1) if first else "",
                        "tokens_per_s": round(batch * cfg.n_tokens / seconds, 1),
                        "steps_per_image": steps,
                        "tokens_per_step_row": round(stats.get("row_tokens_per_step", 1.0), 2),
                        "weight_bytes_per_token": round(steps * step_bytes
                                                        / (batch * cfg.n_tokens)),
                        "roofline_fraction": _fraction(roofline_s / seconds),
                        "cache_bytes_per_token": (round(cache_bytes / (batch * cfg.n_tokens))
                                                  if plain_static else ""),
                        "memory_roofline_fraction": (
                            _fraction((steps * step_bytes + cache_bytes) / machine.bandwidth
                                      / seconds) if plain_static else ""),
                        "matmul_fraction": _fraction(flops / seconds / machine.matmul[dtype]),
                    })
                    rows.append(row)
            plain_fp32 = {r["decoder"]: s for r, s in measured
                          if r["dtype"] == "float32" and r["weights"] == "dtype"
                          and not r["compile"] and not r["speculative"]}
            recompute, static = plain_fp32.get("recompute"), plain_fp32.get("static")
            for row, seconds in measured:
                row["x_recompute_fp32"] = round(recompute / seconds, 1) if recompute else ""
                row["x_static_fp32"] = round(static / seconds, 2) if static else ""
    return rows


def layout_rows(shapes: Sequence[Sequence[int]], batches: Sequence[int], copies: int = 40,
                repeats: int = 5) -> list[dict[str, Any]]:
    """Milliseconds and weight GB/s of one linear layer in the decoder's two layouts, x @ W
    with W (in, out) and W @ x.T with W (out, in), for each (in, out) shape and row count;
    `copies` distinct weights are cycled so that none stays in cache (as in decoding)."""
    rows = []
    for n_in, n_out in shapes:
        in_out = [torch.randn(n_in, n_out) for _ in range(copies)]
        out_in = [w.t().contiguous() for w in in_out]
        gigabytes = n_in * n_out * 4 / 1e9
        for batch in batches:
            x = torch.randn(batch, n_in)
            forms = {"x @ W(in,out)": lambda x=x, ws=in_out: [torch.mm(x, w) for w in ws],
                     "W(out,in) @ x.T": lambda x=x, ws=out_in: [torch.mm(w, x.t()) for w in ws]}
            for form, run in forms.items():
                ms = _best_seconds(run, torch.device("cpu"), repeats) / copies * 1e3
                rows.append({"in": n_in, "out": n_out, "rows": batch, "form": form,
                             "ms": round(ms, 3), "weight_gb_s": round(gigabytes / ms * 1e3, 1)})
    return rows


def _sdpa(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.scaled_dot_product_attention(query, keys, values)


def _two_products(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
                  ) -> torch.Tensor:
    """Attention as two matrix products in the cache's dtype, the softmax in fp32."""
    scores = torch.matmul(query, keys.transpose(-1, -2)) * query.shape[-1] ** -0.5
    return torch.matmul(scores.float().softmax(-1).to(values.dtype), values)


def attention_rows(batches: Sequence[int], heads: int, head_dim: int, length: int,
                   layers: int, stride: int = 4, repeats: int = 3,
                   dtypes: Sequence[str] = ("float32",)) -> list[dict[str, Any]]:
    """Milliseconds per layer of one decode step's attention over a key/value cache (a query
    per row, positions 1..length-1 every `stride`), with `layers` layers' caches cycled as in
    decoding and with one layer's cache alone (which may stay in the processor's cache), with
    the cache (and query) in each of `dtypes` (the decoder keeps it in the sampling dtype):
    SDPA, and the same as two matrix products. `cache_gb_s`: the key and value bytes read at
    those positions per second; `layer_cache_mb`: one layer's keys and values at full length."""
    rows = []
    positions = range(1, length, stride)
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        for batch in batches:
            keys = torch.randn(layers, batch, heads, length, head_dim).to(dtype)
            values = torch.randn_like(keys)
            query = torch.randn(batch, heads, 1, head_dim).to(dtype)
            read = sum(2 * batch * heads * pos * head_dim * keys.element_size()
                       for pos in positions)
            for form, attend in (("sdpa", _sdpa), ("two products", _two_products)):
                for cycled in (layers, 1):
                    def run(attend=attend, cycled=cycled, k=keys, v=values, q=query) -> None:
                        for pos in positions:
                            for i in range(cycled):
                                attend(q, k[i, :, :, :pos], v[i, :, :, :pos])

                    seconds = _best_seconds(run, torch.device("cpu"), repeats)
                    per_layer_ms = seconds / (len(positions) * cycled) * 1e3
                    rows.append({"rows": batch, "heads": heads, "head_dim": head_dim,
                                 "dtype": dtype_name, "form": form, "layers_cycled": cycled,
                                 "layer_cache_mb": float(f"{keys[0].nbytes * 2 / 1e6:.3g}"),
                                 "ms_per_layer": float(f"{per_layer_ms:.3g}"),
                                 "cache_gb_s": float(f"{read * cycled / seconds / 1e9:.3g}")})
    return rows


def token_pick_rows(vocab: int, batch: int, top_k: int, repeats: int = 200
                    ) -> list[dict[str, Any]]:
    """Milliseconds per step of drawing one token per row with top-k: masking the whole
    vocabulary then drawing from it, against drawing among the k best (`pick_tokens`)."""
    from clipgen.generation.sampling import filter_logits, pick_tokens

    logits = torch.randn(batch, vocab)
    cfg = SamplingConfig(top_k=top_k)

    def whole_vocabulary() -> torch.Tensor:
        return torch.multinomial(filter_logits(logits, top_k).softmax(-1), 1)

    def k_best() -> torch.Tensor:
        return pick_tokens(logits, cfg, None)

    device = torch.device("cpu")
    return [{"vocab": vocab, "rows": batch, "top_k": top_k, "draw": name,
             "ms": round(_best_seconds(lambda f=f: [f() for _ in range(repeats)], device, 3)
                         / repeats * 1e3, 3)}
            for name, f in (("whole vocabulary", whole_vocabulary), ("k best", k_best))]
