"""Autoregressive sampling of image tokens from the prior: top-k / top-p / temperature,
classifier-free guidance (conditional and null rows in one batch, optionally on an interval of
positions), CLIP reranking.

Three decoders produce the logits, selected by `SamplingConfig.decoder`: `static` (default:
clipgen's static-cache decoder, `clipgen.generation.decoder`), `hf` (Hugging Face GPT-2 with
its dynamic cache, the reference) and `recompute` (the whole sequence again at every step, as
some public implementations do). For the same seed and precision they sample the same tokens.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from clipgen.generation.decoder import (
    WEIGHT_FORMATS,
    StaticDecoder,
    decoder_weights,
    resolve_precision,
)
from clipgen.generation.int8_weights import INT8_FORMATS
from clipgen.generation.speculative import jacobi_decode
from clipgen.models.prior import CLIPPrior, Memory

DECODERS = ("static", "hf", "recompute")
SPECULATIVE = (None, "jacobi")


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # 0 means greedy
    top_k: int | None = None
    top_p: float | None = None
    guidance_scale: float = 1.0  # 1 = plain conditional sampling (no null rows)
    # [start, end) token positions where guidance applies (None: every position); after the
    # last guided position the static decoder drops the null rows
    guidance_interval: Sequence[int] | None = None
    decoder: str = "static"  # static, hf (reference) or recompute
    dtype: str = "auto"  # auto (bf16 where the hardware runs it fast), float32, bfloat16, float16
    compile: bool = False  # torch.compile the static decoder's step (CUDA graphs on GPU)
    # jacobi: speculative Jacobi decoding, `window` draft tokens per step, the same distribution
    speculative: str | None = None
    window: int = 16
    # linear weights: dtype (the sampling dtype), int8 (weight-only, per-channel scales),
    # int8_dynamic (CPU: int8 weights and activations, fbgemm; see `int8_weights`) or auto
    # (int8_dynamic on a CPU, else dtype: `resolve_precision`)
    weights: str = "dtype"

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (1 = no guidance, 0 = the null "
                             f"condition alone), got {self.guidance_scale}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.guidance_interval is not None:
            interval = list(self.guidance_interval)
            if len(interval) != 2 or not 0 <= interval[0] <= interval[1]:
                raise ValueError("guidance_interval must be [start, end) token positions with "
                                 f"0 <= start <= end, got {self.guidance_interval}")
            self.guidance_interval = interval
        if self.speculative not in SPECULATIVE:
            raise ValueError(f"speculative must be null or jacobi, got {self.speculative!r}")
        if self.speculative and (self.decoder != "static" or self.compile):
            raise ValueError("speculative=jacobi runs on the static decoder, uncompiled "
                             "(decoder=static, compile=false)")
        if self.window < 2:
            raise ValueError(f"window must be >= 2 draft tokens, got {self.window}")
        if self.compile and self.decoder != "static":
            raise ValueError("compile applies to the static decoder only (decoder=static)")
        if self.weights not in ("auto", *WEIGHT_FORMATS):
            raise ValueError(f"weights must be auto or one of {', '.join(WEIGHT_FORMATS)}, "
                             f"got {self.weights!r}")
        if self.weights in INT8_FORMATS and self.decoder != "static":
            raise ValueError(f"weights={self.weights} runs on the static decoder only "
                             "(decoder=static)")
        if self.weights == "int8_dynamic" and self.compile:
            raise ValueError("weights=int8_dynamic calls the quantized engine, which "
                             "torch.compile does not trace: set compile=false or weights=int8")

    def in_interval(self, position: int) -> bool:
        """Whether `position` lies in the guidance interval (every position when unset)."""
        if self.guidance_interval is None:
            return True
        start, end = self.guidance_interval
        return start <= position < end

    def last_in_interval(self, n_tokens: int) -> int:
        """The last position of the guidance interval (-1: none)."""
        if self.guidance_interval is None:
            return n_tokens - 1
        start, end = self.guidance_interval
        return min(end, n_tokens) - 1 if end > start else -1

    def guided_at(self, position: int) -> bool:
        """Whether guidance applies when sampling the token at `position`."""
        return self.guidance_scale != 1.0 and self.in_interval(position)

    def last_guided(self, n_tokens: int) -> int:
        """The last position that uses guidance (-1: none)."""
        return -1 if self.guidance_scale == 1.0 else self.last_in_interval(n_tokens)


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


def _candidates(logits: torch.Tensor, cfg: SamplingConfig
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fp32 logits a draw is made among, after temperature, top-k and top-p (-inf outside
    top-p), and with top-k the vocabulary index of each (None: the whole vocabulary). Top-k is
    taken before the temperature divides (the same k logits for any temperature > 0), so the
    division touches k values instead of the vocabulary."""
    def tempered(x: torch.Tensor) -> torch.Tensor:
        return x if cfg.temperature == 1.0 else x / cfg.temperature

    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        values, index = torch.topk(logits.float(), cfg.top_k, dim=-1)
        return filter_logits(tempered(values), top_p=cfg.top_p), index
    return filter_logits(tempered(logits.float()), top_p=cfg.top_p), None


