import copy

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from clipgen.data.datamodule import ImageTextDataModule, collate_samples
from clipgen.data.precomputed import PrecomputedDataset
from clipgen.data.shapes_dataset import ShapesDataset
from clipgen.jobs.build_cache import encode_to_cache
from clipgen.jobs.export import export_checkpoint
from clipgen.lit.prior_module import (
    PriorModule,
    PriorTrainConfig,
    null_condition_mask,
    perturb_condition,
)
from clipgen.models.clip import FrozenCLIP
from clipgen.models.encoders import check_identity, encode_batch, encoder_identity
from clipgen.models.prior import CLIPPrior, PriorConfig, load_prior
from clipgen.models.vqgan import load_vqgan
from tests.helpers import CLIP_ARCH, write_tiny_encoders

PRIOR = dict(vocab_size=24, n_tokens=64, cond_dim=128, n_layer=2, n_embd=32, n_head=2)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    vq_path, clip_path = write_tiny_encoders(tmp_path_factory.mktemp("enc"))
    return load_vqgan(vq_path), FrozenCLIP(CLIP_ARCH, str(clip_path)), vq_path


@pytest.fixture(scope="module")
def cache(encoders, tmp_path_factory):
    vqgan, clip, _ = encoders
    data = ShapesDataset(12, image_size=16)
    loader = DataLoader(data, batch_size=4, collate_fn=collate_samples)
    root = tmp_path_factory.mktemp("cache")
    encode_to_cache(loader, vqgan, clip, root, rank=0, flip=True)
    return root, data


def _module(encoders, **train) -> PriorModule:
    vqgan, clip, _ = encoders
    torch.manual_seed(0)
    return PriorModule(PriorConfig(**PRIOR), vqgan, clip,
                       PriorTrainConfig(**{"warmup_steps": 1, "max_steps": 30, "lr": 3e-3,
                                           **train}),
                       run_config={"stage": "prior"})


def test_cache_reproduces_on_the_fly_encoding(encoders, cache):
    vqgan, clip, _ = encoders
    root, data = cache
    ds = PrecomputedDataset(root)
    assert len(ds) == 24  # 12 images and their flips
    images = torch.stack([data[i]["image"] for i in range(4)])
    tokens, cond = encode_batch(images, vqgan, clip)
    flip_tokens, flip_cond = encode_batch(images.flip(-1), vqgan, clip)
    for i in range(4):
        assert torch.equal(ds[i]["tokens"], tokens[i])
        assert torch.allclose(ds[i]["cond"], cond[i], atol=2e-3)  # stored as fp16
        assert torch.equal(ds[4 + i]["tokens"], flip_tokens[i])
        assert torch.allclose(ds[4 + i]["cond"], flip_cond[i], atol=2e-3)
    assert ds.meta["flip"] and ds.meta["n_tokens"] == 64


def test_cache_from_other_encoders_is_a_clear_error(encoders, cache, tmp_path):
    root, _ = cache
    other_vq, _ = write_tiny_encoders(tmp_path, seed=1)
    vqgan, clip, _ = encoders
    with pytest.raises(ValueError, match="other encoders.*vqgan"):
        check_identity(PrecomputedDataset(root).meta,
                       encoder_identity(load_vqgan(other_vq), clip), "precomputed cache")


def test_loss_decreases_over_a_few_steps(encoders, cache, tmp_path):
    root, _ = cache
    module = _module(encoders, emb_loss_weight=0.0, cond_drop=0.0)
    ds = PrecomputedDataset(root)
    batch = collate_samples([ds[i] for i in range(len(ds))])

    def loss() -> float:
        with torch.no_grad():
            logits = module.prior(batch["cond"], batch["tokens"])
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                                     batch["tokens"].flatten()).item()

    start = loss()
    trainer = pl.Trainer(max_steps=30, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         limit_val_batches=1, val_check_interval=30,
                         check_val_every_n_epoch=None, num_sanity_val_steps=0,
                         gradient_clip_val=1.0, default_root_dir=tmp_path)
    trainer.fit(module, ImageTextDataModule(ds, ds, batch_size=24))
    assert loss() < 0.8 * start
    assert "val/token_acc" in trainer.callback_metrics


