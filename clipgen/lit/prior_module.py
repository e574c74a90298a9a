"""Stage 2: the GPT-2 prior as a LightningModule, for each conditioning (CLIP image embeddings,
CLIP text embeddings of captions, caption tokens)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from clipgen.checkpoint import dataclass_from_dict, load_state_dict_strict
from clipgen.data.precomputed import PrecomputedDataset
from clipgen.generation.sampling import SamplingConfig, sample_tokens
from clipgen.lit.base import ClipgenModule
from clipgen.lit.optim import adamw_with_schedule, decay_groups
from clipgen.models.clip import FrozenCLIP
from clipgen.models.encoders import check_identity, encode_batch, encoder_identity
from clipgen.models.prior import CLIP_CONDITIONS, CLIPPrior, PriorConfig, load_prior
from clipgen.models.vqgan import VQGAN

log = logging.getLogger(__name__)


@dataclass
class PriorTrainConfig:
    """Objective and optimisation of stage 2."""

    emb_loss_weight: float = 0.2  # lambda of the embedding-reconstruction term (paper: 0.2)
    relaxation: str = "straight_through"  # or "gumbel"
    gumbel_tau: float = 1.0
    cond_noise: float = 0.0  # LAFITE-style Gaussian perturbation of the condition
    cond_drop: float = 0.1  # probability of the null condition (classifier-free guidance)
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 500
    max_steps: int = 100000
    sample_prompts: list[str] = field(default_factory=list)
    sampling: dict[str, Any] = field(default_factory=dict)
    activation_checkpointing: bool = False  # recompute GPT-2 block activations in backward
    # a stage-2 export (prior.safetensors) or checkpoint whose weights start this run
    # (fine-tuning: a fresh optimiser and schedule); the architecture and encoders must match
    init_from: str | None = None
    # accept an init_from prior trained on other weights of the same CLIP architecture (to
    # fine-tune it onto a retrained CLIP); the VQGAN must still be its own
    init_from_other_clip: bool = False


def perturb_condition(cond: torch.Tensor, level: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """LAFITE's perturbation of unit-norm conditions: add Gaussian noise of norm `level`,
    renormalise."""
    if level <= 0:
        return cond
    noise = torch.randn(cond.shape, generator=generator, device=cond.device, dtype=cond.dtype)
    return F.normalize(cond + level * F.normalize(noise, dim=-1), dim=-1)


def null_condition_mask(batch: int, rate: float, device: torch.device | str = "cpu",
                        generator: torch.Generator | None = None) -> torch.Tensor | None:
    """Rows that get the learned null condition, each with probability `rate`."""
    if rate <= 0:
        return None
    return torch.rand(batch, generator=generator, device=device) < rate


def draw_captions(captions: torch.Tensor, pad_id: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One caption index per row of (B, K, L) caption ids, uniform over each row's captions
    (rows of padding alone are not captions)."""
    present = (captions[:, :, 0] != pad_id).float()
    if not bool(present.sum(1).all()):
        raise ValueError("an image of the batch has no caption")
    return torch.multinomial(present, 1, generator=generator).squeeze(1)


def relaxed_one_hot(logits: torch.Tensor, relaxation: str, tau: float = 1.0) -> torch.Tensor:
    """Differentiable code choice from logits: straight-through argmax or hard Gumbel-softmax."""
    if relaxation == "straight_through":
        probs = logits.softmax(dim=-1)
        hard = F.one_hot(probs.argmax(dim=-1), probs.shape[-1]).to(probs.dtype)
        return hard + probs - probs.detach()
    if relaxation == "gumbel":
        return F.gumbel_softmax(logits, tau=tau, hard=True)
    raise ValueError(f"relaxation must be 'straight_through' or 'gumbel', got {relaxation!r}")


class FrozenEncoders:
    """The VQGAN and CLIP the prior is trained against: frozen, and kept out of the module tree
    so that stage-2 checkpoints hold only the prior (they record the encoders' fingerprints)."""

    def __init__(self, vqgan: VQGAN, clip: FrozenCLIP) -> None:
        self.vqgan = vqgan.eval().requires_grad_(False)
        self.clip = clip.eval().requires_grad_(False)

    def to(self, device: torch.device) -> FrozenEncoders:
        self.vqgan.to(device)
        self.clip.to(device)
        return self


