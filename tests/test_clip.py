import zlib
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from clipgen.checkpoint import fingerprint
from clipgen.data.datamodule import ImageTextDataModule, collate_samples
from clipgen.data.shapes import ATTRIBUTE_VALUES, ShapesWorld, prompt_for
from clipgen.data.shapes_dataset import ShapesDataset
from clipgen.data.transforms import pil_to_tensor
from clipgen.jobs.export import export_checkpoint
from clipgen.lit.clip_module import CLIPModule, contrastive_loss
from clipgen.metrics.zero_shot import (
    in_context_accuracy,
    retrieval_r1,
    shape_readings,
    zero_shot_prompts,
)
from clipgen.models.clip import FrozenCLIP


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return FrozenCLIP("clipgen-shapes-vit-tiny", pretrained=None, random_weights=True)


def test_random_vit_b32_round_trips_through_a_file(tmp_path):
    torch.manual_seed(0)
    a = FrozenCLIP("ViT-B-32", pretrained=None, random_weights=True)
    path = tmp_path / "vit_b32.pt"
    torch.save(a.model.state_dict(), path)
    b = FrozenCLIP("ViT-B-32", pretrained=str(path))
    images = torch.rand(2, 3, 64, 80) * 2 - 1
    with torch.no_grad():
        assert torch.equal(a.encode_image(images), b.encode_image(images))
        assert torch.equal(a.encode_text(["a red circle", "a dog"]),
                           b.encode_text(["a red circle", "a dog"]))
    assert not any(p.requires_grad for p in b.parameters()) and not b.training


def test_missing_weights_file_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.clip.pretrained=<path"):
        FrozenCLIP("ViT-B-32", pretrained=str(tmp_path / "missing.bin"))
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        FrozenCLIP("ViT-B-32", pretrained="not-a-tag")


def test_preprocessing_matches_open_clip_transform():
    clip = FrozenCLIP("ViT-B-32", pretrained=None, random_weights=True)
    rng = torch.Generator().manual_seed(0)
    # a smooth image (photos are smooth at the pixel scale) of another size than CLIP's input
    base = torch.rand(1, 3, 12, 15, generator=rng)
    arr = torch.nn.functional.interpolate(base, size=(300, 375), mode="bilinear")[0]
    image = Image.fromarray((arr.permute(1, 2, 0) * 255).round().byte().numpy())
    transform = image_transform_v2(PreprocessCfg(**clip.model.visual.preprocess_cfg),
                                   is_train=False)
    ours = clip.preprocess(pil_to_tensor(image)[None])[0]
    # open_clip's transform on the same pixels as a float tensor: the same operations
    reference = transform((pil_to_tensor(image) + 1) / 2)
    assert ours.shape == reference.shape == (3, 224, 224)
    assert (ours - reference).abs().max() < 1e-3
    # from the PIL image, PIL resamples in uint8: equal up to that rounding
    assert (ours - transform(image)).abs().mean() < 1e-2


def test_empty_prompt_rejected_and_long_prompt_warned(tiny_clip):
    with pytest.raises(ValueError, match="empty prompt"):
        tiny_clip.encode_text(["a red circle", "  "])
    with pytest.warns(UserWarning, match="truncated"):
        emb = tiny_clip.encode_text(["a red circle " * 10])
    assert emb.shape == (1, 128)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(1))


def test_image_embedding_is_differentiable_and_normalised(tiny_clip):
    images = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_(True)
    emb = tiny_clip.encode_image(images)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    emb.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_retrieval_counts_identical_captions_as_right():
    emb = torch.eye(3)
    assert retrieval_r1(emb, emb, ["a", "b", "c"]) == (1.0, 1.0)
    swapped = emb[[1, 0, 2]]
    assert retrieval_r1(emb, swapped, ["a", "b", "c"])[0] == pytest.approx(1 / 3)
    assert retrieval_r1(emb, swapped, ["a", "a", "c"])[0] == 1.0


def test_zero_shot_prompts_cover_every_value():
    prompts = zero_shot_prompts()
    assert len(prompts["color"]) == 8 and "a red circle" in prompts["color"][0]
    assert "a star in the top left" in prompts["position"][0]
    assert all("shape" not in p for ens in prompts.values() for e in ens for p in e)


def test_in_context_accuracy_varies_one_attribute_inside_the_true_prompt():
    # a text encoder that gives every distinct prompt its own random direction, and images
    # embedded as their full true prompt: only prompts naming the other attributes truly match
    def encode(prompts):
        return torch.stack([F.normalize(torch.randn(256, generator=torch.Generator().manual_seed(
            zlib.crc32(p.encode()))), dim=0) for p in prompts])

    world = ShapesWorld(image_size=16)
    records = [world.record(i)[0] for i in range(40)]
    truth = {k: [getattr(r, k) for r in records] for k in ATTRIBUTE_VALUES}
    images = encode([prompt_for({k: getattr(r, k) for k in ATTRIBUTE_VALUES}) for r in records])
    assert in_context_accuracy(images, truth, encode) == {k: 1.0 for k in ATTRIBUTE_VALUES}
    # and the measure can fail: read against the wrong records, the same images score low
    shuffled = {k: v[1:] + v[:1] for k, v in truth.items()}
    assert min(in_context_accuracy(images, shuffled, encode).values()) < 0.5


