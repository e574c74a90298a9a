"""Tiny, randomly initialised encoders written to files, for stage-2 and sampling tests."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from clipgen.checkpoint import save_safetensors
from clipgen.models.clip import FrozenCLIP
from clipgen.models.vqgan import VQGAN, VQGANConfig

TINY_VQGAN = dict(resolution=16, ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[],
                  z_channels=32, n_embed=24, embed_dim=8, quantizer="l2", norm_groups=8)
CLIP_ARCH = "clipgen-shapes-vit-tiny"


class PicklePayload:
    """Pickles to a call of os.system that creates `marker`: loading must never run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def save_lightning1_checkpoint(state_dict: dict, path: Path, hyper_parameters=None,
                               **save_kwargs) -> None:
    """`state_dict` saved the way taming's public files are: a whole Lightning 1.x training
    checkpoint (callbacks keyed by the ModelCheckpoint class, optimizer states, hparams)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    params = [t for t in state_dict.values() if t.is_floating_point()]
    opt = torch.optim.Adam([torch.nn.Parameter(t.clone()) for t in params], lr=4.5e-6,
                           betas=(0.5, 0.9))
    sum(p.sum() for group in opt.param_groups for p in group["params"]).backward()
    opt.step()
    torch.save({"epoch": 1, "global_step": 7, "pytorch-lightning_version": "1.0.8",
                "state_dict": state_dict,
                "callbacks": {ModelCheckpoint: {"monitor": "val/rec_loss",
                                                "best_model_score": torch.tensor(0.12),
                                                "best_model_path": "logs/ckpts/epoch=1.ckpt"}},
                "optimizer_states": [opt.state_dict()], "lr_schedulers": [],
                "hparams_name": "kwargs",
                "hyper_parameters": hyper_parameters or OmegaConf.create({})},
               path, **save_kwargs)


TINY_FSQ_LEVELS = [2, 3, 4]  # 24 codes, as TINY_VQGAN's
TINY_FSQ_VQGAN = {**TINY_VQGAN, "quantizer": "fsq", "embed_dim": 3,
                  "quantizer_kwargs": {"levels": TINY_FSQ_LEVELS}}


def write_tiny_encoders(folder: Path, seed: int = 0, fsq: bool = False) -> tuple[Path, Path]:
    """A random tiny VQGAN (16 px, 8x8 tokens, 24 codes; `fsq`: finite scalar quantisation)
    and the tiny Shapes CLIP, saved as `vqgan.safetensors` (+ `vqgan.yaml`) and `clip.pt` in
    `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    arch = TINY_FSQ_VQGAN if fsq else TINY_VQGAN
    vqgan = VQGAN(VQGANConfig.from_dict(arch))
    save_safetensors(vqgan.state_dict(), folder / "vqgan.safetensors")
    OmegaConf.save(OmegaConf.create({"stage": "vqgan", "arch": arch}), folder / "vqgan.yaml")
    clip = FrozenCLIP(CLIP_ARCH, pretrained=None, random_weights=True)
    torch.save(clip.model.state_dict(), folder / "clip.pt")
    return folder / "vqgan.safetensors", folder / "clip.pt"


def write_tiny_bundle(folder: Path, seed: int = 0, fsq: bool = False) -> Path:
    """A complete random bundle (vqgan, clip, prior exports) in `folder`; with `fsq`, an fsq
    tokenizer and a prior with token embeddings factorised over its levels."""
    from clipgen.models.encoders import encoder_identity
    from clipgen.models.prior import CLIPPrior, PriorConfig
    from clipgen.models.vqgan import load_vqgan

    vq_path, clip_path = write_tiny_encoders(folder, seed, fsq)
    clip = FrozenCLIP(CLIP_ARCH, str(clip_path))
    save_safetensors(clip.model.state_dict(), folder / "clip.safetensors")
    OmegaConf.save(OmegaConf.create({"stage": "clip",
                                     "arch": {"arch": CLIP_ARCH, "pretrained": None}}),
                   folder / "clip.yaml")
    vqgan = load_vqgan(vq_path)
    prior_cfg = PriorConfig(vocab_size=24, n_tokens=64, cond_dim=128, n_layer=2, n_embd=32,
                            n_head=2, token_factors=TINY_FSQ_LEVELS if fsq else None)
    prior = CLIPPrior(prior_cfg)
    save_safetensors(prior.state_dict(), folder / "prior.safetensors")
    OmegaConf.save(OmegaConf.create({"stage": "prior", "arch": prior_cfg.to_dict(),
                                     "encoders": encoder_identity(vqgan, clip)}),
                   folder / "prior.yaml")
    return folder


# Overrides of train.py for a few-second run of each stage (with `tiny_prior_overrides` for
# the priors, which need a bundle and a cache first).
TINY_STAGE = {
    "vqgan": ["experiment=shapes_vqgan", "resolution=16", "data.train.length=64",
              "data.batch_size=4", "data.val_batch_size=4", "model.image_log_every=0",
              "model.loss.disc_start=1000"],
    "clip": ["experiment=shapes_clip", "data.train.length=64", "data.batch_size=8"],
}
TINY_TRAINER = ["trainer.enable_progress_bar=false", "trainer.limit_val_batches=1",
                "data.val.length=8", "trainer.log_every_n_steps=1", "logger=csv"]
TINY_PRIOR = ["model.prior.n_layer=1", "model.prior.n_embd=32", "model.prior.n_head=2",
              "model.train.sample_prompts=[]"]


def tiny_prior_overrides(folder: Path, captions_per_image: int = 0) -> list[str]:
    """A random bundle and a 24-image cache of it (train and val) in `folder`, and the
    overrides of `experiment=shapes_prior` that train a tiny prior on them. With
    `captions_per_image`, the cache holds captions (unflipped), for the caption priors."""
    from torch.utils.data import DataLoader

    from clipgen.data.datamodule import collate_samples
    from clipgen.data.shapes_dataset import ShapesDataset
    from clipgen.jobs.build_cache import encode_to_cache
    from clipgen.models.vqgan import load_vqgan

    bundle = write_tiny_bundle(folder / "bundle")
    vqgan = load_vqgan(bundle / "vqgan.safetensors")
    clip = FrozenCLIP(CLIP_ARCH, str(bundle / "clip.safetensors"))
    data = ShapesDataset(24, image_size=16, captions_per_image=max(captions_per_image, 1))
    for split in ("train", "val"):
        encode_to_cache(DataLoader(data, batch_size=8, collate_fn=collate_samples), vqgan, clip,
                        folder / "cache" / split, flip=not captions_per_image,
                        captions_per_image=captions_per_image, caption_length=72)
    return ["experiment=shapes_prior", "resolution=16", f"bundle_dir={bundle}",
            f"cache_dir={folder / 'cache'}", "data.batch_size=4", *TINY_PRIOR]


def random_prior(seed: int = 0, weight_std: float = 0.3, **config):
    """A small CLIPPrior in eval mode whose matrices are drawn with `weight_std` (larger than
    GPT-2's init: varied, condition-dependent logits); `config` fields of PriorConfig."""
    from clipgen.models.prior import CLIPPrior, PriorConfig

    torch.manual_seed(seed)
    model = CLIPPrior(PriorConfig(**config)).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, weight_std)
    return model