class PriorModule(ClipgenModule):
    """Trains the prior against a frozen VQGAN and CLIP. Built by Hydra from
    `configs/stage/prior.yaml`; `prior` may leave out `vocab_size`, `n_tokens` and `cond_dim`,
    which are then read off the encoders."""

    stage = "prior"

    def __init__(self, prior: PriorConfig | Mapping[str, Any], vqgan: VQGAN, clip: FrozenCLIP,
                 train: PriorTrainConfig | Mapping[str, Any],
                 run_config: dict[str, Any] | None = None) -> None:
        super().__init__(run_config)
        self.identity = encoder_identity(vqgan, clip)
        if isinstance(prior, Mapping):
            derived = {k: self.identity[k] for k in ("vocab_size", "n_tokens", "cond_dim")}
            prior = PriorConfig.from_dict({**derived, **prior})
        if isinstance(train, Mapping):
            train = dataclass_from_dict(PriorTrainConfig, train, "prior training")
        for key, value in (("vocab_size", prior.vocab_size), ("n_tokens", prior.n_tokens),
                           ("cond_dim", prior.cond_dim)):
            if self.identity[key] != value:
                raise ValueError(f"prior {key}={value} but the encoders give "
                                 f"{self.identity[key]}")
        if prior.token_factors is not None:
            levels = (vqgan.config.quantizer_kwargs.get("levels")
                      if vqgan.config.quantizer == "fsq" else None)
            if levels is None or [int(n) for n in levels] != prior.token_factors:
                raise ValueError(f"model.prior.token_factors={prior.token_factors} factorises "
                                 "codes by an fsq tokenizer's levels, but this tokenizer is "
                                 f"quantizer={vqgan.config.quantizer!r} with levels {levels}: "
                                 "set token_factors to its levels, or null")
        if prior.reads_captions and train.cond_noise > 0:
            raise ValueError("cond_noise perturbs CLIP embeddings, and a caption-conditioned "
                             "prior (condition=text) reads none: set model.train.cond_noise=0")
        self.prior = CLIPPrior(prior)
        if train.init_from:
            self.start_from(train.init_from, vqgan, clip, train.init_from_other_clip)
        if train.activation_checkpointing:
            self.prior.gpt.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        self.encoders = FrozenEncoders(vqgan, clip)
        self.cfg = train
        self.sampling = SamplingConfig(**train.sampling)

    def start_from(self, path: str, vqgan: VQGAN, clip: FrozenCLIP,
                   other_clip: bool = False) -> None:
        """Copy the weights of the prior at `path` (checked against these encoders; with
        `other_clip`, the CLIP's architecture only) into this module's prior, which must have
        the same architecture."""
        start = load_prior(path, vqgan, clip, other_clip_weights=other_clip)
        differ = {k: (v, getattr(self.prior.config, k)) for k, v in vars(start.config).items()
                  if k != "dropout" and getattr(self.prior.config, k) != v}
        if differ:
            raise ValueError(
                f"model.train.init_from={path} has another architecture than model.prior ("
                + ", ".join(f"{k}: {a} there, {b} here" for k, (a, b) in differ.items())
                + "): set model/prior to the one it was trained with")
        load_state_dict_strict(self.prior, start.state_dict(), what=f"init_from {path}")
        log.info("prior weights start from %s", path)

    @property
    def tokens_per_sample(self) -> int:
        return self.prior.config.n_tokens

    # --- data ---------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.encoders.to(self.device)
        dm = self.trainer.datamodule
        for ds in (getattr(dm, "train_set", None), getattr(dm, "val_set", None)):
            if isinstance(ds, PrecomputedDataset):
                check_identity(ds.meta, self.identity, "precomputed cache")
                self.check_cache_captions(ds.meta)

    def check_cache_captions(self, meta: dict[str, Any]) -> None:
        """A prior trained on captions needs a cache that holds them, in its tokenizer."""
        config = self.prior.config
        if config.condition == "clip_image":
            return
        if "captions" not in meta:
            raise ValueError(f"condition={config.condition} trains on captions, and this cache "
                             "has none: rebuild it with precompute.py captions_per_image=<K> "
                             "flip=false")
        wanted = self.prior.tokenizer.record() if self.prior.tokenizer else None
        found = {k: meta["captions"][k] for k in ("tokenizer", "length")}
        if wanted is not None and found != wanted:
            raise ValueError(f"the cache's captions are {found}, the prior reads {wanted}: set "
                             f"model.prior.caption_length={found['length']} or rebuild the "
                             "cache with caption_length=" + str(wanted["length"]))

    def on_validation_start(self) -> None:
        self.encoders.to(self.device)

    def targets(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens, what the prior reads, CLIP image embeddings) from a precomputed batch, or
        by encoding its images (and captions) now. Where an image has several captions, one is
        drawn per visit."""
        condition = self.prior.config.condition
        if "tokens" in batch:
            tokens, image_emb = batch["tokens"].long(), batch["cond"].float()
            if condition == "clip_image":
                return tokens, image_emb, image_emb
            if "captions" not in batch:
                raise ValueError(f"condition={condition} needs a cache with captions")
            pick = draw_captions(batch["captions"])
            rows = torch.arange(len(pick), device=pick.device)
            if condition == "clip_text":
                return tokens, batch["caption_cond"][rows, pick].float(), image_emb
            return tokens, batch["captions"][rows, pick].long(), image_emb
        tokens, image_emb = encode_batch(batch["image"], self.encoders.vqgan, self.encoders.clip)
        if condition == "clip_image":
            return tokens, image_emb, image_emb
        with torch.no_grad():
            cond = self.prior.prompt_condition(list(batch["caption"]), self.encoders.clip)
        return tokens, cond, image_emb

    # --- objective ----------------------------------------------------------------------
    def embedding_loss(self, logits: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Cosine distance between the CLIP embedding of the decoded predicted tokens and the
        condition."""
        h, w = self.encoders.vqgan.token_grid()
        weights = relaxed_one_hot(logits.float(), self.cfg.relaxation, self.cfg.gumbel_tau)
        images = self.encoders.vqgan.decode_code_weights(weights.view(-1, h, w, weights.shape[-1]))
        emb = self.encoders.clip.encode_image(images)
        return (1 - (emb * cond).sum(dim=-1)).mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        if not batch:  # every sample of this batch was unreadable (skipped and counted)
            return None
        tokens, cond, image_emb = self.targets(batch)
        null_mask = null_condition_mask(len(tokens), self.cfg.cond_drop, self.device)
        if self.prior.config.condition in CLIP_CONDITIONS:
            cond = perturb_condition(cond, self.cfg.cond_noise)
        logits = self.prior(cond, tokens, null_mask)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
        loss = ce
        if self.cfg.emb_loss_weight > 0:
            keep = ~null_mask if null_mask is not None else slice(None)
            if null_mask is None or keep.any():
                emb = self.embedding_loss(logits[keep], image_emb[keep])
                loss = loss + self.cfg.emb_loss_weight * emb
                self.log("train/emb_loss", emb)
        self.log_dict({"train/loss": loss, "train/token_loss": ce}, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if not batch:  # every sample of this batch was unreadable (skipped and counted)
            return None
        tokens, cond, _ = self.targets(batch)
        logits = self.prior(cond, tokens)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
        acc = (logits.argmax(-1) == tokens).float().mean()
        self.log_dict({"val/token_loss": ce, "val/token_acc": acc}, prog_bar=True,
                      sync_dist=True, batch_size=len(tokens))

    def on_validation_epoch_end(self) -> None:
        if self.cfg.sample_prompts and self.trainer.is_global_zero:
            images = self.sample_images(self.cfg.sample_prompts, seed=0)
            self.log_image_grid("samples", images, nrow=min(8, len(images)))

    @torch.no_grad()
    def sample_images(self, prompts: list[str], seed: int = 0) -> torch.Tensor:
        """Decode one sample per prompt from its text (the inference path)."""
        cond = self.prior.prompt_condition(prompts, self.encoders.clip)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        tokens = sample_tokens(self.prior, cond, self.sampling, generator=gen)
        return self.encoders.vqgan.decode_tokens(tokens).clamp(-1, 1)

    def configure_optimizers(self) -> dict:
        groups = decay_groups(self.prior.named_parameters(), self.cfg.weight_decay,
                              exclude=("null_prefix", "start"))
        return adamw_with_schedule(groups, self.cfg.lr, tuple(self.cfg.betas),
                                   self.cfg.warmup_steps, self.cfg.max_steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["clipgen"]["encoders"] = self.identity
        checkpoint["clipgen"]["prior"] = self.prior.config.to_dict()
