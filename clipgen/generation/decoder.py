"""A static-cache decoder over the prior's GPT-2 weights, for sampling.

The prior stays a Hugging Face `GPT2LMHeadModel` for training and loading; sampling reads its
weights into this decoder once (cast to the sampling precision, laid out for small batches)
and runs GPT-2's forward pass by hand: key/value caches preallocated for the whole sequence,
one prefill of the condition prefix, then one decode step per token that writes its key and
value into the cache in place. Same arithmetic as Hugging Face's GPT-2 (pre-LayerNorm blocks,
tanh-GELU, tied output head), without its per-token Python overhead. For a caption-conditioned
prior, the caption's keys and values are projected once per layer (`set_memory`) and every
step attends to them after its self-attention, as Hugging Face's cross-attention blocks do.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from clipgen.generation.int8_weights import INT8_FORMATS, Int8Weight, int8_weight
from clipgen.models.prior import CLIPPrior, Memory
from clipgen.run_info import cpu_has_fast_bf16

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# `dtype`: the linear weights in the sampling dtype; else an int8 format (`int8_weights`)
WEIGHT_FORMATS = ("dtype", *INT8_FORMATS)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The sampling precision: `auto` is bf16 where the hardware runs it fast (GPUs with bf16,
    CPUs with AMX or AVX512-BF16) and fp32 elsewhere; `float16` only on GPUs."""
    if name == "auto":
        if device.type == "cuda":
            chosen, why = (("bfloat16", "GPU") if torch.cuda.is_bf16_supported()
                           else ("float16", "GPU without bf16"))
        elif device.type == "cpu" and cpu_has_fast_bf16():
            chosen, why = "bfloat16", "CPU with native bf16 (AMX / AVX512-BF16)"
        else:
            chosen, why = "float32", f"{device.type} without native bf16"
        _log_choice(chosen, why)
        name = chosen
    if name not in DTYPES:
        raise ValueError(f"sampling dtype must be auto, {', '.join(DTYPES)}; got {name!r}")
    if name == "float16" and device.type != "cuda":
        raise ValueError("sampling.dtype=float16 needs a GPU; use float32 or bfloat16 on CPU")
    return DTYPES[name]


@cache
def _log_choice(dtype: str, why: str) -> None:
    log.info("sampling precision: %s (%s; set sampling.dtype to choose)", dtype, why)


def resolve_precision(dtype: str, weights: str, device: torch.device, decoder: str = "static",
                      compiled: bool = False) -> tuple[torch.dtype, str]:
    """The sampling dtype and weight format. Weights `auto` are `int8_dynamic` on a CPU (the
    uncompiled static decoder; the fastest CPU setting measured, docs/BENCHMARKS.md), with
    fp32 activations when the dtype is `auto` too; elsewhere the weights stay in the sampling
    dtype."""
    if weights == "auto":
        dynamic = device.type == "cpu" and decoder == "static" and not compiled
        weights = "int8_dynamic" if dynamic else "dtype"
        _log_weights(weights, device.type)
        if dynamic and dtype == "auto":
            return torch.float32, weights
    return resolve_dtype(dtype, device), weights


@cache
def _log_weights(weights: str, device_type: str) -> None:
    log.info("sampling weights: %s on %s (set sampling.weights to choose)", weights,
             device_type)


