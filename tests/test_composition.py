"""Composable prompts: parsing, the product of experts over parts, and sampling with it in
the static decoder and the reference."""

from __future__ import annotations

import json

import pytest
import torch

from clipgen.generation.prompt_parts import PromptPart, compose_prompt, is_composed, parse_prompt
from clipgen.generation.sampling import (
    SamplingConfig,
    composed_logits,
    null_term,
    sample_tokens,
)
from clipgen.generation.text_to_image import TextToImage
from clipgen.models.prior import CLIPPrior, PriorConfig
from tests.helpers import write_tiny_bundle


def _blocks(*rows: list[float]) -> torch.Tensor:
    """Logits of one prompt (B = 1) per block: parts first, the null row last."""
    return torch.tensor(rows)


@pytest.mark.parametrize("weights", [[1.0, 1.0], [2.0, -0.5], [1.5, 1.0, -1.0]])
def test_product_of_experts_equals_a_hand_computation(weights):
    parts = [[1.0, 0.0, -2.0], [0.5, 3.0, 1.0], [-1.0, 2.0, 0.0]][:len(weights)]
    null = [0.2, -0.4, 0.6]
    logits = _blocks(*parts, null)
    by_hand = [null[v] + sum(w * (part[v] - null[v]) for w, part in zip(weights, parts))
               for v in range(3)]
    got = composed_logits(logits, torch.tensor([weights]))
    assert got[0].tolist() == pytest.approx(by_hand)
    # outside the guidance interval (no null rows): the parts with weights normalised to sum 1
    total = sum(weights)
    mixed = [sum(w / total * part[v] for w, part in zip(weights, parts)) for v in range(3)]
    assert composed_logits(logits[:-1], torch.tensor([weights]), with_null=False)[0].tolist() \
        == pytest.approx(mixed)


def test_one_part_of_weight_s_is_guidance_at_scale_s():
    cond, null = [1.0, 0.0, -2.0], [0.2, -0.4, 0.6]
    got = composed_logits(_blocks(cond, null), torch.tensor([[3.0]]))
    assert got[0].tolist() == pytest.approx([n + 3.0 * (c - n) for c, n in zip(cond, null)])


def test_rows_of_a_batch_combine_with_their_own_weights():
    b, v = 2, 4
    logits = torch.randn(3 * b, v, generator=torch.Generator().manual_seed(0))
    weights = torch.tensor([[1.0, 2.0], [0.5, -0.25]])
    got = composed_logits(logits, weights)
    for row in range(b):
        one = composed_logits(logits[row::b], weights[row:row + 1])
        assert torch.allclose(got[row], one[0])


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    return CLIPPrior(PriorConfig(vocab_size=24, n_tokens=12, cond_dim=16, n_layer=2, n_embd=32,
                                 n_head=2)).eval()


@pytest.mark.parametrize("interval", [None, [2, 7]])
def test_composed_sampling_gives_the_reference_tokens_in_the_static_decoder(prior, interval):
    cond = torch.nn.functional.normalize(torch.randn(3, 2, 16), dim=-1)
    weights = torch.tensor([[1.0, 1.0], [2.0, -0.5], [1.5, 0.5]])
    tokens = {}
    for decoder in ("static", "hf"):
        cfg = SamplingConfig(top_k=6, decoder=decoder, dtype="float32",
                             guidance_interval=interval)
        gen = torch.Generator().manual_seed(3)
        tokens[decoder] = sample_tokens(prior, cond, cfg, generator=gen, part_weights=weights)
    assert torch.equal(tokens["static"], tokens["hf"])
    # one part of weight s samples exactly as guidance at scale s
    gen = torch.Generator().manual_seed(3)
    guided = sample_tokens(prior, cond[:, 0], SamplingConfig(top_k=6, guidance_scale=2.0,
                                                             dtype="float32",
                                                             guidance_interval=interval),
                           generator=gen)
    gen = torch.Generator().manual_seed(3)
    one_part = sample_tokens(prior, cond[:, :1], SamplingConfig(top_k=6, dtype="float32",
                                                                guidance_interval=interval),
                             generator=gen, part_weights=torch.full((3, 1), 2.0))
    assert torch.equal(guided, one_part)


