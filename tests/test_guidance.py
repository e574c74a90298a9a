"""The CLIP-guided generators: optimisation of the VQGAN latent and evolutionary search."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from clipgen.generation.clip_guided.evolve import EvolveConfig, evolve_latents
from clipgen.generation.clip_guided.optimize import OptimizeConfig, optimize_latents
from clipgen.generation.text_to_image import TextToImage
from clipgen.jobs.sample_run import run_sampling
from tests.helpers import write_tiny_bundle
from tests.test_sampling import ROOT


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return TextToImage.from_bundle(write_tiny_bundle(tmp_path_factory.mktemp("bundle")))


def _cond(pipe):
    return pipe.text_conditions(["a red circle", "a blue star"]).clip


def test_optimize_raises_clip_similarity_and_is_deterministic(pipe):
    cfg = OptimizeConfig(steps=15, lr=0.1, cutouts=4, frame_every=5)
    a = optimize_latents(pipe.vqgan, pipe.clip, _cond(pipe), cfg, seed=1)
    assert a.similarity.shape == (16, 2)
    assert (a.similarity[-1] > a.similarity[0] + 0.01).all()
    assert len(a.frames) == 4 and a.frames[0].shape == a.images.shape
    b = optimize_latents(pipe.vqgan, pipe.clip, _cond(pipe), cfg, seed=1)
    assert torch.equal(a.images, b.images)
    assert not any(p.grad is not None for p in pipe.vqgan.parameters())


def test_optimize_can_start_from_an_image(pipe):
    start = torch.rand(1, 3, 16, 16) * 2 - 1
    cfg = OptimizeConfig(steps=0, quantize=True, frame_every=0)
    result = optimize_latents(pipe.vqgan, pipe.clip, _cond(pipe)[:1], cfg, init_images=start)
    with torch.no_grad():
        assert torch.allclose(result.images, pipe.vqgan(start)[0].clamp(-1, 1), atol=1e-5)


@pytest.mark.parametrize("algorithm", ["ga", "cma"])
def test_evolve_raises_fitness_and_is_deterministic(pipe, algorithm):
    cfg = EvolveConfig(algorithm=algorithm, population=8, generations=8, elite=2)
    a = evolve_latents(pipe.vqgan, pipe.clip, _cond(pipe), cfg, seed=3)
    assert a.best.shape == (9, 2)
    assert (a.best[-1] > a.best[0]).all()
    if algorithm == "ga":  # elitism never loses the best
        assert (a.best[1:] >= a.best[:-1] - 1e-6).all()
    assert (a.fitness[:, :-1] >= a.fitness[:, 1:]).all()  # ranked, best first
    assert a.images.shape == (2, 8, 3, 16, 16)
    b = evolve_latents(pipe.vqgan, pipe.clip, _cond(pipe), cfg, seed=3)
    assert torch.equal(a.latents, b.latents)


def test_sample_py_optimize_writes_the_animation(tmp_path):
    bundle = write_tiny_bundle(tmp_path / "bundle")
    Image.new("RGB", (20, 20), (200, 30, 30)).save(tmp_path / "start.png")
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("sample", overrides=[
            f"bundle={bundle}", "method=optimize", "prompts=[a red circle]",
            "samples_per_prompt=2", "optimize.steps=4", "optimize.frame_every=2",
            f"init_image={tmp_path / 'start.png'}", f"out_dir={tmp_path}/out"])
    out = run_sampling(cfg)
    gif = out / "000_a_red_circle_progress.gif"
    with Image.open(gif) as im:
        assert im.n_frames == 3
    assert (out / "000_a_red_circle" / "01.png").is_file()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("sample", overrides=[f"bundle={bundle}", "method=evolve",
                                           "samples_per_prompt=3", "evolve.population=4",
                                           "evolve.generations=1", f"out_dir={tmp_path}/e"])
    too_many = cfg.copy()
    too_many.samples_per_prompt = 5
    with pytest.raises(ValueError, match="exceeds the population"):
        run_sampling(too_many)
    assert len(list((run_sampling(cfg) / "000_a_red_circle").glob("*.png"))) == 3
