"""Evaluation: Fréchet distances, blur, CLIP score, CapS, resumable generation, suites."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import scipy.linalg
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from torch import nn

from clipgen.data.shapes import ATTRIBUTE_VALUES
from clipgen.evaluation.image_vs_text import condition_gap
from clipgen.evaluation.prompts import prompt_list, shapes_prompts
from clipgen.evaluation.sharded_generation import generate_images, image_path, read_images
from clipgen.evaluation.suite import method_image_generator, run_suite, suite_summary
from clipgen.evaluation.token_regions import REGIONS, token_loss_by_region, token_regions
from clipgen.generation.prompt_parts import is_composed, parse_prompt
from clipgen.generation.text_to_image import Conditions, Generation, TextToImage
from clipgen.metrics.attributes import attribute_accuracy
from clipgen.metrics.caps import CaptionScorer, caps_from_nll
from clipgen.metrics.clip_score import clip_scores
from clipgen.metrics.frechet import FrechetSet, blur_images, state_from_npz
from clipgen.metrics.inception import InceptionFeatures, find_inception_weights
from tests.helpers import write_tiny_bundle

ROOT = Path(__file__).resolve().parent.parent


class ProjectPixels(nn.Module):
    """Fixed random projection of downsampled pixels: a cheap deterministic feature network."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.num_features = dim
        self.register_buffer("w", torch.randn(3 * 4 * 4, dim, generator=torch.Generator()
                                              .manual_seed(0)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)
        return x @ self.w


class FixedConvNet(nn.Module):
    """A small convolutional network with fixed (seeded) weights: nonlinear features of
    uint8 images, like Inception's, at test size."""

    def __init__(self, dim: int = 10, scale: float = 10.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.num_features, self.scale = dim, scale
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, dim))
        self.requires_grad_(False).eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scale * self.body(images.float() / 127.5 - 1)


def _random_images(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = 127.5 + scale * 60 * torch.randn(n, 3, 16, 16, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8)


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_of_a_set_with_itself_is_zero_and_matches_scipy():
    net = ProjectPixels()
    real, fake = _random_images(200, 0), _random_images(200, 1, scale=1.6)
    fd = FrechetSet(net)
    fd.update(real, real=True)
    fd.update(real, real=False)
    assert abs(fd.compute()[0.0]) < 1e-3
    fd.metrics[0.0].reset()  # keeps the real statistics
    fd.update(fake, real=False)
    want = _scipy_fid(net(real).double().numpy(), net(fake).double().numpy())
    assert fd.compute()[0.0] == pytest.approx(want, rel=1e-4)


def test_fid_on_a_fixed_network_matches_an_independent_computation():
    net = FixedConvNet()
    real = _random_images(300, 0)
    fake = (_random_images(300, 1, scale=0.5).float() * 0.6 + 20).to(torch.uint8)  # darker
    fd = FrechetSet(net)
    fd.update(real[:170], real=True)  # in uneven batches, as a suite feeds it
    fd.update(real[170:], real=True)
    fd.update(fake, real=False)
    want = _scipy_fid(net(real).double().numpy(), net(fake).double().numpy())
    assert want > 0.01 and fd.compute()[0.0] == pytest.approx(want, rel=1e-3)


def test_inception_score_matches_an_independent_computation():
    from clipgen.metrics.inception import inception_score_metric

    net = FixedConvNet(scale=100.0)  # logits confident enough to tell three families apart
    images = torch.cat([_random_images(60, 2), _random_images(60, 3, scale=3.0),
                        (_random_images(60, 4, scale=0.5).float() * 0.6 + 20).to(torch.uint8)])
    metric = inception_score_metric(net, splits=1)
    metric.update(images[:50])
    metric.update(images[50:])
    mean, _ = metric.compute()
    p = net(images).double().softmax(-1).numpy()
    marginal = p.mean(0, keepdims=True)
    want = np.exp((p * (np.log(p) - np.log(marginal))).sum(1).mean())
    assert want > 1.2 and float(mean) == pytest.approx(want, rel=1e-4)


def test_blur_smooths_images_and_shrinks_high_frequency_differences():
    noise = _random_images(64, 0)
    flat = torch.full((2, 3, 16, 16), 77, dtype=torch.uint8)
    assert torch.equal(blur_images(flat, 2), flat)
    assert torch.equal(blur_images(noise, 0), noise)
    stds = [blur_images(noise, r).float().std().item() for r in (0, 1, 2, 4)]
    assert stds == sorted(stds, reverse=True) and stds[-1] < 0.3 * stds[0]
    # two noise sets that differ only in amplitude: blurring brings them closer
    fd = FrechetSet(ProjectPixels(), radii=(0, 4))
    fd.update(_random_images(128, 0), real=True)
    fd.update(_random_images(128, 1, scale=2.0), real=False)
    values = fd.compute()
    assert values[4.0] < 0.5 * values[0.0]


def test_reference_statistics_round_trip(tmp_path):
    real, fake = _random_images(100, 0), _random_images(100, 1, scale=1.3)
    a = FrechetSet(ProjectPixels(), radii=(0, 2))
    a.update(real, real=True)
    a.save_real(tmp_path / "ref.pt")
    b = FrechetSet(ProjectPixels(), radii=(0, 2))
    b.load_real(tmp_path / "ref.pt")
    a.update(fake, real=False)
    b.update(fake, real=False)
    assert b.compute() == pytest.approx(a.compute())
    # the same statistics as mean and covariance in a reference npz
    feats = ProjectPixels()(real).double().numpy()
    np.savez(tmp_path / "ref.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    c = FrechetSet(ProjectPixels())
    c.load_real_state(state_from_npz(tmp_path / "ref.npz"))
    c.update(fake, real=False)
    assert c.compute()[0.0] == pytest.approx(a.compute()[0.0], rel=1e-6)


def _image_folder(root: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "cls").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            root / "cls" / f"{i}.png")
    return root


def test_reference_statistics_are_keyed_by_weights_and_real_files(tmp_path):
    from omegaconf import OmegaConf

    from clipgen.evaluation.reference_stats import fill_reference

    root = _image_folder(tmp_path / "real", 12)
    cfg = OmegaConf.create({
        "suite": {"name": "t", "real": {"num_images": 12, "npz": None, "dataset": {
            "_target_": "clipgen.data.image_folder.ImageFolderDataset", "root": str(root),
            "resolution": 16}}},
        "metrics": {"fid_radii": [0], "batch_size": 5}, "reference_dir": str(tmp_path / "ref")})
    fake = _random_images(12, 3)

    def fd_with(net):
        fd = FrechetSet(net)
        return fd, fill_reference(fd, cfg, "pixels")

    first, path = fd_with(ProjectPixels())
    assert path.is_file() and first.real_count() == 12
    again, same = fd_with(ProjectPixels())
    assert same == path  # same weights, same files: the cache is reused
    other_net = ProjectPixels()
    other_net.w.mul_(2)  # other weights, same architecture and name
    _, other_path = fd_with(other_net)
    assert other_path != path
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "cls" / "3.png")
    changed, changed_path = fd_with(ProjectPixels())  # one real image replaced
    assert changed_path not in (path, other_path)
    for fd in (first, changed):
        fd.update(fake, real=False)
    assert changed.compute()[0.0] != pytest.approx(first.compute()[0.0])


