import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from clipgen.data.transforms import to_pil
from clipgen.generation.sampling import filter_logits, rerank, sample_tokens
from clipgen.generation.text_to_image import TextToImage, unsampled_canvas
from clipgen.jobs.sample_run import run_sampling
from clipgen.models.prior import CLIPPrior, PriorConfig
from tests.helpers import write_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    return CLIPPrior(PriorConfig(vocab_size=50, n_tokens=12, cond_dim=16, n_prefix=2, n_layer=2,
                                 n_embd=32, n_head=2)).eval()


@pytest.fixture(scope="module")
def shipped_pipe():
    """The shipped Shapes bundle, loaded once (the prior checks the encoders' fingerprints)."""
    from clipgen.models.bundle import default_bundle

    return TextToImage.from_bundle(default_bundle())


def _cond(n=3):
    return torch.nn.functional.normalize(torch.randn(n, 16, generator=torch.Generator()
                                                     .manual_seed(1)), dim=-1)


def test_sampling_is_deterministic_for_a_seed(prior):
    a = sample_tokens(prior, _cond(), generator=torch.Generator().manual_seed(3))
    b = sample_tokens(prior, _cond(), generator=torch.Generator().manual_seed(3))
    c = sample_tokens(prior, _cond(), generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False,
                                                                          False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False,
                                                                          False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.97)).tolist() == [[True, True, True,
                                                                           True]]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_p=0.7)).tolist() == [[False, True, False,
                                                                            True]]


def test_rerank_returns_highest_scores_best_first():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.8]])
    assert rerank(scores, 2).tolist() == [[1, 2], [2, 0]]
    with pytest.raises(ValueError):
        rerank(scores, 4)


def test_generate_keeps_best_candidates(tmp_path):
    t2i = TextToImage.from_bundle(write_tiny_bundle(tmp_path / "bundle"))
    cond = t2i.text_conditions(["a red circle", "a blue star"])
    results = t2i.generate(cond, n_candidates=4, keep=2, seed=0, batch_size=3)
    assert len(results) == 2 and results[0].images.shape == (2, 3, 16, 16)
    everything = t2i.generate(cond, n_candidates=4, keep=4, seed=0, batch_size=3)
    for best, every in zip(results, everything):
        assert torch.allclose(best.clip_cosine, every.clip_cosine[:2])
        assert torch.equal(best.clip_cosine, every.clip_cosine.sort(descending=True).values[:2])


