"""Stage 2: a Hugging Face GPT-2 that models p(image tokens | condition).

Three conditionings (`PriorConfig.condition`):
- `clip_image` (CLIP-GEN, language-free): trained on CLIP image embeddings, sampled from CLIP
  text embeddings. The embedding is projected to `n_prefix` input embeddings, followed by the
  image tokens in raster order; a learned null prefix replaces it for classifier-free guidance.
- `clip_text`: the same model trained on the CLIP text embeddings of captions (supervised,
  through CLIP).
- `text` (DALL-E mini style, supervised): a `transformers` BERT encoder trained from scratch
  over the caption's byte tokens, read by every GPT-2 block through cross-attention; the prefix
  is a learned start embedding and the empty caption is the null condition.
The vocabulary is the VQGAN codebook.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

from clipgen.checkpoint import (
    LEGACY_STAGE_NAMES,
    clipgen_metadata,
    dataclass_from_dict,
    load_safetensors,
    load_state_dict_strict,
    load_torch_file,
    strip_prefix,
)
from clipgen.models.caption_tokens import CaptionTokenizer
from clipgen.models.clip import FrozenCLIP
from clipgen.models.encoders import check_identity, encoder_identity
from clipgen.models.factorised_tokens import FactorisedEmbedding, TiedFactorisedHead
from clipgen.models.vqgan import VQGAN

CONDITIONS = ("clip_image", "clip_text", "text")
CLIP_CONDITIONS = ("clip_image", "clip_text")


@dataclass
class PriorConfig:
    """Size and conditioning of the prior. `vocab_size` is the VQGAN codebook size, `n_tokens`
    its token grid (h*w), `cond_dim` the CLIP embedding dimension; `text_layers` and
    `caption_length` size the caption encoder of `condition="text"` (its width and heads are
    the GPT-2's)."""

    vocab_size: int = 16384
    n_tokens: int = 256
    cond_dim: int = 512
    n_prefix: int = 1
    n_layer: int = 24
    n_embd: int = 1024
    n_head: int = 16
    dropout: float = 0.0
    condition: str = "clip_image"
    text_layers: int = 2
    caption_length: int = 64
    # an fsq tokenizer's levels: token embeddings and the tied head summed over each code's
    # levels (`factorised_tokens`); None: one learnt vector per code
    token_factors: list[int] | None = None

    def __post_init__(self) -> None:
        if self.condition not in CONDITIONS:
            raise ValueError(f"prior condition must be one of {', '.join(CONDITIONS)}, got "
                             f"{self.condition!r}")
        if self.token_factors is not None:
            factors = [int(f) for f in self.token_factors]
            if any(f < 2 for f in factors) or math.prod(factors) != self.vocab_size:
                raise ValueError(f"token_factors {factors} must each be >= 2 and multiply to "
                                 f"vocab_size={self.vocab_size}: give the fsq tokenizer's "
                                 "levels (its quantizer_kwargs.levels)")
            self.token_factors = factors
        if self.condition == "text" and self.text_layers < 1:
            raise ValueError("a caption-conditioned prior needs text_layers >= 1")

    @property
    def reads_captions(self) -> bool:
        """Whether the prior reads caption tokens (else a CLIP embedding)."""
        return self.condition == "text"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PriorConfig:
        return dataclass_from_dict(cls, d, "prior")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Memory = tuple[torch.Tensor, torch.Tensor]  # (B, L, n_embd) caption states, (B, L) mask


class CLIPPrior(nn.Module):
    """GPT-2 over [condition prefix, image tokens]; with `condition="text"`, also a caption
    encoder that every block attends to."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}")
        self.config = config
        gpt_config = GPT2Config(
            vocab_size=config.vocab_size, n_positions=config.n_prefix + config.n_tokens,
            n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
            resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
            bos_token_id=None, eos_token_id=None, tie_word_embeddings=True,
            add_cross_attention=config.reads_captions)
        gpt_config._attn_implementation = "sdpa"
        self.gpt = GPT2LMHeadModel(gpt_config)
        if config.token_factors is not None:
            wte = FactorisedEmbedding(config.token_factors, config.n_embd)
            self.gpt.transformer.wte = wte
            self.gpt.lm_head = TiedFactorisedHead(wte)
        self.tokenizer: CaptionTokenizer | None = None
        if config.reads_captions:
            self.tokenizer = CaptionTokenizer(config.caption_length)
            self.empty_caption = self.tokenizer.encode([""])  # the null condition's ids
            text_config = BertConfig(
                vocab_size=self.tokenizer.vocab_size, hidden_size=config.n_embd,
                num_hidden_layers=config.text_layers, num_attention_heads=config.n_head,
                intermediate_size=4 * config.n_embd,
                max_position_embeddings=config.caption_length, type_vocab_size=1,
                hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout,
                pad_token_id=self.tokenizer.pad_id)
            text_config._attn_implementation = "sdpa"
            self.text_encoder = BertModel(text_config, add_pooling_layer=False)
            self.start = nn.Parameter(0.02 * torch.randn(config.n_prefix, config.n_embd))
        else:
            self.cond_proj = nn.Linear(config.cond_dim, config.n_prefix * config.n_embd)
            self.null_prefix = nn.Parameter(0.02 * torch.randn(config.n_prefix, config.n_embd))

    def prompt_condition(self, prompts: list[str], clip: FrozenCLIP) -> torch.Tensor:
        """What this prior reads for text prompts: caption token ids, or CLIP text
        embeddings."""
        if self.tokenizer is not None:
            return self.tokenizer.encode(prompts).to(self.start.device)
        return clip.encode_text(prompts)

    def memory(self, cond: torch.Tensor, null_mask: torch.Tensor | None = None
               ) -> Memory | None:
        """The encoded captions the blocks attend to (None for CLIP conditionings). Rows where
        `null_mask` is True read the empty caption (the null condition)."""
        if self.tokenizer is None:
            return None
        if cond.dtype.is_floating_point or cond.shape[1] != self.config.caption_length:
            raise ValueError(f"a caption-conditioned prior reads (B, {self.config.caption_length}"
                             f") caption token ids, got a {cond.dtype} tensor of shape "
                             f"{tuple(cond.shape)} (a CLIP embedding?)")
        ids = cond
        if null_mask is not None:
            ids = torch.where(null_mask.view(-1, 1), self.empty_caption.to(cond.device), cond)
        mask = self.tokenizer.mask(ids)
        states = self.text_encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return states, mask

    def prefix(self, cond: torch.Tensor, null_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, cond_dim) conditions to (B, n_prefix, n_embd); rows where `null_mask` is True
        get the learned null prefix instead. A caption-conditioned prior starts every row with
        its learned start embedding."""
        b = cond.shape[0]
        if self.tokenizer is not None:
            return self.start.expand(b, -1, -1)
        if not cond.dtype.is_floating_point:
            raise ValueError("this prior reads CLIP embeddings, not caption token ids")
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
        prefix = self.prefix(cond, null_mask)
        # the table's dtype without building a factorised table whole
        dtype = next(self.gpt.transformer.wte.parameters()).dtype
        inputs = torch.cat([prefix.to(dtype),
                            self.gpt.transformer.wte(tokens[:, :-1])], dim=1)
        hidden = self.gpt.transformer(inputs_embeds=inputs, use_cache=False,
                                      **self._cross(self.memory(cond, null_mask))
                                      ).last_hidden_state
        return self.gpt.lm_head(hidden[:, k - 1:])

    @staticmethod
    def _cross(memory: Memory | None) -> dict[str, torch.Tensor]:
        if memory is None:
            return {}
        return {"encoder_hidden_states": memory[0], "encoder_attention_mask": memory[1].long()}

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.gpt.transformer.wte(tokens)

    def step(self, inputs_embeds: torch.Tensor, past: Any = None, memory: Memory | None = None
             ) -> tuple[torch.Tensor, Any]:
        """One cached decoding step: logits of the last position and the updated cache."""
        out = self.gpt(inputs_embeds=inputs_embeds, past_key_values=past, use_cache=True,
                       **self._cross(memory))
        return out.logits[:, -1], out.past_key_values

    def flops_per_token(self, context: int) -> float:
        """Forward FLOPs of one token attending to `context` positions: 2 x (non-embedding
        weights + output head) plus attention scores and weighted sums."""
        c = self.config
        block = 12 * c.n_embd ** 2
        attention = 2 * c.n_embd * context
        if c.reads_captions:  # query and output projections, attention over the caption
            block += 2 * c.n_embd ** 2
            attention += 2 * c.n_embd * c.caption_length
        head = c.n_embd * c.vocab_size
        return 2 * (c.n_layer * block + head) + c.n_layer * 2 * attention

    def sampling_flops(self, batch: int, cached: bool = True) -> float:
        """Model FLOPs of sampling every token of `batch` rows: with a key/value cache each
        position runs once; without one, every step reruns the prefix and tokens so far."""
        total = self.config.n_prefix + self.config.n_tokens
        if cached:
            return batch * sum(self.flops_per_token(t) for t in range(1, total))
        return batch * sum(sum(self.flops_per_token(t) for t in range(1, length + 1))
                           for length in range(self.config.n_prefix, total))

    def full_logits(self, prefix: torch.Tensor, tokens: torch.Tensor,
                    memory: Memory | None = None) -> torch.Tensor:
        """Logits of the next token after [prefix, tokens], recomputing the whole sequence
        (no cache)."""
        inputs = torch.cat([prefix, self.gpt.transformer.wte(tokens)], dim=1)
        return self.gpt(inputs_embeds=inputs, use_cache=False,
                        **self._cross(memory)).logits[:, -1]


def load_prior(path: str | Path, vqgan: VQGAN, clip: FrozenCLIP,
               condition: str | None = None, other_clip_weights: bool = False) -> CLIPPrior:
    """The prior of a stage-2 checkpoint (`.ckpt`) or export (`prior.safetensors` with its
    `prior.yaml`), checked against the VQGAN and CLIP it will be used with: a prior means
    nothing with another tokenizer or CLIP. With `condition`, a prior trained on another
    conditioning is refused. `other_clip_weights` (fine-tuning onto a retrained CLIP) accepts
    other weights of the same CLIP architecture; everything else is still checked."""
    path = Path(path)
    if path.suffix == ".safetensors":
        sidecar = path.with_suffix(".yaml")
        if not path.is_file() or not sidecar.is_file():
            raise FileNotFoundError(f"stage-2 weights {path} and {sidecar} are both needed")
        meta = OmegaConf.to_container(OmegaConf.load(sidecar), resolve=True)
        stage = LEGACY_STAGE_NAMES.get(meta.get("stage"), meta.get("stage"))
        if stage not in (None, "prior") or "encoders" not in meta:
            what = f"a {stage} export" if stage else f"no stage-2 export ({sidecar.name} " \
                "names no encoders)"
            raise ValueError(f"{path} is {what}, not a stage-2 one: prior= takes the "
                             "prior.safetensors of a bundle or a stage-2 checkpoint")
        arch, encoders, state = meta["arch"], meta["encoders"], load_safetensors(path)
    else:
        checkpoint = load_torch_file(path)
        meta = clipgen_metadata(checkpoint, path)
        if meta["stage"] != "prior":
            raise ValueError(f"{path} is a {meta['stage']!r} checkpoint, not a stage-2 one")
        arch, encoders = meta["prior"], meta["encoders"]
        state = strip_prefix(checkpoint["state_dict"], "prior.")
    expected = encoder_identity(vqgan, clip)
    if other_clip_weights:
        del expected["clip"]
    check_identity(encoders, expected, f"stage-2 weights {path}")
    config = PriorConfig.from_dict(arch)
    if condition is not None and config.condition != condition:
        raise ValueError(f"stage-2 weights {path} were trained with condition="
                         f"{config.condition}, not {condition}: use a prior trained for "
                         f"{condition}, or drop the requirement")
    prior = CLIPPrior(config)
    load_state_dict_strict(prior, state, what=f"stage-2 weights {path.name}")
    return prior.eval().requires_grad_(False)