def test_missing_inception_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth"):
        find_inception_weights()


def test_inception_loads_a_local_weights_file(tmp_path, monkeypatch):
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict",
                              lambda self, sd: None):
        random_net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(random_net.state_dict(), hub / "weights-inception-2015-12-05-6726825d.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    net = InceptionFeatures(find_inception_weights(), "2048")
    feats = net(_random_images(2, 0))
    assert feats.shape == (2, 2048)
    assert torch.allclose(net.net.fc.weight, random_net.fc.weight)


def test_clip_score_conventions():
    scores = clip_scores(torch.tensor([0.3, -0.1]))
    assert scores["clip_score_hessel"] == pytest.approx(2.5 * 0.3 / 2)
    assert scores["clip_score_100"] == pytest.approx(15.0)
    assert scores["clip_cosine"] == pytest.approx(0.1)


def _tiny_captioner(folder: Path, pad_token: bool = True) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    words = ["<pad>", "<s>", "<unk>", "a", "red", "blue", "circle", "star", "on", "the", "left"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", unk_token="<unk>",
                                        **({"pad_token": "<pad>"} if pad_token else {}))
    torch.manual_seed(0)
    encoder = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64))
    decoder = GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_positions=32, n_embd=32,
                                         n_layer=1, n_head=2, add_cross_attention=True,
                                         bos_token_id=1, eos_token_id=1))
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = 1
    model.config.pad_token_id = 0 if pad_token else None  # GPT-2 captioners have none
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@torch.no_grad()
@pytest.mark.parametrize("pad_token", [True, False])
def test_caps_equals_a_hand_computation(tmp_path, pad_token):
    scorer = CaptionScorer(_tiny_captioner(tmp_path / "captioner", pad_token))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
              for _ in range(2)]
    captions = ["a red circle on the left", "blue star"]
    nll, ntok = scorer.token_nll(images, captions)
    by_hand = []
    for image, text in zip(images, captions):
        ids = scorer.tokenizer(text).input_ids
        pixels = scorer.processor(images=[image], return_tensors="pt").pixel_values
        logp = 0.0
        for t, token in enumerate(ids):  # feed the prefix, read the next token's probability
            prefix = torch.tensor([[1] + ids[:t]])
            logits = scorer.model(pixel_values=pixels, decoder_input_ids=prefix).logits
            logp += logits[0, -1].log_softmax(-1)[token].item()
        by_hand.append(np.exp(logp / len(ids)))
    assert ntok.tolist() == [6, 2]
    assert caps_from_nll(nll, ntok) == pytest.approx(float(np.mean(by_hand)), rel=1e-4)