@dataclass
class DecoderWeights:
    """GPT-2's weights as the decoder uses them, in one dtype. `out_in`: linear weights stored
    (out, in) and multiplied from the left, the faster form for a few rows; otherwise (in, out)
    and multiplied from the right, the faster form for a single row (measured with the CPU's
    BLAS, docs/BENCHMARKS.md)."""

    layers: list[dict[str, torch.Tensor]]
    wte: torch.Tensor  # (vocab, n_embd): token embeddings
    head: torch.Tensor  # the tied output head in the layout below
    wpe: torch.Tensor  # (positions, n_embd)
    ln_f: tuple[torch.Tensor, torch.Tensor]
    n_head: int
    eps: float
    out_in: bool = True

    def linear(self, x: torch.Tensor, weight: torch.Tensor | Int8Weight,
               bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, in) through a linear layer stored in this layout."""
        if isinstance(weight, Int8Weight):
            return weight.linear(x, bias)
        if not self.out_in:
            return torch.mm(x, weight) if bias is None else torch.addmm(bias, x, weight)
        if bias is None:
            return torch.mm(weight, x.t()).t()
        return torch.addmm(bias[:, None], weight, x.t()).t()

    @property
    def n_embd(self) -> int:
        return self.wte.shape[1]

    def step_bytes(self) -> int:
        """Bytes of weights one decode step reads: every block's weights, biases and norms but
        the caption's key/value projection (run once per decode), the final norm and the
        output head; the embeddings are gathered a row per token."""
        def nbytes(t: torch.Tensor | Int8Weight) -> int:
            return t.nbytes if isinstance(t, Int8Weight) else t.numel() * t.element_size()

        per_layer = sum(nbytes(t) for layer in self.layers for name, t in layer.items()
                        if name not in ("xkv_w", "xkv_b"))
        return per_layer + nbytes(self.head) + sum(nbytes(t) for t in self.ln_f)

    def cache_read_bytes(self, rows: int, n_prefix: int, n_tokens: int) -> int:
        """Bytes of keys and values a plain decode of `rows` rows reads from the cache: the
        prefill attends over its n_prefix positions, then the step that feeds token i over
        n_prefix + i + 1 positions, in every layer (self-attention only)."""
        positions = n_prefix + sum(n_prefix + i + 1 for i in range(n_tokens - 1))
        return 2 * len(self.layers) * rows * positions * self.n_embd * self.wte.element_size()


_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def decoder_weights(prior: CLIPPrior, dtype: torch.dtype, device: torch.device,
                    out_in: bool = True, weights: str = "dtype") -> DecoderWeights:
    """The prior's weights prepared for decoding (`weights`: one of `WEIGHT_FORMATS`), cached
    until the prior's parameters change (their version counters move with every in-place
    update, e.g. an optimiser step): int8 weights are quantised once per prior and format."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"sampling.weights must be one of {', '.join(WEIGHT_FORMATS)}, "
                         f"got {weights!r}")
    quantised = weights != "dtype"
    out_in = out_in or quantised  # int8 kernels take (out, in)
    key = (dtype, str(device), out_in, weights, tuple(p._version for p in prior.parameters()))
    cached = _PREPARED.setdefault(prior, {})
    for old in [k for k in cached if k[:4] == key[:4] and k != key]:
        del cached[old]  # stale: the parameters changed since
    if key in cached:
        return cached[key]

    def cast(t: torch.Tensor, transpose: bool = False) -> torch.Tensor | Int8Weight:
        """A bias or norm (1-d) in the sampling dtype; a linear weight stored (in, out), as
        Hugging Face's Conv1D keeps it, in the layout or int8 format asked for."""
        if quantised and t.ndim == 2:
            return int8_weight(t.detach().t(), weights, dtype, device)
        t = t.detach().to(device=device, dtype=dtype)
        return t.t().contiguous() if transpose else t.contiguous()

    gpt = prior.gpt.transformer
    layers = []
    for block in gpt.h:
        # Hugging Face's Conv1D stores (in, out)
        cross = {}
        if hasattr(block, "crossattention"):
            x = block.crossattention
            cross = {"lnx_w": cast(block.ln_cross_attn.weight),
                     "lnx_b": cast(block.ln_cross_attn.bias),
                     "xq_w": cast(x.q_attn.weight, out_in), "xq_b": cast(x.q_attn.bias),
                     "xkv_w": cast(x.c_attn.weight, out_in), "xkv_b": cast(x.c_attn.bias),
                     "xproj_w": cast(x.c_proj.weight, out_in), "xproj_b": cast(x.c_proj.bias)}
        layers.append({**cross,
            "ln1_w": cast(block.ln_1.weight), "ln1_b": cast(block.ln_1.bias),
            "qkv_w": cast(block.attn.c_attn.weight, out_in),
            "qkv_b": cast(block.attn.c_attn.bias),
            "proj_w": cast(block.attn.c_proj.weight, out_in),
            "proj_b": cast(block.attn.c_proj.bias),
            "ln2_w": cast(block.ln_2.weight), "ln2_b": cast(block.ln_2.bias),
            "fc_w": cast(block.mlp.c_fc.weight, out_in), "fc_b": cast(block.mlp.c_fc.bias),
            "out_w": cast(block.mlp.c_proj.weight, out_in),
            "out_b": cast(block.mlp.c_proj.bias),
        })
    def table(t: torch.Tensor) -> torch.Tensor:  # an embedding table, never quantised
        return t.detach().to(device=device, dtype=dtype).contiguous()

    wte = table(gpt.wte.weight)
    if quantised:  # the tied head: the (vocab, n_embd) table is its (out, in) weight
        head: torch.Tensor | Int8Weight = int8_weight(gpt.wte.weight.detach(), weights, dtype,
                                                      device)
    else:
        head = wte if out_in else cast(gpt.wte.weight, True)
    prepared = DecoderWeights(layers, wte, head, table(gpt.wpe.weight),
                              (cast(gpt.ln_f.weight), cast(gpt.ln_f.bias)),
                              prior.gpt.config.n_head, prior.gpt.config.layer_norm_epsilon,
                              out_in)
    cached[key] = prepared
    return prepared