def _sample(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "sample.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_sample_py_writes_the_promised_files(tmp_path):
    bundle = write_tiny_bundle(tmp_path / "bundle")
    (tmp_path / "prompts.txt").write_text("a red circle\n\na blue star\n\ntwo circles\n")
    out = tmp_path / "out"
    run = _sample(f"bundle={bundle}", f"prompt_file={tmp_path / 'prompts.txt'}",
                  "samples_per_prompt=2", "n_candidates=3", f"hydra.run.dir={out}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == (["a red circle"] * 2 + ["a blue star"] * 2
                                              + ["two circles"] * 2)
    # the one prompt the Shapes world cannot draw is named, and still sampled
    assert "warning: prompt 'two circles' asks for what the Shapes world cannot draw: " \
           "several objects" in run.stderr
    assert run.stderr.count("warning: prompt") == 1
    assert all((out / r["file"]).is_file() for r in records)
    assert (out / "000_a_red_circle_grid.png").is_file()
    assert (out / "001_a_blue_star_grid.png").is_file()
    assert {"clip_score", "seed", "settings"} <= set(records[0])


def _sample_cfg(tmp_path, *overrides):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("sample", overrides=[f"out_dir={tmp_path}/o", *overrides])


def test_sampling_clear_errors(tmp_path):
    bundle = write_tiny_bundle(tmp_path / "bundle")
    with pytest.raises(ValueError, match="empty prompt"):
        run_sampling(_sample_cfg(tmp_path, f"bundle={bundle}", "prompts=[' ']"))
    with pytest.raises(FileNotFoundError, match="lacks vqgan.safetensors"):
        run_sampling(_sample_cfg(tmp_path, f"bundle={tmp_path}/nothing"))
    other = write_tiny_bundle(tmp_path / "other", seed=1)
    (bundle / "vqgan.safetensors").write_bytes((other / "vqgan.safetensors").read_bytes())
    with pytest.raises(ValueError, match="made with other encoders"):
        run_sampling(_sample_cfg(tmp_path, f"bundle={bundle}"))


def test_shipped_bundle_draws_the_named_colour_shape_and_position(shipped_pipe):
    from clipgen.generation.sampling import SamplingConfig
    from clipgen.metrics.shapes_reader import read_attributes
    from clipgen.models.bundle import default_bundle

    assert sum(f.stat().st_size for f in default_bundle().iterdir()) <= 40_000_000
    pipe = shipped_pipe
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink"]
    shapes = ["circle", "square", "triangle", "diamond", "star", "circle", "square", "diamond"]
    positions = ["top left", "top", "top right", "left", "right", "bottom left", "bottom",
                 "bottom right"]
    asked = [{"color": c, "shape": s, "position": p}
             for c, s, p in zip(colors, shapes, positions)]
    prompts = [f"a {a['color']} {a['shape']} in the {a['position']}" for a in asked]
    results = pipe.generate(pipe.text_conditions(prompts), sampling=SamplingConfig(top_k=4),
                            batch_size=8, seed=0)
    assert results[0].images.shape == (1, 3, 64, 64)
    reads = [read_attributes(to_pil(r.images[0])) for r in results]
    right = [all(read.get(k) == v for k, v in a.items()) for read, a in zip(reads, asked)]
    assert sum(right) >= 6, reads


def test_shipped_bundle_draws_the_held_out_blue_star(shipped_pipe):
    """Blue stars are in no training image; the shipped bundle draws them as stars about 0.8 of
    the time (the bundle before it 0.3, mostly diamonds): 9 of 16 separates the two."""
    from clipgen.generation.sampling import SamplingConfig
    from clipgen.metrics.shapes_reader import read_attributes

    pipe = shipped_pipe
    places = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom"]
    prompts = ([f"a blue star in the {p}" for p in places]
               + [f"a large blue star on a {b} background" for b in ["black", "white"] * 2]
               + ["a blue star", "a small blue star", "a blue star on a black background",
                  "a small blue star in the bottom right"])
    results = pipe.generate(pipe.text_conditions(prompts), sampling=SamplingConfig(top_k=4),
                            batch_size=16, seed=0)
    shapes = [read_attributes(to_pil(r.images[0])).get("shape") for r in results]
    assert shapes.count("star") >= 9, shapes


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_top_k_draw_has_the_masked_softmax_distribution(temperature):
    from clipgen.generation.sampling import SamplingConfig, pick_tokens, token_probs

    logits = 2 * torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    cfg = SamplingConfig(top_k=5, top_p=0.9, temperature=temperature)
    gen = torch.Generator().manual_seed(1)
    draws = torch.cat([pick_tokens(logits, cfg, gen) for _ in range(20000)])
    freq = torch.bincount(draws, minlength=50).float() / len(draws)
    expected = filter_logits(logits / temperature, top_k=5, top_p=0.9).softmax(-1)[0]
    assert torch.allclose(token_probs(logits, cfg)[0], expected, atol=1e-6)
    assert (freq - expected).abs().max() < 0.015
    assert set(draws.tolist()) == set(torch.nonzero(expected).flatten().tolist())


def test_sample_py_takes_a_taming_checkpoint_with_its_arch_name(tmp_path):
    from clipgen.checkpoint import load_safetensors
    from clipgen.models.bundle import bundle_clip, default_bundle
    from tests.helpers import save_lightning1_checkpoint

    bundle = default_bundle()
    taming = tmp_path / "last.ckpt"  # the shipped tokenizer, laid out as a taming public file
    save_lightning1_checkpoint(load_safetensors(bundle / "vqgan.safetensors"), taming)
    clip_arch, clip_weights = bundle_clip(bundle)
    pieces = [f"vqgan={taming}", f"clip.arch={clip_arch}", f"clip.pretrained={clip_weights}",
              f"prior={bundle / 'prior.safetensors'}", "prompts=[a red circle]",
              "samples_per_prompt=1", "n_candidates=1"]
    missing = _sample(*pieces, f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert missing.returncode == 2 and "vqgan_arch=" in missing.stderr, missing.stderr
    assert not (tmp_path / "a" / "samples.jsonl").exists()
    run = _sample(*pieces, "vqgan_arch=shapes_f4_fsq", "+resolution=64",
                  f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    record = json.loads((tmp_path / "b" / "samples.jsonl").read_text())
    assert (tmp_path / "b" / record["file"]).is_file()


def test_vqgan_arch_setting_reads_names_and_files(tmp_path):
    from omegaconf import OmegaConf

    from clipgen.generation.settings import vqgan_arch_setting

    search = [ROOT / "configs"]
    assert vqgan_arch_setting("f16_16384", OmegaConf.create({}), search)["n_embed"] == 16384
    with pytest.raises(ValueError, match=r"\+resolution="):
        vqgan_arch_setting("shapes_f4", OmegaConf.create({}), search)
    assert vqgan_arch_setting("shapes_f4", OmegaConf.create({"resolution": 64}),
                              search)["resolution"] == 64
    (tmp_path / "arch.yaml").write_text("resolution: 32\nch: 8\n")
    assert vqgan_arch_setting(str(tmp_path / "arch.yaml"), OmegaConf.create({}), search) == {
        "resolution": 32, "ch": 8}
    with pytest.raises(FileNotFoundError, match="available: f16_16384, shapes_f4"):
        vqgan_arch_setting("f16", OmegaConf.create({}), search)


@pytest.mark.parametrize("override, message", [
    ("n_candidates=0", "n_candidates must be a whole number >= 1"),
    ("samples_per_prompt=0", "samples_per_prompt must be"),
    ("samples_per_prompt=40", r"samples_per_prompt \(40\) cannot exceed n_candidates \(32\)"),
    ("batch_size=0", "batch_size must be"),
    ("sampling.guidance_scale=-1", "guidance_scale must be >= 0"),
    ("sampling.top_p=1.5", "top_p must lie in"),
    ("method=paint", "unknown method 'paint'"),
    ("device=cuda:7", "device=cuda:7"),
    ("device=gpu", "device=gpu is not a device"),
])
def test_bad_sampling_settings_stop_before_any_work(tmp_path, override, message):
    if override.startswith("device=cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    cfg = _sample_cfg(tmp_path, f"bundle={tmp_path}/not-loaded", override)
    with pytest.raises(ValueError, match=message):
        run_sampling(cfg)
    assert not (tmp_path / "o").exists()  # nothing written, nothing that looks like a result


def test_wrong_files_are_named_errors(tmp_path):
    bundle = write_tiny_bundle(tmp_path / "bundle")
    pieces = [f"vqgan={bundle / 'vqgan.safetensors'}", "clip.arch=clipgen-shapes-vit-tiny",
              f"clip.pretrained={bundle / 'clip.safetensors'}"]
    with pytest.raises(ValueError, match="vqgan.safetensors is a vqgan export, not a stage-2"):
        run_sampling(_sample_cfg(tmp_path, *pieces, f"prior={bundle / 'vqgan.safetensors'}"))
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="notes.png is not an image"):
        run_sampling(_sample_cfg(tmp_path, f"bundle={bundle}", f"image={tmp_path}/notes.png"))
    assert not (tmp_path / "o" / "samples.jsonl").exists()


def _user_error(capsys, call, *args) -> str:
    """Run an entry point's work as the entry point does; return its one-line error."""
    with pytest.raises(SystemExit) as stop:
        call(*args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_refused_weights_are_one_line_errors_naming_the_file_in_every_entry_point(
        tmp_path, capsys):
    from clipgen.evaluation.suite import run_suite
    from clipgen.jobs.entry import run_job
    from clipgen.jobs.export import main as export_main
    from clipgen.jobs.training import run_training
    from tests.helpers import PicklePayload

    bundle = write_tiny_bundle(tmp_path / "bundle")
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "clipgen": PicklePayload(marker)}, evil)
    garbled = tmp_path / "garbled" / "vqgan.safetensors"
    garbled.parent.mkdir()
    garbled.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    (garbled.parent / "vqgan.yaml").write_bytes((bundle / "vqgan.yaml").read_bytes())
    clip = ["clip.arch=clipgen-shapes-vit-tiny", f"clip.pretrained={bundle / 'clip.safetensors'}",
            f"prior={bundle / 'prior.safetensors'}"]
    for vqgan, name in ((evil, "evil.ckpt"), (garbled, "vqgan.safetensors")):
        cfg = _sample_cfg(tmp_path, f"vqgan={vqgan}", *clip)
        assert name in _user_error(capsys, run_job, run_sampling, cfg)
        with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
            ev = compose("eval", overrides=[f"vqgan={vqgan}", *clip, f"out_dir={tmp_path}/e",
                                            "suite.limit=2", "device=cpu"])
        assert name in _user_error(capsys, run_job, run_suite, ev)
    assert "evil.ckpt" in _user_error(capsys, export_main,
                                      [str(evil), str(tmp_path / "x")])
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        train = compose("train", overrides=[
            "experiment=shapes_vqgan", "resolution=16", "data.train.length=8", "~logger",
            f"ckpt_path={evil}", f"run_dir={tmp_path}/run", "trainer.max_steps=1"])
    assert "evil.ckpt" in _user_error(capsys, run_job, run_training, train)
    assert not marker.exists()


def test_previews_arrive_a_token_row_at_a_time_and_end_at_the_result(tmp_path):
    t2i = TextToImage.from_bundle(write_tiny_bundle(tmp_path / "bundle"))
    previews = []
    results = t2i.generate(t2i.text_conditions(["a red circle"]), n_candidates=2, keep=2,
                           seed=0, batch_size=2, on_preview=previews.append)
    assert len(previews) == 8  # 8 x 8 tokens: one preview per completed row
    first, last = previews[0], previews[-1]
    assert first.shape == (2, 3, 16, 16)
    blank = unsampled_canvas(2, 16, 8)
    assert torch.equal(first[..., 2:, :], blank[..., 2:, :])  # no decoded pixel below row 1
    # the rows so far decoded on their own: the tokens not yet drawn never reach the decoder
    shown = []
    on_token = t2i._previewer(shown.append)
    tokens = torch.randint(0, 24, (2, 64))
    filler = tokens.clone()
    filler[:, 24:] = torch.randint(0, 24, (2, 40))
    on_token(23, tokens)
    on_token(23, filler)
    assert torch.equal(shown[0], shown[1])
    alone = t2i.vqgan.decode_tokens(tokens.view(2, 8, 8)[:, :3]).clamp(-1, 1)
    assert torch.allclose(shown[0][..., :6, :], alone) and torch.equal(shown[0][..., 6:, :],
                                                                      blank[..., 6:, :])
    final = results[0].images
    assert torch.equal(last.sort(0).values, final.sort(0).values)  # same images, any order


@pytest.mark.parametrize("native", [True, False])
def test_the_sampling_bench_marks_bf16_emulated_where_the_cpu_lacks_it(monkeypatch, native):
    from clipgen.jobs import sampling_benchmark

    monkeypatch.setattr(sampling_benchmark, "cpu_has_fast_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert sampling_benchmark._emulated("bfloat16", cpu) is not native
    assert sampling_benchmark._emulated("float32", cpu) is False


def test_attention_bench_times_both_forms_of_the_same_attention():
    from clipgen.jobs.sampling_benchmark import _sdpa, _two_products, attention_rows

    q, k, v = torch.randn(3, 2, 1, 8), torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8)
    assert torch.allclose(_two_products(q, k, v), _sdpa(q, k, v), atol=1e-5)
    half = q.bfloat16(), k.bfloat16(), v.bfloat16()
    assert _two_products(*half).dtype == torch.bfloat16
    assert torch.allclose(_two_products(*half).float(), _sdpa(q, k, v), atol=0.05)
    rows = attention_rows([2, 4], heads=2, head_dim=8, length=9, layers=3, repeats=1,
                          dtypes=["float32", "bfloat16"])
    assert [(r["dtype"], r["rows"], r["form"], r["layers_cycled"]) for r in rows] == [
        (d, b, f, c) for d in ("float32", "bfloat16") for b in (2, 4)
        for f in ("sdpa", "two products") for c in (3, 1)]
    cache_mb = {r["dtype"]: r["layer_cache_mb"] for r in rows if r["rows"] == 4}
    full = 2 * 4 * 2 * 9 * 8  # keys and values, rows, heads, length, head_dim
    assert cache_mb["float32"] == pytest.approx(full * 4 / 1e6, rel=1e-2)
    assert cache_mb["bfloat16"] == pytest.approx(full * 2 / 1e6, rel=1e-2)
    assert all(r["ms_per_layer"] > 0 and r["cache_gb_s"] > 0 for r in rows)


def test_the_sampling_bench_takes_the_best_of_its_repeats_and_counts_cache_bytes(monkeypatch):
    from clipgen.generation.decoder import decoder_weights
    from clipgen.jobs import sampling_benchmark as bench
    from clipgen.models.prior import PriorConfig

    times = iter([3.0, 1.0, 2.0])
    monkeypatch.setattr(bench, "time_sampling", lambda *args, **kwargs: next(times))
    cpu = torch.device("cpu")
    assert bench._best_sampling_time(None, 1, None, cpu, repeats=3) == 1.0
    monkeypatch.undo()

    config = PriorConfig.from_dict(dict(vocab_size=40, n_tokens=6, cond_dim=8, n_layer=2,
                                        n_embd=16, n_head=2))
    machine = bench.Machine(bandwidth=1e6, matmul={"float32": 1e10})  # fractions well above 0
    rows = bench.sampling_rows({"tiny": config}, [2], ["static"], ["float32"], [False], cpu,
                               machine, top_k=5, windows=[3], repeats=2)
    plain, speculative = rows
    torch.manual_seed(0)
    prepared = decoder_weights(bench.CLIPPrior(config), torch.float32, cpu)
    cache = prepared.cache_read_bytes(2, config.n_prefix, 6)
    assert plain["cache_bytes_per_token"] == round(cache / (2 * 6))
    weights = plain["weight_bytes_per_token"] * 2 * 6
    assert plain["memory_roofline_fraction"] / plain["roofline_fraction"] == pytest.approx(
        (weights + cache) / weights, rel=1e-3)
    assert speculative["cache_bytes_per_token"] == ""  # windows read another pattern


def test_the_shipped_bundle_reads_text_moved_across_its_measured_gap(shipped_pipe):
    """The shipped bundle carries its CLIP's modality gap, measured on training renders, and
    samples with it at the stored scale (held-out colour 0.93 without it, docs/BENCHMARKS.md)."""
    from clipgen.generation.gap_shift import GAP_FILE, load_modality_gap
    from clipgen.models.bundle import default_bundle

    gap = load_modality_gap(default_bundle() / GAP_FILE, shipped_pipe.clip)
    assert gap.scale == 2.0 and gap.images == gap.texts == 4096
    torch.testing.assert_close(shipped_pipe.text_shift, 2.0 * gap.vector)
