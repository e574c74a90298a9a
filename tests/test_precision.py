"""Each stage, evaluation path and generator in each precision, forced explicitly: what `auto`
would pick depends on the processor (bf16-mixed on CPUs with native bf16, fp32 elsewhere), so
no test here relies on it. Runs are tiny because bf16 is emulated, and slow, on CPUs without
native bf16."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import clipgen.run_info as run_info
from clipgen.jobs.training import run_training
from clipgen.lit.clip_module import CLIPModule
from clipgen.lit.prior_module import PriorModule
from clipgen.lit.vqgan_module import VQGANModule
from tests.helpers import TINY_STAGE, TINY_TRAINER, tiny_prior_overrides, write_tiny_bundle

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["trainer.max_steps=2", "trainer.val_check_interval=2", "checkpoint_every_n_steps=2",
         "plot_curves=false"]
# What validation logs for each stage: proof that it ran to its end in the forced precision.
VALIDATION_METRIC = {"vqgan": "val/psnr", "clip": "val/zero_shot_color", "prior": "val/token_loss",
                     "prior_text": "val/token_loss",
                     "prior_clip_text": "val/token_loss"}


def _stage_overrides(stage: str, folder: Path) -> list[str]:
    if stage == "vqgan":  # with the discriminator from the first step
        return [*TINY_STAGE["vqgan"], *TINY_TRAINER, "model.loss.disc_start=0"]
    if stage == "clip":
        return [*TINY_STAGE["clip"], *TINY_TRAINER]
    trainer = [t for t in TINY_TRAINER if not t.startswith("data.val.length")]
    if stage == "prior":  # with the embedding loss: decodes and re-embeds every batch
        return [*tiny_prior_overrides(folder), *trainer, "model.train.emb_loss_weight=0.2"]
    condition = stage.removeprefix("prior_")
    experiment = {"text": "shapes_prior_text", "clip_text": "shapes_prior_clip_text"}[condition]
    overrides = tiny_prior_overrides(folder, captions_per_image=2)
    return [f"experiment={experiment}", *overrides[1:], *trainer, "model.prior.text_layers=1"]


def _train(stage: str, precision: str, folder: Path) -> tuple:
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[*_stage_overrides(stage, folder), *STEPS,
                                          f"trainer.precision={precision}",
                                          f"run_dir={folder / 'run'}"])
    return run_training(cfg), folder / "run"


@pytest.fixture
def autocast_seen(monkeypatch) -> set[tuple[str, str]]:
    """(step, dtype) of every training and validation step of any stage: the autocast dtype
    on the CPU, or float32 when autocast is off."""
    seen: set[tuple[str, str]] = set()
    for cls in (VQGANModule, CLIPModule, PriorModule):
        for hook in ("training_step", "validation_step"):
            original = getattr(cls, hook)

            def recorded(self, *args, _original=original, _hook=hook, **kwargs):
                dtype = (torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                         else torch.float32)
                seen.add((_hook, str(dtype).removeprefix("torch.")))
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(cls, hook, recorded)
    return seen


def _logged(run_dir: Path) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for path in run_dir.glob("logs/version_*/metrics.csv"):
        with open(path) as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if value and key not in ("step", "epoch"):
                        values.setdefault(key, []).append(float(value))
    return values


@pytest.mark.parametrize("stage", ["vqgan", "clip", "prior", "prior_text", "prior_clip_text"])
def test_each_stage_trains_and_validates_in_bf16_mixed(stage, autocast_seen, tmp_path):
    trainer, run_dir = _train(stage, "bf16-mixed", tmp_path)
    assert trainer.precision == "bf16-mixed"
    assert autocast_seen == {("training_step", "bfloat16"), ("validation_step", "bfloat16")}
    logged = _logged(run_dir)
    assert VALIDATION_METRIC[stage] in logged, sorted(logged)
    losses = [v for k, vs in logged.items() if k.startswith("train/") and "loss" in k for v in vs]
    assert losses and all(math.isfinite(v) for v in losses)


def test_16_mixed_on_cpu_is_said_to_run_as_bf16_mixed():
    # Lightning runs 16-mixed as bf16-mixed on a CPU accelerator; the printed choice says so
    assert run_info.training_precision("16-mixed", "cpu") == (
        "bf16-mixed", "16-mixed asked for: Lightning runs it as bf16-mixed on CPU")
    assert run_info.training_precision("16-mixed", "gpu") == ("16-mixed", "as configured")


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_auto_precision_trains_as_the_hardware_check_says(fast_bf16, autocast_seen, tmp_path,
                                                          monkeypatch):
    monkeypatch.setattr(run_info, "cpu_has_fast_bf16", lambda: fast_bf16)
    trainer, _ = _train("clip", "auto", tmp_path)
    dtype = "bfloat16" if fast_bf16 else "float32"
    assert trainer.precision == ("bf16-mixed" if fast_bf16 else "32-true")
    assert autocast_seen == {("training_step", dtype), ("validation_step", dtype)}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from clipgen.generation.text_to_image import TextToImage

    return TextToImage.from_bundle(write_tiny_bundle(tmp_path_factory.mktemp("bundle")))


METHOD_SETTINGS = {"clipgen": {"dtype": "bfloat16", "top_k": 8},
                   "optimize": {"dtype": "bfloat16", "steps": 2, "cutouts": 2},
                   "evolve": {"dtype": "bfloat16", "generations": 2, "population": 4}}


@pytest.mark.parametrize("method", list(METHOD_SETTINGS))
def test_each_generator_runs_in_bf16_and_returns_fp32_images(pipe, method, monkeypatch):
    from clipgen.generation.generators import generate_by_method

    dtypes = set()
    original = pipe.clip.model.encode_image

    def encode_image(*args, **kwargs):  # the precision CLIP's image tower ran in
        out = original(*args, **kwargs)
        dtypes.add(out.dtype)
        return out

    monkeypatch.setattr(pipe.clip.model, "encode_image", encode_image)
    results, _ = generate_by_method(pipe, method, pipe.text_conditions(["a red circle"] * 2),
                                    keep=2, settings=METHOD_SETTINGS[method], n_candidates=2)
    for result in results:
        assert result.images.dtype == torch.float32 and result.images.shape == (2, 3, 16, 16)
        assert torch.isfinite(result.images).all() and torch.isfinite(result.clip_cosine).all()
    # clipgen samples the prior in bf16 and reranks in fp32; the CLIP-guided methods run
    # their VQGAN and CLIP passes under bf16 autocast
    assert dtypes == ({torch.float32} if method == "clipgen" else {torch.bfloat16})


def test_clipgen_generation_under_bf16_autocast_reranks_in_fp32(pipe):
    cond = pipe.text_conditions(["a red circle", "a blue star"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        results = pipe.generate(cond, n_candidates=3, keep=2)
    assert all(r.clip_cosine.dtype == torch.float32 and r.images.dtype == torch.float32
               for r in results)
    assert all(bool((r.clip_cosine[:-1] >= r.clip_cosine[1:]).all()) for r in results)


def test_evaluation_metrics_under_bf16_autocast_match_fp32(pipe, tmp_path):
    import numpy as np
    from PIL import Image

    from clipgen.metrics.caps import CaptionScorer, caps_from_nll
    from clipgen.metrics.clip_score import clip_scores
    from clipgen.metrics.frechet import CLIPImageFeatures, FrechetSet
    from clipgen.metrics.inception import inception_score_metric
    from tests.test_eval import FixedConvNet, _random_images, _tiny_captioner

    real, fake = _random_images(40, 0), _random_images(40, 1, scale=1.6)
    scorer = CaptionScorer(_tiny_captioner(tmp_path / "captioner"))
    pictures = [Image.fromarray(np.asarray(im.permute(1, 2, 0))) for im in fake[:2]]
    prompts = ["a red circle on the left", "blue star"]

    def metrics() -> dict[str, float]:
        out = {}
        for name, net in (("fd_clip", CLIPImageFeatures(pipe.clip)), ("fd_conv", FixedConvNet())):
            fd = FrechetSet(net)
            fd.update(real, real=True)
            fd.update(fake, real=False)
            out[name] = fd.compute()[0.0]
        torch.manual_seed(0)
        score = inception_score_metric(FixedConvNet(scale=100.0), splits=1)
        score.update(torch.cat([real, fake]))
        out["is"] = float(score.compute()[0])
        images = fake[:2].float() / 127.5 - 1
        cosine = (pipe.clip.encode_image(images) * pipe.clip.encode_text(prompts)).sum(-1)
        out["clip_score"] = clip_scores(cosine)["clip_score_100"]
        out["caps"] = caps_from_nll(*scorer.token_nll(pictures, prompts))
        return out

    with torch.no_grad():
        fp32 = metrics()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = metrics()
    assert all(math.isfinite(v) for v in bf16.values())
    for name, value in fp32.items():  # bf16 keeps 8 bits of mantissa: about 1% of each value
        assert bf16[name] == pytest.approx(value, rel=0.1, abs=1e-3), name