class StaticDecoder:
    """GPT-2 decoding of `rows` sequences of up to `length` positions over preallocated
    key/value caches. `prefill` runs the prefix; `step` runs one token per row. With
    `static_shapes`, a step attends over the whole cache under a mask and takes its position
    as a tensor, so that its shapes never change (what `torch.compile` and CUDA graphs need)."""

    def __init__(self, weights: DecoderWeights, rows: int, length: int,
                 static_shapes: bool = False) -> None:
        w = weights
        self.w = w
        self.head_dim = w.n_embd // w.n_head
        shape = (len(w.layers), rows, w.n_head, length, self.head_dim)
        self.keys = torch.zeros(shape, dtype=w.wte.dtype, device=w.wte.device)
        self.values = torch.zeros_like(self.keys)
        self.positions = torch.arange(length, device=w.wte.device)
        self.static_shapes = static_shapes
        self.step_fn = self._step
        # per layer (rows, heads, L, head_dim) caption keys and values, and the (rows, 1, 1, L)
        # mask of caption positions (None: no cross-attention)
        self.memory_keys: list[torch.Tensor] = []
        self.memory_values: list[torch.Tensor] = []
        self.memory_mask: torch.Tensor | None = None

    def set_memory(self, memory: Memory) -> None:
        """Project the (rows, L, D) caption states to every layer's cross-attention keys and
        values, once for the whole decode."""
        w, hd = self.w, self.head_dim
        if "xkv_w" not in w.layers[0]:
            raise ValueError("this prior has no cross-attention: it reads no captions")
        states, mask = memory
        b, n, d = states.shape
        states = states.to(w.wte.dtype).reshape(b * n, d)
        self.memory_keys, self.memory_values = [], []
        for layer in w.layers:
            kv = w.linear(states, layer["xkv_w"], layer["xkv_b"])
            k, v = kv.view(b, n, 2, w.n_head, hd).permute(2, 0, 3, 1, 4)
            self.memory_keys.append(k.contiguous())
            self.memory_values.append(v.contiguous())
        self.memory_mask = mask.view(b, 1, 1, n)

    def _cross_attention(self, x: torch.Tensor, i: int, n_rows: int) -> torch.Tensor:
        """Layer i's cross-attention from x (n_rows, S, D) to the caption, with its residual."""
        w, layer = self.w, self.w.layers[i]
        b, s, d = x.shape
        h = F.layer_norm(x, (d,), layer["lnx_w"], layer["lnx_b"], w.eps)
        q = w.linear(h.reshape(b * s, d), layer["xq_w"], layer["xq_b"])
        q = q.view(b, s, w.n_head, self.head_dim).transpose(1, 2)
        att = F.scaled_dot_product_attention(q, self.memory_keys[i][:n_rows],
                                             self.memory_values[i][:n_rows],
                                             attn_mask=self.memory_mask[:n_rows])
        att = att.transpose(1, 2).reshape(b * s, d)
        return x + w.linear(att, layer["xproj_w"], layer["xproj_b"]).view(b, s, d)

    def compile(self, mode: str | None = None) -> None:
        """Compile the decode step (`mode="reduce-overhead"` for CUDA graphs on GPU)."""
        self.static_shapes = True
        self.step_fn = torch.compile(self._step, mode=mode, dynamic=False)

    def _blocks(self, x: torch.Tensor, start: int | torch.Tensor, n_rows: int) -> torch.Tensor:
        """Run the transformer blocks on x (n_rows, S, D) at positions start..start+S-1 (an
        int; a 0-d tensor for static shapes; or (n_rows, S) positions, a window per row),
        writing keys and values into the cache; return the hidden states."""
        w, hd = self.w, self.head_dim
        b, s, d = x.shape
        mask = None
        windows = isinstance(start, torch.Tensor) and start.ndim == 2
        if windows:  # (rows, S) positions: each row's window where it stands
            used = int(start.max()) + 1
            if used > self.keys.shape[3]:
                raise ValueError(f"window reaches position {used - 1} of a "
                                 f"{self.keys.shape[3]}-position cache")
            rows = torch.arange(b, device=x.device)[:, None]
            mask = (self.positions[:used].view(1, 1, 1, -1) <= start[:, None, :, None])
        elif isinstance(start, torch.Tensor):  # static shapes: one position, whole cache
            mask = (self.positions <= start).view(1, 1, 1, -1)
        for i, layer in enumerate(w.layers):
            h = F.layer_norm(x, (d,), layer["ln1_w"], layer["ln1_b"], w.eps)
            qkv = w.linear(h.reshape(b * s, d), layer["qkv_w"], layer["qkv_b"])
            q, k, v = qkv.view(b, s, 3, w.n_head, hd).permute(2, 0, 3, 1, 4)
            cache_k, cache_v = self.keys[i, :n_rows], self.values[i, :n_rows]
            if windows:
                cache_k[rows, :, start] = k.transpose(1, 2)
                cache_v[rows, :, start] = v.transpose(1, 2)
                att = F.scaled_dot_product_attention(q, cache_k[:, :, :used],
                                                     cache_v[:, :, :used], attn_mask=mask)
            elif mask is not None:
                cache_k.index_copy_(2, start.view(1), k)
                cache_v.index_copy_(2, start.view(1), v)
                att = F.scaled_dot_product_attention(q, cache_k, cache_v, attn_mask=mask)
            else:
                cache_k[:, :, start:start + s] = k
                cache_v[:, :, start:start + s] = v
                att = F.scaled_dot_product_attention(
                    q, cache_k[:, :, :start + s], cache_v[:, :, :start + s], is_causal=s > 1)
            att = att.transpose(1, 2).reshape(b * s, d)
            x = x + w.linear(att, layer["proj_w"], layer["proj_b"]).view(b, s, d)
            if self.memory_keys:
                x = self._cross_attention(x, i, n_rows)
            h = F.layer_norm(x, (d,), layer["ln2_w"], layer["ln2_b"], w.eps)
            ff = F.gelu(w.linear(h.reshape(b * s, d), layer["fc_w"], layer["fc_b"]),
                        approximate="tanh")
            x = x + w.linear(ff, layer["out_w"], layer["out_b"]).view(b, s, d)
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, D) last hidden states to (rows, vocab) fp32 logits through the tied head."""
        h = F.layer_norm(x, (x.shape[-1],), *self.w.ln_f, self.w.eps)
        return self.w.linear(h, self.w.head).float()

    def prefill(self, prefix: torch.Tensor) -> torch.Tensor:
        """Run the (rows, n_prefix, D) condition prefix from position 0; logits of its last
        position."""
        n = prefix.shape[1]
        x = prefix.to(self.w.wte.dtype) + self.w.wpe[:n]
        return self._logits(self._blocks(x, 0, len(x))[:, -1])

    def _step(self, tokens: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
        if isinstance(position, torch.Tensor):  # a tensor index, not a Python number: no sync
            pos_emb = self.w.wpe.index_select(0, position.view(1))
        else:
            pos_emb = self.w.wpe[position]
        x = (self.w.wte[tokens] + pos_emb)[:, None]
        return self._logits(self._blocks(x, position, len(tokens))[:, 0])

    def window(self, tokens: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """Feed each row's window of S tokens ((rows, S)) at positions starts[r], starts[r] +
        1, ... (rows may stand at different positions); (rows, S, vocab) logits of the token
        after each. Each position sees the cache up to itself, so the entries a row wrote past
        its window earlier are never read, only overwritten. Positions past the model's last
        one (a window running off the end) reuse the last position embedding: their outputs
        are not meant to be used."""
        b, s = tokens.shape
        positions = starts[:, None] + torch.arange(s, device=tokens.device)
        x = self.w.wte[tokens] + self.w.wpe[positions.clamp(max=len(self.w.wpe) - 1)]
        hidden = self._blocks(x, positions, b)
        return self._logits(hidden.reshape(b * s, -1)).view(b, s, -1)

    def step(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """Feed one token per row (the first len(tokens) rows of the cache) at `position`;
        logits of the next token."""
        if self.static_shapes:
            pos = self.positions[position]
            return self.step_fn(tokens, pos)
        return self.step_fn(tokens, position)