def _count_decodes(module: PriorModule, monkeypatch) -> list[int]:
    calls = [0]
    original = module.encoders.vqgan.decode

    def counting(z):
        calls[0] += 1
        return original(z)

    monkeypatch.setattr(module.encoders.vqgan, "decode", counting)
    return calls


def test_lambda_zero_never_decodes(encoders, cache, monkeypatch):
    root, _ = cache
    ds = PrecomputedDataset(root)
    batch = collate_samples([ds[i] for i in range(8)])
    off = _module(encoders, emb_loss_weight=0.0, cond_drop=0.0)
    calls = _count_decodes(off, monkeypatch)
    off.training_step(batch, 0).backward()
    assert calls[0] == 0
    on = _module(encoders, emb_loss_weight=0.2, cond_drop=0.0)  # the same initial weights
    calls = _count_decodes(on, monkeypatch)
    loss = on.training_step(batch, 0)
    assert calls[0] == 1
    loss.backward()
    # lambda > 0 adds the embedding term's gradient to the prior's
    grad_on, grad_off = on.prior.cond_proj.weight.grad, off.prior.cond_proj.weight.grad
    assert grad_on is not None and not torch.allclose(grad_on, grad_off)


def test_null_condition_rate_and_use():
    mask = null_condition_mask(20000, 0.1, generator=torch.Generator().manual_seed(0))
    assert abs(mask.float().mean().item() - 0.1) < 0.01
    assert null_condition_mask(5, 0.0) is None
    prior = CLIPPrior(PriorConfig(**PRIOR))
    cond = torch.nn.functional.normalize(torch.randn(4, 128), dim=-1)
    pre = prior.prefix(cond, torch.tensor([True, False, True, False]))
    assert torch.equal(pre[0], prior.null_prefix) and torch.equal(pre[2], prior.null_prefix)
    assert not torch.equal(pre[1], prior.null_prefix)


def test_condition_perturbation_stays_on_the_sphere():
    cond = torch.nn.functional.normalize(torch.randn(64, 128), dim=-1)
    noisy = perturb_condition(cond, 0.5, torch.Generator().manual_seed(0))
    assert torch.allclose(noisy.norm(dim=-1), torch.ones(64), atol=1e-5)
    cos = (noisy * cond).sum(-1)
    assert 0.7 < cos.mean() < 0.95
    assert torch.equal(perturb_condition(cond, 0.0), cond)


def _save_checkpoint(encoders, path) -> PriorModule:
    """An untrained stage-2 module saved as a Lightning checkpoint at `path`."""
    module = _module(encoders)
    trainer = pl.Trainer(max_steps=0, logger=False, enable_checkpointing=False,
                         accelerator="cpu")
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return module


def test_checkpoint_records_encoders_and_rejects_another_tokenizer(encoders, tmp_path):
    module = _save_checkpoint(encoders, tmp_path / "prior.ckpt")
    vqgan, clip, _ = encoders
    prior = load_prior(tmp_path / "prior.ckpt", vqgan, clip)
    assert torch.equal(prior.cond_proj.weight, module.prior.cond_proj.weight)
    ckpt = torch.load(tmp_path / "prior.ckpt", weights_only=True)
    assert not any(k.startswith(("vqgan", "clip", "encoders")) for k in ckpt["state_dict"])
    other_vq, _ = write_tiny_encoders(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="made with other encoders"):
        load_prior(tmp_path / "prior.ckpt", load_vqgan(other_vq), clip)


