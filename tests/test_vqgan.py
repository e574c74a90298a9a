import dataclasses
import importlib.metadata

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.discriminator.model import NLayerDiscriminator
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn

from clipgen.checkpoint import CheckpointMismatchError, load_torch_file
from clipgen.data.datamodule import ImageTextDataModule
from clipgen.data.shapes_dataset import ShapesDataset
from clipgen.jobs.export import export_checkpoint
from clipgen.lit.vqgan_module import VQGANModule
from clipgen.metrics.reconstruction import codebook_stats
from clipgen.models.quantizers import L2Quantizer
from clipgen.models.vqgan import VQGAN, VQGANConfig, load_vqgan, load_vqgan_weights
from clipgen.models.vqgan_loss import VQGANLoss, VQGANLossConfig
from tests.helpers import TINY_FSQ_VQGAN, PicklePayload, save_lightning1_checkpoint

TINY = dict(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
            z_channels=32, n_embed=24, embed_dim=8)


def _taming_checkpoint(path, cfg: VQGANConfig, **save_kwargs) -> nn.Module:
    """A checkpoint in the layout of taming's public VQModel checkpoints, from taming's modules."""
    ref = nn.Module()
    ref.encoder = Encoder(**cfg.ddconfig())
    ref.decoder = Decoder(**cfg.ddconfig())
    ref.quantize = VectorQuantizer2(cfg.n_embed, cfg.embed_dim, beta=0.25)
    ref.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
    ref.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
    ref.loss = nn.Module()
    ref.loss.discriminator = NLayerDiscriminator(3, 8, 2)
    hparams = OmegaConf.create({"ddconfig": cfg.ddconfig(), "n_embed": cfg.n_embed,
                                "embed_dim": cfg.embed_dim,
                                "lossconfig": {"target": "taming.modules.losses.vqperceptual."
                                               "VQLPIPSWithDiscriminator",
                                               "params": {"disc_start": 250001}}})
    save_lightning1_checkpoint(ref.state_dict(), path, hparams, **save_kwargs)
    return ref


@pytest.mark.parametrize("zipfile", [True, False])
def test_taming_format_checkpoint_loads_strictly(tmp_path, zipfile):
    cfg = VQGANConfig(**TINY, quantizer="taming")
    ref = _taming_checkpoint(tmp_path / "last.ckpt", cfg,
                             _use_new_zipfile_serialization=zipfile)
    model = VQGAN(cfg).eval()
    dropped = load_vqgan_weights(model, tmp_path / "last.ckpt")
    assert dropped and all(k.startswith("loss.discriminator.") for k in dropped)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        h = ref.quant_conv(ref.encoder(x))
        zq, _, (_, _, idx) = ref.quantize(h)
        expected = ref.decoder(ref.post_quant_conv(zq))
        assert torch.equal(model.encode_to_tokens(x).flatten(), idx.flatten())
        assert torch.allclose(model(x)[0], expected)


def test_taming_checkpoint_loads_by_path_and_arch(tmp_path):
    cfg = VQGANConfig(**TINY, quantizer="taming")
    ref = _taming_checkpoint(tmp_path / "last.ckpt", cfg)
    model = load_vqgan(tmp_path / "last.ckpt", {**TINY, "quantizer": "taming"})
    assert torch.equal(model.quantize.embedding.weight, ref.quantize.embedding.weight)