@pytest.mark.parametrize("decoder", ["static", "hf"])
def test_weights_summing_to_one_run_no_null_rows_and_sample_the_same(prior, decoder,
                                                                     monkeypatch):
    import clipgen.generation.sampling as sampling

    cond = torch.nn.functional.normalize(torch.randn(2, 3, 16), dim=-1)
    weights = torch.tensor([[1.0, 1.0, -1.0], [0.5, 0.75, -0.25]])
    rows = []
    prefix = prior.prefix
    monkeypatch.setattr(prior, "prefix", lambda c, mask=None: rows.append(len(c))
                        or prefix(c, mask))
    cfg = SamplingConfig(top_k=6, decoder=decoder, dtype="float32")
    tokens = {}
    for forced in (False, True):
        if forced:  # the null rows run, and their coefficient (1 - sum w = 0) drops them
            monkeypatch.setattr(sampling, "null_term", lambda w: True)
        gen = torch.Generator().manual_seed(5)
        tokens[forced] = sample_tokens(prior, cond, cfg, generator=gen, part_weights=weights)
    assert torch.equal(tokens[False], tokens[True])
    monkeypatch.undo()
    monkeypatch.setattr(prior, "prefix", lambda c, mask=None: rows.append(len(c))
                        or prefix(c, mask))
    sample_tokens(prior, cond, cfg, part_weights=torch.tensor([[1.0, 1.0, -0.5]] * 2))
    # 3 parts x 2 prompts; with the null rows forced, + 2; weights summing to 1.5 need them
    assert rows == [6, 8, 8]


def test_parts_are_parsed_with_their_weights():
    assert parse_prompt("a blue shape AND a star") == [PromptPart("a blue shape", 1.0),
                                                       PromptPart("a star", 1.0)]
    assert parse_prompt("a blue shape :: 2 AND a star NOT a diamond :: 0.5") == [
        PromptPart("a blue shape", 2.0), PromptPart("a star", 1.0), PromptPart("a diamond", -0.5)]
    assert parse_prompt("NOT a circle AND a star :: 3") == [PromptPart("a circle", -1.0),
                                                            PromptPart("a star", 3.0)]
    assert not is_composed("a red and blue star") and is_composed("a red star NOT a circle")


@pytest.mark.parametrize("parts", [
    [PromptPart("a blue diamond", 1.0), PromptPart("a red star", 1.0),
     PromptPart("a red diamond", -1.0)],
    [PromptPart("a circle", -0.5), PromptPart("a star", 1.5)],
    [PromptPart("a yellow square", 0.25), PromptPart("a green triangle", 0.375),
     PromptPart("a green square", -0.125)]])
def test_composed_text_parses_back_to_its_parts(parts):
    assert parse_prompt(compose_prompt(parts)) == parts
    # thirds keep enough digits that weights summing to 1 still do (no null rows needed)
    thirds = [PromptPart(f"part {i}", w) for i, w in enumerate([1 / 3, 1 / 3, -1 / 3] * 3)]
    weights = torch.tensor([[p.weight for p in parse_prompt(compose_prompt(thirds))]])
    assert not null_term(weights)
    with pytest.raises(ValueError, match="holds AND"):
        compose_prompt([*parts, PromptPart("a star AND a circle", 1.0)])


@pytest.mark.parametrize("prompt, message", [("a blue shape AND ", "empty part"),
                                             ("AND a star", "empty part"),
                                             ("a star AND NOT a circle", "empty part"),
                                             ("a star NOT a star", "sum to zero"),
                                             ("a star :: 1 NOT a circle :: 1", "sum to zero")])
def test_bad_parts_are_refused_with_a_clear_error(prompt, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt(prompt)


def test_composed_prompts_generate_from_a_bundle(tmp_path):
    pipe = TextToImage.from_bundle(write_tiny_bundle(tmp_path))
    cond = pipe.text_conditions(["a blue shape AND a star", "a red shape :: 2 NOT a circle"])
    assert cond.prior.shape == (2, 2, 128) and cond.part_weights.tolist() == [[1, 1], [2, -1]]
    results = pipe.generate(cond, n_candidates=2, keep=1, sampling=SamplingConfig(top_k=4))
    assert [r.images.shape for r in results] == [(1, 3, 16, 16)] * 2
    with pytest.raises(ValueError, match="same number of parts"):
        pipe.text_conditions(["a blue shape AND a star", "a red circle AND a b AND c"])


def test_sample_py_takes_plain_and_composed_prompts_together(tmp_path):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from clipgen.jobs.sample_run import run_sampling

    bundle = write_tiny_bundle(tmp_path / "bundle")
    prompts = ["a red circle", "a blue diamond AND a red star NOT a red diamond",
               "a green square", "a star :: 2"]
    configs = Path(__file__).resolve().parent.parent / "configs"
    with initialize_config_dir(str(configs), version_base="1.3"):
        cfg = compose("sample", overrides=[f"bundle={bundle}", f"out_dir={tmp_path}/out",
                                           "samples_per_prompt=2", "n_candidates=2",
                                           f"prompts={json.dumps(prompts)}"])
    out = run_sampling(cfg)
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [p for p in prompts for _ in range(2)]
    assert all((out / r["file"]).is_file() for r in rows)
    # each prompt's images are those it gets sampled alone with its group
    alone = TextToImage.from_bundle(bundle)
    plain = alone.generate(alone.text_conditions([prompts[0], prompts[2]]), n_candidates=2,
                           keep=2, sampling=SamplingConfig(**cfg.sampling), seed=0,
                           batch_size=cfg.batch_size)
    assert [r["clip_cosine"] for r in rows[4:6]] == [
        round(float(c), 4) for c in plain[1].clip_cosine]