def pick_tokens(logits: torch.Tensor, cfg: SamplingConfig,
                generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from (B, V) logits. With top-k, the draw is made among the k best
    logits only (the same distribution as masking the rest, without a softmax and a draw over
    the whole vocabulary)."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    values, index = _candidates(logits, cfg)
    choice = torch.multinomial(values.softmax(-1), 1, generator=generator)
    return choice.squeeze(-1) if index is None else index.gather(-1, choice).squeeze(-1)


def token_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The distribution `pick_tokens` draws from, for (..., V) logits: temperature, top-k and
    top-p applied; one-hot on the argmax at temperature 0."""
    if cfg.temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    values, index = _candidates(logits, cfg)
    probs = values.softmax(-1)
    if index is None:
        return probs
    return torch.zeros(logits.shape, dtype=probs.dtype, device=probs.device).scatter(
        -1, index, probs)


def composed_logits(logits: torch.Tensor, weights: torch.Tensor, with_null: bool = True
                    ) -> torch.Tensor:
    """A product of experts over the parts of B prompts (composable guidance, Liu et al. 2022,
    "Compositional Visual Generation with Composable Diffusion Models"): from logits of P blocks
    of B conditional rows (part-major) followed, `with_null`, by B null rows, and (B, P)
    weights, null + sum_i w_i (cond_i - null). Without null rows (outside the guidance
    interval) the weights are normalised to sum 1, where the null term cancels:
    sum_i (w_i / sum w) cond_i, and one part is its own logits (whatever its weight, 0 too).
    One part of weight s is classifier-free guidance at scale s."""
    b, p = weights.shape
    if p == 1 and not with_null:
        return logits[:b]
    weights = weights.to(logits.dtype)[..., None]
    parts = logits[:p * b].view(p, b, -1)
    if not with_null:
        return (weights / weights.sum(1, keepdim=True)).transpose(0, 1).mul(parts).sum(0)
    null = logits[p * b:(p + 1) * b]
    return null + (weights.transpose(0, 1) * (parts - null)).sum(0)


def null_term(weights: torch.Tensor) -> bool:
    """Whether the product of experts with these (B, P) part weights has a null term: it
    cancels where every row's weights sum to 1 (null + sum_i w_i (cond_i - null) is then
    sum_i w_i cond_i), and the null rows need not be computed."""
    return bool(((weights.sum(1) - 1).abs() > 1e-6).any())


def guided_logits(logits: torch.Tensor, b: int, scale: float) -> torch.Tensor:
    """null + scale * (cond - null) from (2B, V) logits whose first B rows are conditional."""
    return composed_logits(logits, torch.full((b, 1), float(scale), device=logits.device))


class _HFStepper:
    """Logits from the Hugging Face model: with its dynamic cache, or recomputing the whole
    sequence at every step."""

    def __init__(self, prior: CLIPPrior, prefix: torch.Tensor, cached: bool,
                 memory: Memory | None, prompts: int) -> None:
        """`prompts`: rows per block (the prefix holds blocks of parts and null rows)."""
        self.prior, self.prefix, self.cached, self.memory = prior, prefix, cached, memory
        self.prompts = prompts
        self.past: Any = None
        self.tokens = prefix.new_zeros((len(prefix), 0), dtype=torch.long)

    def first(self) -> torch.Tensor:
        if self.cached:
            logits, self.past = self.prior.step(self.prefix, memory=self.memory)
            return logits.float()
        return self.prior.full_logits(self.prefix, self.tokens, self.memory).float()

    def next(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        # the reference keeps every row (parts and null) to the end
        tokens = tokens[:self.prompts].repeat(len(self.prefix) // self.prompts)
        if self.cached:
            logits, self.past = self.prior.step(self.prior.token_embeddings(tokens)[:, None],
                                                self.past, self.memory)
            return logits.float()
        self.tokens = torch.cat([self.tokens, tokens[:, None]], dim=1)
        return self.prior.full_logits(self.prefix, self.tokens, self.memory).float()


class _StaticStepper:
    def __init__(self, prior: CLIPPrior, prefix: torch.Tensor, dtype: torch.dtype,
                 compile_step: bool, memory: Memory | None, weight_format: str = "dtype"
                 ) -> None:
        # one row: (in, out) weights times the row; more: (out, in) weights times the rows
        weights = decoder_weights(prior, dtype, prefix.device, out_in=len(prefix) > 1,
                                  weights=weight_format)
        total = prior.config.n_prefix + prior.config.n_tokens
        self.decoder = StaticDecoder(weights, len(prefix), total)
        if memory is not None:
            self.decoder.set_memory(memory)
        if compile_step:
            self.decoder.compile("reduce-overhead" if prefix.device.type == "cuda" else None)
        self.prefix = prefix

    def first(self) -> torch.Tensor:
        return self.decoder.prefill(self.prefix)

    def next(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        return self.decoder.step(tokens, position)


@torch.no_grad()
def sample_tokens(prior: CLIPPrior, cond: torch.Tensor, cfg: SamplingConfig | None = None,
                  generator: torch.Generator | None = None,
                  on_token: Callable[[int, torch.Tensor], None] | None = None,
                  part_weights: torch.Tensor | None = None,
                  stats: dict[str, Any] | None = None) -> torch.Tensor:
    """Sample (B, n_tokens) image tokens for B conditions: (B, cond_dim) CLIP embeddings, or
    (B, caption_length) caption token ids for a caption-conditioned prior.

    With guidance (scale != 1) the batch holds B conditional rows and B null rows; both get
    the same sampled token. Guidance applies at the positions `cfg.guidance_interval` names.
    With `part_weights` ((B, P), composable prompts), `cond` holds P conditions per prompt,
    (B, P, ...), and each token is drawn from `composed_logits` of the P parts and the null
    condition inside the guidance interval (the weights take the guidance scale's place), and
    of the P parts with normalised weights outside it. Where every prompt's weights sum to 1
    the null term cancels and no null rows are run.
    `on_token(i, tokens)` is called after position i is drawn (tokens beyond i are zero, or
    already drawn for some rows with speculative decoding). With `cfg.speculative="jacobi"`,
    `stats` (when given) gets the decode steps and the tokens made per step.
    """
    cfg = cfg or SamplingConfig()
    b, n, k = cond.shape[0], prior.config.n_tokens, prior.config.n_prefix
    if part_weights is None:
        weights, parts = torch.full((b, 1), float(cfg.guidance_scale)), cond
        last_guided = cfg.last_guided(n)
    else:
        weights, parts = part_weights.float(), cond.transpose(0, 1).flatten(0, 1)
        if weights.shape != cond.shape[:2]:
            raise ValueError(f"part_weights {tuple(weights.shape)} do not match the conditions' "
                             f"(prompts, parts) {tuple(cond.shape[:2])}")
        last_guided = cfg.last_in_interval(n) if null_term(weights) else -1
    weights = weights.to(cond.device)
    p = weights.shape[1]
    guided = last_guided >= 0
    # composed prompts use the null rows wherever the interval says (unless their weights
    # cancel the null term); plain ones only with a guidance scale
    uses_null = cfg.guided_at if part_weights is None else (
        cfg.in_interval if guided else lambda i: False)
    rows = torch.cat([parts, parts[:b]]) if guided else parts
    null_mask = None
    if guided:
        null_mask = torch.zeros(len(rows), dtype=torch.bool, device=cond.device)
        null_mask[p * b:] = True
    dtype, weight_format = resolve_precision(cfg.dtype, cfg.weights, cond.device, cfg.decoder,
                                             cfg.compile)
    cfg = replace(cfg, weights=weight_format)
    prefix = prior.prefix(rows, null_mask)
    memory = prior.memory(rows, null_mask)
    if cfg.speculative == "jacobi":
        null_at = torch.tensor([uses_null(i) for i in range(n + cfg.window)],
                               device=cond.device)
        return _jacobi_tokens(prior, prefix, memory, dtype, cfg, weights, null_at if guided
                              else None, generator, on_token, stats)
    autocast: Any = contextlib.nullcontext()
    if cfg.decoder == "static":
        stepper: Any = _StaticStepper(prior, prefix, dtype, cfg.compile, memory, cfg.weights)
    else:
        stepper = _HFStepper(prior, prefix, cached=cfg.decoder == "hf", memory=memory,
                             prompts=b)
        if dtype != torch.float32:
            autocast = torch.autocast(cond.device.type, dtype=dtype)
    out = torch.zeros(b, n, dtype=torch.long, device=cond.device)
    with autocast:
        logits = stepper.first()
        for i in range(n):
            step_logits = composed_logits(logits, weights, with_null=uses_null(i))
            tok = pick_tokens(step_logits, cfg, generator)
            out[:, i] = tok
            if on_token:
                on_token(i, out)
            if i == n - 1:
                break
            # null rows are needed while a later position is guided
            copies = p + 1 if i + 1 <= last_guided else p
            logits = stepper.next(tok if copies == 1 else tok.repeat(copies), k + i)
    return out


def _jacobi_tokens(prior: CLIPPrior, prefix: torch.Tensor, memory: Memory | None,
                   dtype: torch.dtype, cfg: SamplingConfig, weights: torch.Tensor,
                   null_at: torch.Tensor | None, generator: torch.Generator | None,
                   on_token: Callable[[int, torch.Tensor], None] | None,
                   stats: dict[str, Any] | None) -> torch.Tensor:
    """`sample_tokens` by speculative Jacobi decoding on the static decoder. `null_at[i]`:
    whether position i mixes in the null rows (None: the rows hold no null block)."""
    n, k = prior.config.n_tokens, prior.config.n_prefix
    b = len(weights)
    decoder = StaticDecoder(decoder_weights(prior, dtype, prefix.device, out_in=True,
                                            weights=cfg.weights),
                            len(prefix), k + n + cfg.window)
    if memory is not None:
        decoder.set_memory(memory)

    def combine(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        r, s, v = logits.shape
        flat = logits.reshape(r, s * v)
        plain = composed_logits(flat, weights, with_null=False)
        if null_at is None:
            return plain.view(b, s, v)
        mixed = composed_logits(flat, weights).view(b, s, v)
        return torch.where(null_at[positions][..., None], mixed, plain.view(b, s, v))

    return jacobi_decode(decoder, decoder.prefill(prefix), len(prefix) // b, n, k, cfg.window,
                         combine, lambda logits: token_probs(logits, cfg), generator, on_token,
                         stats)


def rerank(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores per row of (P, N) candidate scores, best first."""
    if keep > scores.shape[1]:
        raise ValueError(f"cannot keep {keep} of {scores.shape[1]} candidates")
    return torch.topk(scores, keep, dim=1).indices