def test_pickled_code_in_a_checkpoint_never_runs(tmp_path):
    _taming_checkpoint(tmp_path / "last.ckpt", VQGANConfig(**TINY, quantizer="taming"))
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    marker = tmp_path / "payload-ran"
    checkpoint["hyper_parameters"] = PicklePayload(marker)
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    with pytest.raises(RuntimeError, match="(?s)could not load .*evil.ckpt safely.*system"):
        load_torch_file(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    _taming_checkpoint(tmp_path / "a.ckpt", VQGANConfig(**TINY, quantizer="taming"))
    other = VQGAN(VQGANConfig(**{**TINY, "n_embed": 32}, quantizer="taming"))
    with pytest.raises(CheckpointMismatchError, match="shape mismatches: quantize.embedding"):
        load_vqgan_weights(other, tmp_path / "a.ckpt")
    state = torch.load(tmp_path / "a.ckpt", weights_only=False)
    state["state_dict"]["encoder.extra.weight"] = torch.zeros(1)
    del state["state_dict"]["quant_conv.bias"]
    torch.save(state, tmp_path / "b.ckpt")
    model = VQGAN(VQGANConfig(**TINY, quantizer="taming"))
    with pytest.raises(CheckpointMismatchError, match="missing keys: quant_conv.bias"):
        load_vqgan_weights(model, tmp_path / "b.ckpt")


def test_encode_decode_round_trip_shapes_and_dtypes():
    model = VQGAN(VQGANConfig(**TINY, quantizer="l2")).eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    tokens = model.encode_to_tokens(x)
    assert tokens.shape == (3, 8, 8) and tokens.dtype == torch.int64
    assert 0 <= tokens.min() and tokens.max() < 24
    with torch.no_grad():
        images = model.decode_tokens(tokens)
        flat = model.decode_tokens(tokens.flatten(1))
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    assert torch.equal(images, flat)
    assert model.token_grid() == (8, 8)
    with pytest.raises(ValueError, match="token ids"):
        model.decode_tokens(torch.full((1, 8, 8), 24))


def test_dead_code_restart_revives_unused_codes():
    torch.manual_seed(0)
    q = L2Quantizer(16, 4, restart_every=0)
    q.train()
    data = torch.randn(4, 4, 8, 8).abs()  # every vector in the positive orthant
    q(data)  # initialises from data, fills the recent buffer
    # codes 0..7 point into the negative orthant: never the nearest (cosine) to any vector
    q.embedding.weight.data[:8] = -torch.ones(4)
    q.usage[:8] = 0.0
    q.eval()
    before = set(q(data).indices.unique().tolist())
    assert before and before.isdisjoint(range(8))
    revived = q.restart_dead_codes()
    assert revived >= 8
    after = set(q(data).indices.unique().tolist())
    assert after & set(range(8)), "restarted codes should be used again"


def test_codebook_stats_over_a_pass():
    usage, ppl = codebook_stats(torch.tensor([5, 5, 0, 0]))
    assert usage == 0.5 and abs(ppl - 2.0) < 1e-5


def test_missing_lpips_weights_fail_at_start(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        VQGANLoss(VQGANLossConfig(perceptual_weight=1.0, lpips_dir=str(tmp_path)))
    message = str(err.value)
    assert "vgg16-397923af.pth" in message and "vgg.pth" in message and str(tmp_path) in message
    assert "perceptual_weight=0" in message


@pytest.mark.parametrize("quantizer", ["l2", "fsq"])
def test_training_steps_lower_the_loss_and_checkpoint_has_config(tmp_path, quantizer):
    torch.manual_seed(0)
    cfg = (VQGANConfig(**TINY, quantizer="l2", quantizer_kwargs={"restart_every": 5})
           if quantizer == "l2" else VQGANConfig.from_dict(TINY_FSQ_VQGAN))
    loss = VQGANLossConfig(perceptual_weight=0.0, disc_start=10, disc_layers=1, disc_channels=8)
    module = VQGANModule(cfg, loss, lr=2e-3, image_log_every=0,
                         run_config={"stage": "vqgan", "run_dir": str(tmp_path),
                                     "model": {"vqgan": dataclasses.asdict(cfg)}})
    data = ShapesDataset(8, image_size=16)
    batch = torch.stack([data[i]["image"] for i in range(8)])

    def rec_loss() -> float:
        with torch.no_grad():
            return (module.model(batch)[0] - batch).abs().mean().item()

    module.model.eval()
    start = rec_loss()
    trainer = pl.Trainer(max_steps=60, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         limit_val_batches=1, val_check_interval=60, num_sanity_val_steps=0,
                         check_val_every_n_epoch=None,
                         default_root_dir=tmp_path)
    trainer.fit(module, ImageTextDataModule(data, data, batch_size=8))
    assert trainer.global_step == 60  # the discriminator's steps do not count twice
    module.model.eval()
    assert rec_loss() < 0.7 * start
    assert list((tmp_path / "images").glob("val_recon_*.png"))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = load_torch_file(tmp_path / "m.ckpt")
    assert ckpt["clipgen"]["stage"] == "vqgan"
    assert ckpt["clipgen"]["versions"]["torch"] == importlib.metadata.version("torch")
    rebuilt = load_vqgan(tmp_path / "m.ckpt")
    trained = module.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in rebuilt.state_dict().items())
    assert rebuilt.quantize.codebook().shape == (24, cfg.embed_dim)
    exported = export_checkpoint(tmp_path / "m.ckpt", tmp_path / "bundle")
    fresh = VQGAN(cfg).eval()
    assert load_vqgan_weights(fresh, exported) == []
    with torch.no_grad():
        assert torch.equal(fresh.encode_to_tokens(batch), rebuilt.encode_to_tokens(batch))
    assert (tmp_path / "bundle" / "vqgan.yaml").is_file()


def test_reconstruction_report_on_shapes():
    from clipgen.evaluation.shapes_reconstruction import shapes_reconstruction_report

    torch.manual_seed(0)
    model = VQGAN(VQGANConfig(**TINY, quantizer="l2")).eval()
    report = shapes_reconstruction_report(model, num_images=6, batch_size=4)
    assert report["images"] == 6
    assert 0 < report["codebook_usage"] <= 1 and report["perplexity"] >= 1
    assert 0 <= report["color_read_back"] <= 1 and report["psnr_db"] > 0


def test_reconstruction_report_counts_codes_new_to_an_images_colour():
    from clipgen.evaluation.shapes_reconstruction import (
        codes_by_colour,
        shapes_reconstruction_report,
    )

    torch.manual_seed(0)
    model = VQGAN(VQGANConfig(**TINY, quantizer="l2")).eval()
    # the reference is the same training renders: no code is new to its colour
    same = shapes_reconstruction_report(model, num_images=12, batch_size=4, split="train",
                                        colour_reference=12)
    combos = same["by_combination"]
    assert sum(c["images"] for c in combos.values()) == 12
    assert all(c["new_code_to_colour"] == 0 for c in combos.values())
    # a reference of one render knows one colour: every image of another colour is new
    one = shapes_reconstruction_report(model, num_images=12, batch_size=4, split="train",
                                       colour_reference=1)
    first = ShapesDataset(1, image_size=TINY["resolution"])[0]["attributes"]["color"]
    others = {k: c for k, c in one["by_combination"].items() if not k.startswith(first + " ")}
    assert others and all(c["new_code_to_colour"] == 1 for c in others.values())
    # a reference of four renders: the share follows each image's own colour's codes (not
    # the codes of every colour, which would count fewer images)
    seen = codes_by_colour(model, 4, batch_size=4)
    data = ShapesDataset(12, image_size=TINY["resolution"])
    tokens = model.encode_to_tokens(torch.stack([data[i]["image"] for i in range(12)]))
    new, new_to_all = {}, {}
    for i, row in enumerate(tokens.flatten(1).tolist()):
        a = data[i]["attributes"]
        name = f"{a['color']} {a['shape']}"
        new.setdefault(name, []).append(not set(row) <= seen.get(a["color"], set()))
        new_to_all.setdefault(name, []).append(not set(row) <= set().union(*seen.values()))
    four = shapes_reconstruction_report(model, num_images=12, batch_size=4, split="train",
                                        colour_reference=4)["by_combination"]
    assert {k: c["new_code_to_colour"] for k, c in four.items()} == {
        k: round(sum(v) / len(v), 4) for k, v in new.items()}
    assert new != new_to_all
    assert "new_code_to_colour" not in shapes_reconstruction_report(
        model, num_images=4, batch_size=4)["by_combination"].popitem()[1]


def test_norm_groups_build_narrow_models_with_taming_names():
    narrow = VQGAN(VQGANConfig(**{**TINY, "ch": 16}, quantizer="l2", norm_groups=8))
    norms = [m for m in narrow.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 8 for m in norms)
    wide = VQGAN(VQGANConfig(**TINY, quantizer="taming"))
    assert all(m.num_groups == 32 for m in wide.modules() if isinstance(m, nn.GroupNorm))
    assert set(narrow.state_dict()) - {"quantize.usage", "quantize.initialized",
                                       "quantize.steps"} == set(wide.state_dict())
    with pytest.raises(ValueError, match="norm_groups=3"):
        VQGAN(VQGANConfig(**TINY, norm_groups=3))


def test_shipped_shapes_tokenizer_reconstructs():
    from clipgen.metrics.reconstruction import psnr
    from clipgen.models.bundle import default_bundle

    model = load_vqgan(default_bundle() / "vqgan.safetensors")
    data = ShapesDataset(8, image_size=model.config.resolution, split="val")
    x = torch.stack([data[i]["image"] for i in range(8)])
    with torch.no_grad():
        assert psnr(x, model.decode_tokens(model.encode_to_tokens(x))).mean() > 30


@pytest.mark.parametrize("quantizer", ["l2", "taming", "fsq"])
def test_quantization_runs_in_fp32_under_bf16_autocast(quantizer):
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig.from_dict(TINY_FSQ_VQGAN) if quantizer == "fsq"
                  else VQGANConfig(**TINY, quantizer=quantizer)).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in bf16-mixed training
        q = model.encode(x)
    assert q.z_q.dtype == torch.float32 and torch.isfinite(q.loss)
    if quantizer == "l2":
        assert model.quantize.recent.dtype == torch.float32