def test_half_export_of_the_prior_loads_back(encoders, tmp_path):
    module = _save_checkpoint(encoders, tmp_path / "prior.ckpt")
    full = export_checkpoint(tmp_path / "prior.ckpt", tmp_path / "full")
    half = export_checkpoint(tmp_path / "prior.ckpt", tmp_path / "half", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    vqgan, clip, _ = encoders
    prior = load_prior(half, vqgan, clip)
    assert prior.cond_proj.weight.dtype == torch.float32
    assert torch.equal(prior.cond_proj.weight, module.prior.cond_proj.weight.half().float())


def test_bf16_mixed_steps_lower_the_loss_like_fp32(encoders, cache, tmp_path):
    root, _ = cache
    ds = PrecomputedDataset(root)
    batch = collate_samples([ds[i] for i in range(len(ds))])
    finals = {}

    def loss(module: PriorModule) -> float:
        with torch.no_grad():
            logits = module.prior(batch["cond"], batch["tokens"])
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                                     batch["tokens"].flatten()).item()

    for precision in ("32-true", "bf16-mixed"):
        module = _module(encoders, emb_loss_weight=0.0, cond_drop=0.0)
        start = loss(module)
        trainer = pl.Trainer(max_steps=20, accelerator="cpu", precision=precision, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             limit_val_batches=0, num_sanity_val_steps=0,
                             gradient_clip_val=1.0, default_root_dir=tmp_path / precision)
        trainer.fit(module, ImageTextDataModule(ds, None, batch_size=24))
        finals[precision] = loss(module)
        assert finals[precision] < 0.85 * start, precision
    assert abs(finals["bf16-mixed"] - finals["32-true"]) < 0.1 * finals["32-true"]


def test_auto_precision_follows_the_hardware(monkeypatch):
    import clipgen.run_info as run_info

    monkeypatch.setattr(run_info, "cpu_has_fast_bf16", lambda: True)
    assert run_info.training_precision("auto", "cpu")[0] == "bf16-mixed"
    monkeypatch.setattr(run_info, "cpu_has_fast_bf16", lambda: False)
    assert run_info.training_precision("auto", "cpu")[0] == "32-true"
    assert run_info.training_precision("bf16-true", "cpu") == ("bf16-true", "as configured")


def test_init_from_starts_the_prior_from_an_export_and_refuses_another_architecture(
        encoders, tmp_path):
    from omegaconf import OmegaConf

    from clipgen.checkpoint import save_safetensors

    vqgan, clip, _ = encoders
    torch.manual_seed(5)
    trained = CLIPPrior(PriorConfig(**PRIOR))
    save_safetensors(trained.state_dict(), tmp_path / "prior.safetensors")
    OmegaConf.save(OmegaConf.create({"stage": "prior", "arch": trained.config.to_dict(),
                                     "encoders": encoder_identity(vqgan, clip)}),
                   tmp_path / "prior.yaml")
    fresh = _module(encoders)
    started = _module(encoders, init_from=str(tmp_path / "prior.safetensors"))
    for name, value in trained.state_dict().items():
        assert torch.equal(started.prior.state_dict()[name], value), name
    assert not torch.equal(fresh.prior.gpt.lm_head.weight, trained.gpt.lm_head.weight)
    with pytest.raises(ValueError, match="n_layer: 2 there, 3 here"):
        PriorModule(PriorConfig(**{**PRIOR, "n_layer": 3}), vqgan, clip,
                    PriorTrainConfig(init_from=str(tmp_path / "prior.safetensors")))
    # a retrained CLIP of the same architecture: refused unless asked for, then accepted
    other_clip = copy.deepcopy(clip)
    with torch.no_grad():
        next(other_clip.model.parameters()).add_(0.01)
    with pytest.raises(ValueError, match="other encoders"):
        _module((vqgan, other_clip, None), init_from=str(tmp_path / "prior.safetensors"))
    moved = _module((vqgan, other_clip, None), init_from=str(tmp_path / "prior.safetensors"),
                    init_from_other_clip=True)
    assert torch.equal(moved.prior.gpt.lm_head.weight, trained.gpt.lm_head.weight)
    other_vqgan = copy.deepcopy(vqgan)
    with torch.no_grad():
        next(other_vqgan.parameters()).add_(0.01)
    with pytest.raises(ValueError, match="vqgan"):
        _module((other_vqgan, clip, None), init_from=str(tmp_path / "prior.safetensors"),
                init_from_other_clip=True)
