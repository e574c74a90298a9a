"""The supervised stage-2 conditionings: caption tokens (cross-attention) and CLIP text
embeddings of captions, beside the language-free default."""

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from clipgen.checkpoint import save_safetensors
from clipgen.data.datamodule import ImageTextDataModule, collate_samples
from clipgen.data.precomputed import PrecomputedDataset
from clipgen.data.shapes_dataset import ShapesDataset
from clipgen.generation.sampling import SamplingConfig, sample_tokens
from clipgen.generation.text_to_image import TextToImage
from clipgen.jobs.build_cache import encode_to_cache
from clipgen.lit.prior_module import PriorModule, PriorTrainConfig, draw_captions
from clipgen.models.caption_tokens import CaptionTokenizer
from clipgen.models.clip import FrozenCLIP
from clipgen.models.encoders import encoder_identity
from clipgen.models.prior import CLIPPrior, PriorConfig
from clipgen.models.vqgan import load_vqgan
from tests.helpers import CLIP_ARCH, write_tiny_bundle, write_tiny_encoders

TEXT_PRIOR = dict(vocab_size=24, n_tokens=64, cond_dim=128, n_layer=2, n_embd=32, n_head=2,
                  condition="text", text_layers=1, caption_length=72)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    vq_path, clip_path = write_tiny_encoders(tmp_path_factory.mktemp("enc"))
    return load_vqgan(vq_path), FrozenCLIP(CLIP_ARCH, str(clip_path))


@pytest.fixture(scope="module")
def caption_cache(encoders, tmp_path_factory):
    vqgan, clip = encoders
    data = ShapesDataset(10, image_size=16, captions_per_image=3)
    root = tmp_path_factory.mktemp("cache")
    encode_to_cache(DataLoader(data, batch_size=4, collate_fn=collate_samples), vqgan, clip,
                    root, flip=False, captions_per_image=3, caption_length=72)
    return root, data


def _text_prior(seed: int = 0) -> CLIPPrior:
    torch.manual_seed(seed)
    return CLIPPrior(PriorConfig(**TEXT_PRIOR))


def test_cache_rows_carry_captions_that_decode_back(encoders, caption_cache):
    _, clip = encoders
    root, data = caption_cache
    ds = PrecomputedDataset(root)
    assert len(ds) == 10 and ds.meta["captions"] == {"tokenizer": "byt5-utf8", "length": 72,
                                                     "per_image": 3}
    tokenizer = CaptionTokenizer(72)
    for i in (0, 7):
        row = ds[i]
        expected = data.world.captions(i, 3)
        assert len(set(expected)) == 3 and expected[0] == data[i]["caption"]
        assert tokenizer.decode(row["captions"]) == expected
        with torch.no_grad():
            assert torch.allclose(row["caption_cond"], clip.encode_text(expected), atol=2e-3)


def test_a_caption_cache_refuses_flips_and_counts_cut_captions(encoders, tmp_path, caplog):
    vqgan, clip = encoders
    loader = DataLoader(ShapesDataset(2, image_size=16), batch_size=2, collate_fn=collate_samples)
    with pytest.raises(ValueError, match="flip=false"):
        encode_to_cache(loader, vqgan, clip, tmp_path, flip=True, captions_per_image=1)
    captions = [ShapesDataset(2, image_size=16)[i]["caption"] for i in range(2)]
    encode_to_cache(loader, vqgan, clip, tmp_path, flip=False, captions_per_image=1,
                    caption_length=12)
    cut = sum(len(c) > 11 for c in captions)
    assert cut and f"{cut} caption(s) longer than 11 bytes were cut short" in caplog.text


def test_cross_attention_reads_the_caption():
    prior = _text_prior().eval()
    tokens = torch.randint(0, 24, (2, 64))
    ids = prior.tokenizer.encode(["a red circle", "a blue star in the top left"])
    with torch.no_grad():
        logits = prior(ids, tokens)
        swapped = prior(ids.flip(0), tokens)
        nulled = prior(ids, tokens, null_mask=torch.tensor([True, False]))
    # the same image tokens under another caption give other logits at every position
    assert (logits[0] - swapped[0]).abs().amax(-1).min() > 1e-4
    # the null condition (the empty caption) changes the masked row only
    assert (logits[0] - nulled[0]).abs().amax() > 1e-4
    assert torch.equal(logits[1], nulled[1])
    # the blocks attend to the caption's bytes and end token, not to its padding
    assert prior.memory(ids)[1][0].sum() == len("a red circle") + 1


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_every_decoder_samples_the_same_tokens_from_captions(guidance):
    prior = _text_prior().eval()
    ids = prior.tokenizer.encode(["a red circle", "a blue star", "a green square"])
    interval = [0, 20] if guidance != 1.0 else None  # the static decoder drops null rows after
    out = [sample_tokens(prior, ids, SamplingConfig(decoder=d, dtype="float32",
                                                    guidance_scale=guidance,
                                                    guidance_interval=interval),
                         generator=torch.Generator().manual_seed(5))
           for d in ("static", "hf", "recompute")]
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