def test_fsq_codes_are_every_combination_of_levels_and_round_trip_through_indices():
    from clipgen.models.quantizers import FSQuantizer

    q = FSQuantizer(2 * 3 * 4, 3, levels=[2, 3, 4])
    z = (3 * torch.randn(64, 3, 8, 8)).requires_grad_()
    out = q(z)
    assert out.indices.shape == (64, 8, 8) and float(out.loss) == 0.0
    assert set(out.indices.unique().tolist()) == set(range(24))  # every code reached
    assert torch.equal(q.lookup(out.indices), out.z_q.detach())
    book = q.codebook()
    assert book.shape == (24, 3) and len(book.unique(dim=0)) == 24
    # channel i takes L_i evenly spaced values in [-1, 1]: even counts stop one step short of 1
    assert [sorted(book[:, i].unique().tolist()) for i in range(3)] == [
        [-1.0, 0.0], [-1.0, 0.0, 1.0], [-1.0, -0.5, 0.0, 0.5]]
    # channel 0 is the least significant digit
    assert book[1].tolist() == [0.0, -1.0, -1.0] and book[2].tolist() == [-1.0, 0.0, -1.0]
    out.z_q.sum().backward()  # straight-through rounding: gradients reach the latent
    assert z.grad.abs().sum() > 0
    assert torch.allclose(q.project(z.detach()), q._bound(z.detach()) / torch.tensor(
        [1.0, 1.0, 2.0]).view(1, 3, 1, 1))


@pytest.mark.parametrize("settings,message", [
    (dict(n_embed=24, embed_dim=4, levels=[2, 3, 4]), "embed_dim=3"),
    (dict(n_embed=16, embed_dim=3, levels=[2, 3, 4]), "n_embed=24"),
    (dict(n_embed=6, embed_dim=2, levels=[1, 6]), "at least 2")])
def test_fsq_settings_that_do_not_fit_are_named(settings, message):
    from clipgen.models.quantizers import FSQuantizer

    with pytest.raises(ValueError, match=message):
        FSQuantizer(**settings)