def test_a_few_steps_lower_the_contrastive_loss(tmp_path):
    torch.manual_seed(0)
    arch = {"arch": "clipgen-shapes-vit-tiny", "pretrained": None}
    module = CLIPModule(arch["arch"], lr=2e-3, warmup_steps=2, max_steps=25,
                        run_config={"model": {"clip": arch}})
    data = ShapesDataset(32, image_size=64)
    batch = {k: [data[i][k] for i in range(32)] for k in ("image", "caption")}
    batch["image"] = torch.stack(batch["image"])

    def loss() -> float:
        with torch.no_grad():
            img, txt = module.embed(batch["image"], batch["caption"])
            return contrastive_loss(img, txt, module.model.logit_scale.exp()).item()

    start = loss()
    trainer = pl.Trainer(max_steps=25, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, limit_val_batches=1, val_check_interval=25,
                         check_val_every_n_epoch=None, num_sanity_val_steps=0,
                         default_root_dir=tmp_path)
    trainer.fit(module, ImageTextDataModule(data, data, batch_size=32))
    assert loss() < 0.8 * start
    metrics = trainer.callback_metrics
    assert {"val/i2t_r1", "val/zero_shot_color", "val/zero_shot_shape"} <= set(metrics)
    trainer.save_checkpoint(tmp_path / "clip.ckpt")
    exported = export_checkpoint(tmp_path / "clip.ckpt", tmp_path / "bundle")
    frozen = FrozenCLIP(arch["arch"], pretrained=str(exported))
    with torch.no_grad():
        img, txt = module.embed(batch["image"][:4], batch["caption"][:4])
        assert torch.allclose(frozen.encode_image(batch["image"][:4]), img, atol=1e-5)
        assert torch.allclose(frozen.encode_text(batch["caption"][:4]), txt, atol=1e-5)
    # stored in fp16: half the file, loaded back as fp32, a fingerprint of its own
    halved = export_checkpoint(tmp_path / "clip.ckpt", tmp_path / "half", half=True)
    assert halved.stat().st_size < 0.6 * exported.stat().st_size
    frozen_half = FrozenCLIP(arch["arch"], pretrained=str(halved))
    assert all(p.dtype == torch.float32 for p in frozen_half.parameters())
    assert fingerprint(frozen_half) != fingerprint(frozen)
    with torch.no_grad():
        assert torch.allclose(frozen_half.encode_image(batch["image"][:4]), img, atol=1e-2)


def test_hard_negative_captions_join_every_image_candidates():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.3 * torch.randn(6, 16), dim=-1)
    scale = torch.tensor(20.0)
    assert torch.isclose(contrastive_loss(img, txt, scale), ClipLoss()(img, txt, scale))
    # a negative as close to image 0 as its own caption: image 0 can no longer tell them apart
    hard = txt[:1].clone().requires_grad_()
    raised = contrastive_loss(img, txt, scale, hard)
    far = contrastive_loss(img, txt, scale, -img[:1])  # a negative no image resembles
    base = contrastive_loss(img, txt, scale)
    assert raised - base > 10 * (far - base) > 0
    raised.backward()
    assert hard.grad.abs().sum() > 0
    # the module reads the batch's negative captions
    module = CLIPModule("clipgen-shapes-vit-tiny", run_config={"model": {}})
    module.log_dict = lambda *a, **k: None
    data = ShapesDataset(8, negative_captions=3, negative_attributes=["position"])
    batch = collate_samples([data[i] for i in range(8)])
    with torch.no_grad():
        with_negatives = module.training_step(batch, 0)
        without = module.training_step({k: v for k, v in batch.items()
                                        if k != "negative_captions"}, 0)
    assert with_negatives > without


def test_a_frozen_clip_without_weights_is_an_error_unless_asked_for():
    with pytest.raises(ValueError, match="no weights: set model.clip.pretrained"):
        FrozenCLIP("clipgen-shapes-vit-tiny")
    assert FrozenCLIP("clipgen-shapes-vit-tiny", random_weights=True).embed_dim == 128


def test_gpt2_medium_experiment_without_clip_weights_stops_before_any_work(tmp_path):
    from hydra import compose, initialize_config_dir

    from clipgen.jobs.build_cache import run_precompute

    configs = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(configs, version_base="1.3"):
        cfg = compose("precompute", overrides=[
            "experiment=coco_gpt2_medium", "data=shapes", f"cache_dir={tmp_path}",
            "model.clip.pretrained=null",
            f"model.tokenizer.path={tmp_path}/none.ckpt"], return_hydra_config=True)
    with pytest.raises(ValueError, match="no weights: set model.clip.pretrained"):
        run_precompute(cfg)


def test_shape_readings_count_each_combinations_shapes_as_read():
    shapes = ATTRIBUTE_VALUES["shape"]

    def encode_text(prompts):  # one direction per shape named, whatever the colour
        return torch.stack([torch.eye(len(shapes))[[s in p.split() for s in shapes].index(True)]
                            for p in prompts])

    # three blue stars: two read as stars, one as a diamond; one yellow triangle read right
    read = ["star", "star", "diamond", "triangle"]
    image_emb = torch.stack([torch.eye(len(shapes))[shapes.index(r)] for r in read])
    truth = {"color": ["blue", "blue", "blue", "yellow"],
             "shape": ["star", "star", "star", "triangle"]}
    counts = shape_readings(image_emb, truth, encode_text)
    assert list(counts) == ["blue star", "yellow triangle"]
    assert counts["blue star"] == {**dict.fromkeys(shapes, 0), "star": 2, "diamond": 1}
    assert counts["yellow triangle"] == {**dict.fromkeys(shapes, 0), "triangle": 1}