def test_a_caption_conditioned_prior_lowers_its_loss(encoders, caption_cache, tmp_path):
    vqgan, clip = encoders
    root, _ = caption_cache
    torch.manual_seed(0)
    module = PriorModule(PriorConfig(**TEXT_PRIOR), vqgan, clip,
                         PriorTrainConfig(warmup_steps=1, max_steps=30, lr=3e-3,
                                          emb_loss_weight=0.0, cond_drop=0.0),
                         run_config={"stage": "prior"})
    ds = PrecomputedDataset(root)
    batch = collate_samples([ds[i] for i in range(len(ds))])
    first = batch["captions"][:, 0]

    def loss() -> float:
        with torch.no_grad():
            logits = module.prior(first, batch["tokens"])
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                                     batch["tokens"].flatten()).item()

    start = loss()
    trainer = pl.Trainer(max_steps=30, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, ImageTextDataModule(ds, None, batch_size=10))
    assert loss() < 0.8 * start
    assert module.prior.text_encoder.embeddings.word_embeddings.weight.grad is not None


def test_captions_are_drawn_from_those_an_image_has():
    ids = torch.zeros(3, 4, 5, dtype=torch.long)
    ids[0, :1, 0] = 9  # one caption
    ids[1, :4, 0] = 9  # four
    ids[2, :2, 0] = 9  # two
    gen = torch.Generator().manual_seed(0)
    picks = torch.stack([draw_captions(ids, generator=gen) for _ in range(400)])
    assert (picks[:, 0] == 0).all()
    assert set(picks[:, 1].tolist()) == {0, 1, 2, 3}
    assert set(picks[:, 2].tolist()) == {0, 1}
    with pytest.raises(ValueError, match="no caption"):
        draw_captions(torch.zeros(1, 2, 5, dtype=torch.long))


def test_each_supervised_prior_refuses_a_cache_without_captions(encoders, tmp_path):
    vqgan, clip = encoders
    loader = DataLoader(ShapesDataset(4, image_size=16), batch_size=4, collate_fn=collate_samples)
    encode_to_cache(loader, vqgan, clip, tmp_path, flip=False)
    meta = PrecomputedDataset(tmp_path).meta
    for condition in ("text", "clip_text"):
        module = PriorModule({**TEXT_PRIOR, "condition": condition}, vqgan, clip,
                             {"cond_noise": 0.0}, run_config={"stage": "prior"})
        with pytest.raises(ValueError, match="captions_per_image"):
            module.check_cache_captions(meta)
    module = PriorModule(TEXT_PRIOR, vqgan, clip, {"cond_noise": 0.0})
    with pytest.raises(ValueError, match="caption_length=64"):
        module.check_cache_captions({"captions": {"tokenizer": "byt5-utf8", "length": 64}})


def _text_bundle(folder):
    write_tiny_bundle(folder)
    vqgan = load_vqgan(folder / "vqgan.safetensors")
    clip = FrozenCLIP(CLIP_ARCH, str(folder / "clip.safetensors"))
    prior = _text_prior()
    save_safetensors(prior.state_dict(), folder / "prior.safetensors")
    OmegaConf.save(OmegaConf.create({"stage": "prior", "arch": prior.config.to_dict(),
                                     "encoders": encoder_identity(vqgan, clip)}),
                   folder / "prior.yaml")
    return folder


def test_a_bundle_of_one_conditioning_refuses_to_be_used_as_another(tmp_path):
    bundle = _text_bundle(tmp_path / "text")
    with pytest.raises(ValueError, match="condition=text, not clip_image"):
        TextToImage.from_bundle(bundle, condition="clip_image")
    pipe = TextToImage.from_bundle(bundle, condition="text")
    assert pipe.condition == "text"
    with pytest.raises(ValueError, match="cannot make variations of an image"):
        pipe.image_conditions(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="caption token ids"):
        pipe.prior(pipe.text_conditions(["a red circle"]).clip, torch.zeros(1, 64).long())
    results = pipe.generate(pipe.text_conditions(["a red circle", "a blue star"]),
                            n_candidates=2, keep=1)
    assert [r.images.shape for r in results] == [(1, 3, 16, 16)] * 2
    clip_bundle = write_tiny_bundle(tmp_path / "clip")
    with pytest.raises(ValueError, match="condition=clip_image, not text"):
        TextToImage.from_bundle(clip_bundle, condition="text")
    with pytest.raises(ValueError, match="CLIP embeddings, not caption token ids"):
        clip_pipe = TextToImage.from_bundle(clip_bundle)
        clip_pipe.prior(pipe.text_conditions(["a red circle"]).prior, torch.zeros(1, 64).long())


def test_sample_py_and_the_suite_run_from_a_caption_bundle(tmp_path):
    from hydra import compose, initialize_config_dir

    from clipgen.evaluation.suite import run_suite
    from clipgen.jobs.sample_run import run_sampling
    from tests.test_sampling import ROOT

    bundle = _text_bundle(tmp_path / "bundle")
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        sample = compose("sample", overrides=[f"bundle={bundle}", "condition=text",
                                              f"out_dir={tmp_path}/s", "n_candidates=2",
                                              "samples_per_prompt=1",
                                              "prompts=[a red circle,a blue star]"])
        variation = compose("sample", overrides=[f"bundle={bundle}", f"out_dir={tmp_path}/v",
                                                 f"image={ROOT / 'docs' / 'demo.png'}"])
        suite = compose("eval", overrides=[f"bundle={bundle}", "suite.limit=4", "batch_size=2",
                                           "suite.real.num_images=8", f"out_dir={tmp_path}/e",
                                           f"reference_dir={tmp_path}/ref", "device=cpu"])
    out = run_sampling(sample)
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 2 and (out / "001_a_blue_star" / "00.png").is_file()
    with pytest.raises(ValueError, match="cannot make variations of an image"):
        run_sampling(variation)
    report = run_suite(suite)
    assert report["generator"]["condition"] == "text"
    assert report["metrics"]["attributes"]["all"]["color"]["n"] == 4