def test_caps_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        CaptionScorer(tmp_path)


class CountingGenerator:
    """Images that encode (prompt, seed); raises after `fail_after` batches."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.batches = 0
        self.fail_after = fail_after

    def __call__(self, prompts, seed):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.batches += 1
        g = torch.Generator().manual_seed(seed)
        return torch.rand(len(prompts), 3, 8, 8, generator=g) * 2 - 1


def test_interrupted_generation_resumes_without_regenerating(tmp_path):
    prompts = prompt_list(["a red circle", "a blue star", "a green square"], repeats=3)  # 9
    settings = {"method": "test"}
    whole = tmp_path / "whole"
    generate_images(CountingGenerator(), prompts, whole, settings, batch_size=2, progress=False)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        generate_images(CountingGenerator(fail_after=3), prompts, part, settings, batch_size=2,
                        progress=False)
    assert len(list((part / "images").glob("*.png"))) == 6
    resumed = CountingGenerator()
    assert generate_images(resumed, prompts, part, settings, batch_size=2, progress=False) == 3
    assert resumed.batches == 2
    assert torch.equal(read_images(part, range(9)), read_images(whole, range(9)))
    assert not list((part / "images").glob(".*tmp"))
    with pytest.raises(ValueError, match="settings.method: .test. there, .other. now"):
        generate_images(CountingGenerator(), prompts, part, {"method": "other"}, batch_size=2)


def test_an_image_that_cannot_be_written_stops_generation(tmp_path):
    # PNGs are written in a thread while the next batch samples: its errors must surface
    def five_channels(prompts, seed):
        return torch.zeros(len(prompts), 5, 8, 8)

    prompts = prompt_list(["a red circle"], repeats=4)
    with pytest.raises(TypeError, match="Cannot handle this data type"):
        generate_images(five_channels, prompts, tmp_path, {"method": "test"}, batch_size=2,
                        progress=False)
    assert not list((tmp_path / "images").glob("*.png"))


def test_generation_shards_split_the_work(tmp_path):
    prompts = prompt_list(["a red circle"], repeats=7)
    for rank in range(3):
        generate_images(CountingGenerator(), prompts, tmp_path / "s", {}, batch_size=2,
                        rank=rank, world_size=3, progress=False)
    generate_images(CountingGenerator(), prompts, tmp_path / "one", {}, batch_size=2,
                    progress=False)
    assert torch.equal(read_images(tmp_path / "s", range(7)),
                       read_images(tmp_path / "one", range(7)))


def test_shapes_prompts_and_attribute_accuracy():
    prompts = shapes_prompts(samples_per_combination=2,
                             holdout=[{"color": "yellow", "shape": "triangle"}])
    assert len(prompts) == 8 * 5 * 2
    assert all(p.attributes["color"] in p.text and p.attributes["shape"] in p.text
               for p in prompts)
    assert sum(p.group == "heldout" for p in prompts) == 2
    reads = [dict(p.attributes) for p in prompts]
    reads[0]["color"] = "nothing"
    acc = attribute_accuracy(reads, prompts)
    assert acc["all"]["shape"]["accuracy"] == 1.0
    assert acc["all"]["color"]["accuracy"] == pytest.approx(1 - 1 / 80)
    assert acc["heldout"]["color_and_shape"] == {"accuracy": 1.0, "n": 2}
    # more prompts for the held-out combinations only; the seen prompts stay as they were
    more = shapes_prompts(samples_per_combination=2, heldout_samples_per_combination=10,
                          holdout=[{"color": "yellow", "shape": "triangle"}])
    held = [p for p in more if p.group == "heldout"]
    assert len(held) == 10 and {(p.attributes["color"], p.attributes["shape"])
                                for p in held} == {("yellow", "triangle")}
    assert len(more) == len(prompts) + 8
    assert [p for p in more if p.group == "seen"] == [p for p in prompts if p.group == "seen"]


def test_suite_summary_reads_shape_for_seen_and_heldout_combinations_apart():
    prompts = shapes_prompts(samples_per_combination=1,
                             holdout=[{"color": "yellow", "shape": "triangle"}])
    reads = [dict(p.attributes) for p in prompts]
    seen = [i for i, p in enumerate(prompts) if p.group == "seen"]
    for i in seen[:4]:
        reads[i]["shape"] = "nothing"
    report = {"metrics": {"attributes": attribute_accuracy(reads, prompts)},
              "timing": {"seconds_per_image": 0.5}}
    summary = suite_summary(report)
    assert summary["seen_shape"] == pytest.approx(round(1 - 4 / len(seen), 4))
    assert summary["heldout_shape"] == 1.0
    assert summary["shape"] == pytest.approx(round(1 - 4 / len(prompts), 4))
    assert summary["seconds_per_image"] == 0.5


def test_shapes_prompts_in_the_caption_templates_state_what_each_template_names():
    holdout = [{"color": "blue", "shape": "star"}]
    prompts = shapes_prompts(samples_per_combination=14, holdout=holdout, seed=3,
                             style="templates")
    assert len(prompts) == 8 * 5 * 14
    for p in prompts:
        assert p.attributes["shape"] in p.text
        for key, value in p.attributes.items():  # every stated value is in the text
            assert (value if key != "position" else value.split()[-1]) in p.text
        assert ("color" in p.attributes) == any(c in p.text for c in ATTRIBUTE_VALUES["color"])
    templates_used = {p.text.replace(p.attributes.get("color", "#"), "{c}") for p in prompts}
    assert len(templates_used) > 100  # many phrasings, not one
    named = {frozenset(p.attributes) for p in prompts}
    assert frozenset({"shape"}) in named and frozenset(ATTRIBUTE_VALUES) in named
    held = [p for p in prompts if p.group == "heldout"]
    assert held and all((p.attributes["color"], p.attributes["shape"]) == ("blue", "star")
                        for p in held)
    # a blue-star draw whose template leaves colour out is not a held-out prompt
    assert any(p.group == "seen" and p.attributes == {"shape": "star"} for p in prompts)
    with pytest.raises(ValueError, match="style"):
        shapes_prompts(style="fancy")


def test_heldout_prompts_by_analogy_compose_seen_combinations_to_net_weight_one():
    def articles_as_a(text: str) -> str:
        return re.sub(r"\ban\b", "a", text)

    holdout = [{"color": "yellow", "shape": "triangle"}, {"color": "blue", "shape": "star"}]
    for style in ("canonical", "templates"):
        plain = shapes_prompts(samples_per_combination=6, holdout=holdout, seed=2, style=style)
        composed = shapes_prompts(samples_per_combination=6, holdout=holdout, seed=2,
                                  style=style, heldout_phrasing="analogy", analogies=2)
        assert [p.attributes for p in composed] == [p.attributes for p in plain]
        for before, after in zip(plain, composed):
            if before.group == "seen":
                assert after.text == before.text
                continue
            parts = parse_prompt(after.text)
            assert len(parts) == 6 and sum(p.weight for p in parts) == pytest.approx(1)
            x, y = before.attributes["color"], before.attributes["shape"]
            net: dict[str, float] = {}
            for part in parts:
                words = part.text.replace(",", " ").split()
                (color,) = [c for c in ATTRIBUTE_VALUES["color"] if c in words]
                (shape,) = [s for s in ATTRIBUTE_VALUES["shape"] if s in words]
                assert {"color": color, "shape": shape} not in holdout  # only seen ones
                for word in (color, shape):
                    net[word] = net.get(word, 0.0) + part.weight
                # every other word is the plain prompt's (articles follow the words)
                swapped = re.sub(rf"\b{shape}\b", y, re.sub(rf"\b{color}\b", x, part.text))
                assert articles_as_a(swapped) == articles_as_a(before.text)
            assert net.pop(x) == pytest.approx(1) and net.pop(y) == pytest.approx(1)
            assert all(v == pytest.approx(0) for v in net.values()), net
    with pytest.raises(ValueError, match="analogies must lie in"):
        shapes_prompts(holdout=holdout, heldout_phrasing="analogy", analogies=5)
    with pytest.raises(ValueError, match="phrasing"):
        shapes_prompts(holdout=holdout, heldout_phrasing="parts")


def test_suite_samples_plain_and_composed_prompts_of_one_batch_apart(tmp_path):
    pipe = TextToImage.from_bundle(write_tiny_bundle(tmp_path / "bundle"))
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("eval", overrides=["n_candidates=2", "device=cpu"])
    generate = method_image_generator(pipe, cfg)
    mixed = ["a red circle", "a blue square AND a red star NOT a red square", "a green star",
             "a yellow circle :: 2"]
    images = generate(mixed, 3)
    assert images.shape == (4, 3, 16, 16)
    plain = generate([mixed[0], mixed[2]], 3)
    assert torch.equal(images[[0, 2]], plain)
    assert torch.equal(images[1:2], generate(mixed[1:2], 3))
    assert torch.equal(images[3:4], generate(mixed[3:4], 3))


def test_shapes_suite_writes_a_report_and_resumes(tmp_path):
    bundle = write_tiny_bundle(tmp_path / "bundle")
    overrides = [f"bundle={bundle}", "suite=shapes", "suite.limit=12", "batch_size=4",
                 "suite.real.num_images=32", f"out_dir={tmp_path}/out",
                 f"reference_dir={tmp_path}/ref", "device=cpu"]
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    report = run_suite(cfg)
    out = tmp_path / "out"
    assert {"report.json", "report.md", "grid.png", "manifest.json"} <= {
        p.name for p in out.iterdir()}
    assert report["timing"]["generated_now"] == 12 and report["timing"]["images_per_s"] > 0
    metrics = report["metrics"]
    assert metrics["fd_clip_real_images"] == 32 and metrics["fd_clip"] > 0
    assert 0 <= metrics["attributes"]["all"]["color"]["accuracy"] <= 1
    assert metrics["attributes"]["all"]["color"]["n"] == 12
    outline = metrics["attributes"]["all"]["clean_outline"]  # every prompt names a shape
    assert outline["n"] == 12 and 0 <= outline["accuracy"] <= 1 and 0 <= outline["mean_iou"] <= 1
    assert "clip_score_hessel" in json.loads((out / "report.json").read_text())["metrics"]
    assert len(list((tmp_path / "ref").glob("shapes-clip-*.pt"))) == 1
    first = image_path(out, 0).stat().st_mtime_ns
    again = run_suite(cfg)  # nothing left to generate; the reference comes from the cache
    assert image_path(out, 0).stat().st_mtime_ns == first
    assert again["metrics"]["fd_clip"] == pytest.approx(metrics["fd_clip"])
    assert again["timing"] == report["timing"] and report["timing"]["generated_now"] == 12
    assert report["generator"]["model"]["prior"] == json.loads(
        (out / "manifest.json").read_text())["settings"]["model"]["prior"]
    # the same bundle path with other weights (a new release) must not mix into the folder
    other = write_tiny_bundle(tmp_path / "other", seed=1)
    (bundle / "prior.safetensors").write_bytes((other / "prior.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"model\.prior: '[0-9a-f]+' there"):
        run_suite(cfg)


def test_token_regions_split_object_near_far_and_border():
    images = torch.ones(1, 3, 64, 64)
    images[:, :, 24:34, 24:34] = -1.0  # a 10 px object over token rows/columns 3 and 4 at f8
    regions = token_regions(images, (8, 8), near_px=8)[0]
    counts = {name: int((regions == i).sum()) for i, name in enumerate(REGIONS)}
    # object: 2x2 tokens; near: pixels 16..41 reach tokens 2..5 (4x4) less the object;
    # border: the outer ring of 28 tokens; far: the rest.
    assert counts == {"object": 4, "near background": 12, "far background": 20, "border": 28}
    assert (regions[3:5, 3:5] == 0).all() and regions[0, 0] == 3


def test_token_loss_by_region_adds_up(tmp_path):
    t2i = TextToImage.from_bundle(write_tiny_bundle(tmp_path))
    report = token_loss_by_region(t2i, num_images=6, batch_size=4)
    keys = [name.replace(" ", "_") for name in REGIONS]
    assert sum(report[f"{k}_tokens"] for k in keys) == pytest.approx(64, abs=0.2)
    assert sum(report[f"{k}_share"] for k in keys) == pytest.approx(1.0, abs=0.01)
    assert sum(report[f"{k}_nats_per_image"] for k in keys) == pytest.approx(
        report["nats_per_image"], abs=0.3)
    # a random prior is close to uniform over the 24 codes
    assert abs(report["nats_per_token"] - np.log(24)) < 0.5


class _EchoGenerator:
    """Stands in for TextToImage: an image condition is the image itself, a text condition is
    a flat white image, and sampling returns the condition as the generated image."""

    vqgan = mock.Mock(config=mock.Mock(resolution=64))

    def image_conditions(self, images):
        flat = images.flatten(1)
        return Conditions(flat, flat)

    def text_conditions(self, texts):
        white = torch.ones(len(texts), 3 * 64 * 64)
        return Conditions(white, white)

    def generate(self, cond, sampling=None, seed=0, batch_size=16):
        return [Generation(row.view(1, 3, 64, 64), torch.zeros(1)) for row in cond.prior]


def test_condition_gap_pairs_each_sample_with_its_own_attributes():
    # 10 renders in batches of 4: image-conditioned samples are the renders (read back
    # correctly), text-conditioned ones are blank (no colour or shape to read).
    report = condition_gap(_EchoGenerator(), num_images=10, batch_size=4)
    assert report["images"] == 10
    assert report["image_color"] == 1.0 and report["image_shape"] >= 0.9
    assert report["image_position"] >= 0.9 and report["image_background"] == 1.0
    assert report["text_color"] == 0.0 and report["text_shape"] == 0.0
    assert report["text_background"] < 1.0
    assert "by_combination" not in report
    held = condition_gap(_EchoGenerator(), num_images=12, batch_size=4, split="heldout",
                         holdout=[{"color": "blue", "shape": "star"},
                                  {"color": "yellow", "shape": "triangle"}])
    assert held["split"] == "heldout" and held["image_color_and_shape"] >= 0.8
    combos = held["by_combination"]
    assert set(combos) == {"blue star", "yellow triangle"}
    assert sum(c["images"] for c in combos.values()) == 12
    assert all(c["text_shape"] == 0.0 and c["image_shape"] >= 0.8 for c in combos.values())


def test_a_reference_subset_covers_every_class(tmp_path):
    from clipgen.data.image_folder import ImageFolderDataset
    from clipgen.evaluation.reference_stats import reference_indices

    for c in range(4):
        (tmp_path / "real" / f"c{c}").mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (8, 8)).save(tmp_path / "real" / f"c{c}" / f"{i}.png")
    folder = ImageFolderDataset(tmp_path / "real", resolution=8)
    picked = reference_indices(len(folder), 8)
    assert len(set(picked)) == 8 and {folder.files[i][1] for i in picked} == {0, 1, 2, 3}
    assert reference_indices(20, 50) == list(range(20))


def test_stale_temporary_files_are_removed_by_age(tmp_path):
    import os
    import time

    from clipgen.atomic import remove_stale_temps

    old, fresh, other = (tmp_path / ".000001.png.77.tmp", tmp_path / ".000002.png.78.tmp",
                         tmp_path / "000003.png")
    for path in (old, fresh, other):
        path.write_bytes(b"")
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert remove_stale_temps(tmp_path, min_age_s=60) == [old]
    assert fresh.exists() and other.exists()


def test_exported_weights_are_written_atomically_with_the_usual_permissions(tmp_path):
    import os

    from clipgen.checkpoint import load_safetensors, save_safetensors

    old = os.umask(0o027)
    try:
        # safetensors itself writes 0600 files, unreadable to a group sharing a bundle
        save_safetensors({"a": torch.arange(3.0)}, tmp_path / "w.safetensors")
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(old)
    mode = (tmp_path / "w.safetensors").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "w.safetensors"]
    assert torch.equal(load_safetensors(tmp_path / "w.safetensors")["a"], torch.arange(3.0))


@pytest.mark.parametrize("override, message", [
    ("suite.limit=0", "suite.limit must be a whole number >= 1"),
    ("suite.prompts.samples_per_combination=0", "give no prompt"),
    ("n_candidates=0", "n_candidates must be"),
    ("batch_size=0", "batch_size must be"),
    ("steps=[score]", "unknown steps"),
])
def test_bad_suite_settings_leave_the_folder_untouched(tmp_path, override, message):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("eval", overrides=[f"bundle={tmp_path}/not-loaded", f"out_dir={tmp_path}/o",
                                         "device=cpu", override])
    with pytest.raises(ValueError, match=message):
        run_suite(cfg)
    assert not (tmp_path / "o").exists()  # no manifest to poison the next good run


def test_suite_plots_draw_the_numbers_of_the_report(tmp_path):
    from clipgen.evaluation.plots import (
        DPI,
        accuracy_figure,
        confusion_figure,
        frechet_by_radius,
        write_suite_plots,
    )
    from clipgen.metrics.attributes import attribute_confusion

    prompts = shapes_prompts(samples_per_combination=1,
                             holdout=[{"color": "blue", "shape": "star"}])
    reads = [dict(p.attributes) for p in prompts]
    reads[0]["color"], reads[1]["shape"] = "green", None  # one wrong colour, one unread shape
    confusion = attribute_confusion(reads, prompts, ATTRIBUTE_VALUES)
    metrics = {"attributes": attribute_accuracy(reads, prompts),
               "attribute_confusion": confusion, "fid": 30.0, "fid_1": 20.0, "fid_4": 5.0}
    report = json.loads(json.dumps({"suite": "shapes", "metrics": metrics}))  # as stored
    colors = report["metrics"]["attribute_confusion"]["seen"]["color"]
    asked, drawn = colors["labels"].index(prompts[0].attributes["color"]), colors[
        "labels"].index("green")
    assert colors["counts"][asked][drawn] == 1
    assert sum(map(sum, colors["counts"])) == sum(p.group == "seen" for p in prompts)
    shapes = report["metrics"]["attribute_confusion"]["seen"]["shape"]
    assert shapes["columns"][-1] == "unread" and sum(r[-1] for r in shapes["counts"]) == 1

    fig = confusion_figure(report["metrics"]["attribute_confusion"]["seen"], "t")
    for ax, table in zip(fig.axes, report["metrics"]["attribute_confusion"]["seen"].values()):
        assert ax.images[0].get_array().tolist() == table["counts"]
    bars = accuracy_figure({"a": report}).axes[0].patches
    by_key = report["metrics"]["attributes"]["all"]
    assert [b.get_height() for b in bars] == [by_key[k]["accuracy"] for k in sorted(by_key)]
    assert frechet_by_radius(report["metrics"]) == {"fid": {0.0: 30.0, 1.0: 20.0, 4.0: 5.0}}

    paths = write_suite_plots(report, tmp_path, "python eval/evaluate.py suite=shapes")
    assert [p.name for p in paths] == ["confusion_heldout.png", "confusion_seen.png",
                                       "accuracy.png", "fid_by_radius.png"]
    with Image.open(tmp_path / "fid_by_radius.png") as im:
        assert im.format == "PNG" and im.size == (6 * DPI, round(4.2 * DPI))
    with Image.open(tmp_path / "confusion_seen.png") as im:
        assert im.size == (round(4.2 * 5 * DPI), round(4.6 * DPI))  # five attributes


def test_run_plot_draws_every_logged_metric_of_every_version(tmp_path):
    from clipgen.evaluation.run_plots import plot_run, read_run_metrics, run_figure

    for version, rows in ((0, [(0, "1.0", ""), (5, "0.8", "21.5")]),
                          (1, [(5, "0.7", ""), (10, "0.5", "24.0")])):  # resumed at step 5
        folder = tmp_path / "logs" / f"version_{version}"
        folder.mkdir(parents=True)
        lines = ["epoch,step,train/loss,val/psnr"] + [f"0,{s},{a},{b}" for s, a, b in rows]
        (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    curves = read_run_metrics(tmp_path)
    assert curves == {"train/loss": {0: 1.0, 5: 0.7, 10: 0.5}, "val/psnr": {5: 21.5, 10: 24.0}}
    fig = run_figure(curves, "t")
    for ax, curve in zip(fig.axes, curves.values()):
        x, y = ax.lines[0].get_data()
        assert list(x) == list(curve) and list(y) == list(curve.values())
    path = plot_run(tmp_path, "python eval/plot_run.py run")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (840, 360)
    with pytest.raises(FileNotFoundError, match="no CSV logs"):
        read_run_metrics(tmp_path / "nothing")


def test_sampling_speed_plot_draws_the_benchmark_rows():
    from clipgen.evaluation.plots import sampling_speed_figure

    rows = [{"model": "m", "batch": b, "decoder": d, "dtype": "float32", "compile": False,
             "tokens_per_s": tps, "roofline_fraction": frac}
            for b, d, tps, frac in ((1, "static", 100.0, 0.25), (4, "static", 300.0, 0.1875),
                                    (1, "hf", 50.0, 0.125), (4, "hf", 120.0, 0.075))]
    rows.append({"model": "m", "batch": 16, "decoder": "hf", "dtype": "float32",
                 "compile": False, "seconds": "skipped (est. 900)"})
    ax = sampling_speed_figure(rows, "t").axes[0]
    lines = {line.get_label(): line.get_data() for line in ax.lines}
    assert [list(v) for v in lines["static float32"]] == [[1, 4], [100.0, 300.0]]
    assert [list(v) for v in lines["hf float32"]] == [[1, 4], [50.0, 120.0]]
    # the roofline: tokens/s at the weight-read limit, rising with the batch
    assert [list(v) for v in lines["weight-read roofline (float32)"]] == [[1, 4], [400.0, 1600.0]]


def _gpu_check(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "eval" / "gpu_check.py"), f"out={out}",
                           "device=cpu", *overrides, f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_gpu_check_runs_every_part_at_tiny_sizes_on_cpu(tmp_path):
    proc, report = _gpu_check(tmp_path)
    rows = {row["part"]: row for row in report["rows"]}
    assert set(rows) == {"vqgan_f16_16384", "prior_gpt2_medium", "prior_gpt2_xl",
                         "decode_gpt2_medium", "suite_coco_generation"}
    assert all(row["status"] == "ok" for row in rows.values()), report["rows"]
    for part in ("vqgan_f16_16384", "prior_gpt2_medium", "prior_gpt2_xl"):
        assert rows[part]["seconds_per_step"] > 0 and rows[part]["tflops"] > 0
        assert rows[part]["peak_memory_gb"] > 0
    assert rows["prior_gpt2_xl"]["activation_checkpointing"] is True
    assert 0 < rows["decode_gpt2_medium"]["roofline_fraction"]
    assert rows["decode_gpt2_medium"]["dtype"] == "bfloat16"
    decode = [r for r in report["rows"] if r["part"] == "decode_gpt2_medium"]
    assert [(r["weights"], r["speculative"]) for r in decode] == [
        ("dtype", ""), ("dtype", "jacobi 4"), ("int8", ""), ("int8", "jacobi 4")]
    assert all(2 <= r["steps_per_image"] <= 16 for r in decode if r["speculative"])
    assert decode[2]["weight_bytes_per_token"] < decode[0]["weight_bytes_per_token"]
    assert rows["suite_coco_generation"]["pngs_written"] == 4
    assert "| seconds_per_step |" in proc.stdout and (tmp_path / "check.md").is_file()


def test_gpu_check_reports_a_part_past_its_time_limit_as_failed(tmp_path):
    _, report = _gpu_check(tmp_path, "parts=[decode_gpt2_medium]",
                           "timeouts.decode_gpt2_medium=2")
    assert report["rows"] == [{"part": "decode_gpt2_medium",
                               "status": "failed: timed out after 2 s",
                               "part_s": report["rows"][0]["part_s"]}]
    assert report["rows"][0]["part_s"] < 10


def few_prompts() -> list:
    """Suite prompts for the warning test: one the Shapes world draws, one it cannot."""
    from clipgen.evaluation.prompts import EvalPrompt

    return [EvalPrompt("a red circle"), EvalPrompt("two blue stars")]


def test_a_suite_names_the_prompts_the_shapes_world_cannot_draw(tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from clipgen.evaluation.suite import run_suite
    from tests.helpers import write_tiny_bundle

    bundle = write_tiny_bundle(tmp_path / "bundle")
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("eval", overrides=[f"bundle={bundle}", "steps=[generate]", "batch_size=2",
                                         f"out_dir={tmp_path}/e", "device=cpu",
                                         "n_candidates=1"])
    cfg.suite.prompts = {"_target_": "tests.test_eval.few_prompts"}
    run_suite(cfg)
    err = capsys.readouterr().err
    assert "warning: 1 of 2 prompts ask for what the Shapes world cannot draw" in err
    assert "'two blue stars'" in err and "'a red circle'" not in err


def test_suite_throughput_times_every_variant_and_batch_size(tmp_path):
    from clipgen.jobs import suite_throughput
    from clipgen.jobs.suite_throughput import suite_throughput_rows

    bundle = write_tiny_bundle(tmp_path / "bundle")
    rows = suite_throughput_rows([f"bundle={bundle}", "suite=shapes", "device=cpu"],
                                 {"plain": [], "int8": ["sampling.weights=int8_dynamic"]},
                                 batches=[2, 4], images=6)
    assert [(r["variant"], r["batch_size"]) for r in rows] == [
        ("plain", 2), ("plain", 4), ("int8", 2), ("int8", 4)]
    assert all(r["images"] == 6 and r["images_per_s"] > 0 for r in rows)
    assert rows[0]["x_first"] == 1.0
    # a variant's own prompt phrasing is the one timed
    seen: list[list[str]] = []
    real = suite_throughput.generate_images

    def recording(generate, prompts, *args, **kwargs):
        seen.append([p.text for p in prompts])
        return real(generate, prompts, *args, **kwargs)

    with mock.patch.object(suite_throughput, "generate_images", side_effect=recording):
        suite_throughput_rows([f"bundle={bundle}", "suite=shapes", "device=cpu",
                               "suite.prompts.samples_per_combination=0",
                               "suite.prompts.heldout_samples_per_combination=2"],
                              {"plain": [], "analogy": ["suite.prompts.heldout_phrasing=analogy"]},
                              batches=[4], images=4)
    assert not any(is_composed(t) for t in seen[0]) and all(is_composed(t) for t in seen[1])
    with pytest.raises(ValueError, match="fewer than images"):
        suite_throughput_rows([f"bundle={bundle}", "suite=shapes", "suite.limit=3",
                               "device=cpu"], {"plain": []}, [2], images=6)
