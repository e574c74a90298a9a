"""A prior whose token embeddings and tied head are factorised over fsq code levels."""

import pytest
import torch

from clipgen.checkpoint import load_safetensors, save_safetensors
from clipgen.generation.decoder import StaticDecoder, decoder_weights
from clipgen.generation.sampling import SamplingConfig, sample_tokens
from clipgen.lit.prior_module import PriorModule, PriorTrainConfig
from clipgen.models.clip import FrozenCLIP
from clipgen.models.factorised_tokens import FactorisedEmbedding
from clipgen.models.prior import CLIPPrior, PriorConfig
from clipgen.models.quantizers import code_digits
from clipgen.models.vqgan import VQGAN, VQGANConfig
from tests.helpers import CLIP_ARCH, TINY_FSQ_LEVELS, TINY_FSQ_VQGAN, TINY_VQGAN, write_tiny_bundle

LEVELS = TINY_FSQ_LEVELS
PRIOR = dict(vocab_size=24, n_tokens=6, cond_dim=8, n_layer=2, n_embd=16, n_head=2,
             token_factors=LEVELS)


def test_each_code_embeds_as_the_sum_of_its_levels_vectors():
    torch.manual_seed(0)
    emb = FactorisedEmbedding(LEVELS, 5)
    digits = code_digits(torch.arange(24), LEVELS)
    assert digits[7].tolist() == [1, 0, 1]  # 7 = 1 + 0 * 2 + 1 * 6
    expected = torch.stack([emb.table[d0] + emb.table[2 + d1] + emb.table[5 + d2]
                            for d0, d1, d2 in digits.tolist()])
    assert torch.allclose(emb.weight, expected)
    tokens = torch.tensor([[3, 23], [0, 7]])
    assert torch.allclose(emb(tokens), expected[tokens])


def test_a_factorised_prior_decodes_alike_everywhere_and_reloads_strictly(tmp_path):
    torch.manual_seed(0)
    prior = CLIPPrior(PriorConfig(**PRIOR)).eval()
    assert [k for k in prior.state_dict() if "wte" in k or "lm_head" in k] == [
        "gpt.transformer.wte.table"]
    cond, tokens = torch.randn(3, 8), torch.randint(0, 24, (3, 6))
    with torch.no_grad():
        reference = prior(cond, tokens)  # teacher-forced, through the tied head
        weights = decoder_weights(prior, torch.float32, torch.device("cpu"))
        dec = StaticDecoder(weights, 3, 7)
        static = [dec.prefill(prior.prefix(cond))]
        static += [dec.step(tokens[:, i], 1 + i) for i in range(5)]
    assert torch.allclose(torch.stack(static, 1), reference, atol=1e-5)
    picked = {d: sample_tokens(prior, cond, SamplingConfig(dtype="float32", decoder=d,
                                                           top_k=5),
                               generator=torch.Generator().manual_seed(1))
              for d in ("static", "hf", "recompute")}
    assert torch.equal(picked["static"], picked["hf"])
    assert torch.equal(picked["static"], picked["recompute"])
    save_safetensors(prior.state_dict(), tmp_path / "prior.safetensors")
    fresh = CLIPPrior(PriorConfig(**PRIOR)).eval()
    fresh.load_state_dict(load_safetensors(tmp_path / "prior.safetensors"), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(cond, tokens), reference)


def test_training_on_some_codes_moves_every_code_that_shares_their_levels():
    torch.manual_seed(0)
    emb = FactorisedEmbedding(LEVELS, 4)
    before = emb.weight.detach().clone()
    emb(torch.tensor([7])).sum().backward()  # code 7: levels (1, 0, 1)
    with torch.no_grad():
        emb.table -= 0.1 * emb.table.grad
    moved = (emb.weight - before).abs().sum(1) > 0
    shares = (code_digits(torch.arange(24), LEVELS) == torch.tensor([1, 0, 1])).any(1)
    assert torch.equal(moved, shares)
    assert moved.sum() > 1  # codes never fed moved too


def test_token_factors_must_match_the_vocabulary_and_an_fsq_tokenizer():
    with pytest.raises(ValueError, match="multiply to vocab_size=24"):
        PriorConfig(**{**PRIOR, "token_factors": [2, 3, 5]})
    clip = FrozenCLIP(CLIP_ARCH, pretrained=None, random_weights=True)
    prior = {**PRIOR, "n_tokens": 64, "cond_dim": clip.embed_dim}
    learnt = VQGAN(VQGANConfig.from_dict(TINY_VQGAN))  # quantizer l2
    with pytest.raises(ValueError, match="token_factors=.*quantizer='l2'"):
        PriorModule(prior, learnt, clip, PriorTrainConfig())
    fsq = VQGAN(VQGANConfig.from_dict(TINY_FSQ_VQGAN))
    module = PriorModule(prior, fsq, clip, PriorTrainConfig())
    assert isinstance(module.prior.gpt.transformer.wte, FactorisedEmbedding)
    with pytest.raises(ValueError, match="levels \\[2, 3, 4\\]"):
        PriorModule({**prior, "token_factors": [4, 3, 2]}, fsq, clip, PriorTrainConfig())


def test_sample_py_draws_from_a_bundle_of_an_fsq_tokenizer_and_a_factorised_prior(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    bundle = write_tiny_bundle(tmp_path / "bundle", fsq=True)
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(root / "sample.py"), f"bundle={bundle}",
                          "prompts=[a red circle]", "samples_per_prompt=2", "n_candidates=2",
                          f"hydra.run.dir={out}"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2
    with Image.open(out / records[0]["file"]) as image:
        assert image.size == (16, 16)
