"""The static-cache decoder against the Hugging Face reference: same logits, same tokens."""

import pytest
import torch

from clipgen.generation.decoder import StaticDecoder, decoder_weights, resolve_dtype
from clipgen.generation.sampling import SamplingConfig, guided_logits, sample_tokens
from tests.helpers import random_prior

N_TOKENS = 12


@pytest.fixture(scope="module")
def prior():
    return random_prior(vocab_size=50, n_tokens=N_TOKENS, cond_dim=16, n_prefix=2, n_layer=2,
                        n_embd=32, n_head=2)


def _cond(n=3):
    return torch.nn.functional.normalize(torch.randn(n, 16, generator=torch.Generator()
                                                     .manual_seed(1)), dim=-1)


def _sample(prior, seed=7, n=3, **settings):
    return sample_tokens(prior, _cond(n), SamplingConfig(dtype="float32", **settings),
                         generator=torch.Generator().manual_seed(seed))


def _static_logits(prior, cond, tokens, null_mask, dtype=torch.float32, out_in=True):
    """Logits of every position from the static decoder, fed the given tokens."""
    dec = StaticDecoder(decoder_weights(prior, dtype, cond.device, out_in), len(cond),
                        prior.config.n_prefix + prior.config.n_tokens)
    logits = [dec.prefill(prior.prefix(cond, null_mask))]
    for i in range(tokens.shape[1] - 1):
        logits.append(dec.step(tokens[:, i], prior.config.n_prefix + i))
    return torch.stack(logits, 1)


@pytest.mark.parametrize("static_shapes,out_in", [(False, True), (False, False), (True, True)])
def test_static_decoder_logits_match_the_reference_at_every_step(prior, static_shapes, out_in):
    cond = torch.cat([_cond(), _cond()])
    null_mask = torch.tensor([False] * 3 + [True] * 3)
    tokens = torch.randint(0, 50, (6, N_TOKENS), generator=torch.Generator().manual_seed(2))
    reference = prior(cond, tokens, null_mask)  # teacher-forced Hugging Face forward
    if static_shapes:
        dec = StaticDecoder(decoder_weights(prior, torch.float32, cond.device), 6, 14, True)
        got = [dec.prefill(prior.prefix(cond, null_mask))]
        got += [dec.step(tokens[:, i], 2 + i) for i in range(N_TOKENS - 1)]
        got = torch.stack(got, 1)
    else:
        got = _static_logits(prior, cond, tokens, null_mask, out_in=out_in)
    assert got.shape == reference.shape
    assert (got - reference).abs().max() < 1e-4


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=1.0),
                                      dict(temperature=1.0, top_k=10),
                                      dict(temperature=0.8, top_p=0.9),
                                      dict(temperature=1.0, guidance_scale=3.0)])
def test_every_decoder_samples_the_same_tokens(prior, settings):
    for n in (3, 1):  # one row decodes with the other weight layout
        out = {d: _sample(prior, n=n, decoder=d, **settings)
               for d in ("static", "hf", "recompute")}
        assert out["static"].shape == (n, N_TOKENS)
        assert torch.equal(out["static"], out["hf"]) and torch.equal(out["hf"], out["recompute"])


def _greedy_by_hand(prior, scale):
    """Greedy decoding through the teacher-forced reference, guidance computed here."""
    cond = _cond()
    tokens = torch.zeros(3, 0, dtype=torch.long)
    for _ in range(N_TOKENS):
        prefix_c = prior.prefix(cond)
        prefix_n = prior.prefix(cond, torch.ones(3, dtype=torch.bool))
        c = prior.full_logits(prefix_c, tokens)
        n = prior.full_logits(prefix_n, tokens)
        tokens = torch.cat([tokens, (n + scale * (c - n)).argmax(-1, keepdim=True)], 1)
    return tokens


@torch.no_grad()
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_guided_greedy_sampling_equals_a_hand_computation(prior, scale):
    assert torch.equal(_sample(prior, temperature=0.0, guidance_scale=scale),
                       _greedy_by_hand(prior, scale))


def test_guidance_combines_conditional_and_null_rows():
    logits = torch.tensor([[1.0, 2.0], [0.0, 4.0], [3.0, 1.0], [2.0, 2.0]])  # 2 cond, 2 null
    expected = torch.tensor([[3.0 + 2.5 * (1.0 - 3.0), 1.0 + 2.5 * (2.0 - 1.0)],
                             [2.0 + 2.5 * (0.0 - 2.0), 2.0 + 2.5 * (4.0 - 2.0)]])
    assert torch.allclose(guided_logits(logits, 2, 2.5), expected)


def test_samples_vary_with_the_condition(prior):
    greedy = _sample(prior, temperature=0.0)
    assert len(set(greedy.flatten().tolist())) > 5 and not torch.equal(greedy[0], greedy[1])


def test_guidance_interval_applies_exactly_where_configured(prior):
    cfg = SamplingConfig(guidance_scale=2.0, guidance_interval=[3, 7])
    assert [cfg.guided_at(i) for i in range(9)] == [False] * 3 + [True] * 4 + [False] * 2
    assert cfg.last_guided(N_TOKENS) == 6
    full = _sample(prior, temperature=0.0, guidance_scale=3.0)
    head = _sample(prior, temperature=0.0, guidance_scale=3.0, guidance_interval=[0, 5])
    assert torch.equal(head[:, :5], full[:, :5]) and not torch.equal(head, full)
    plain = _sample(prior, temperature=0.0)
    assert torch.equal(_sample(prior, temperature=0.0, guidance_scale=3.0,
                               guidance_interval=[0, 0]), plain)
    for interval in ([3, 7], [0, 5]):  # the static decoder drops null rows after the interval
        settings = dict(temperature=1.0, guidance_scale=3.0, guidance_interval=interval)
        assert torch.equal(_sample(prior, decoder="static", **settings),
                           _sample(prior, decoder="hf", **settings))


def test_bf16_logits_agree_with_fp32(prior):
    cond = _cond()
    tokens = torch.randint(0, 50, (3, N_TOKENS), generator=torch.Generator().manual_seed(2))
    fp32 = _static_logits(prior, cond, tokens, None)
    bf16 = _static_logits(prior, cond, tokens, None, torch.bfloat16)
    # bf16 keeps 8 bits of mantissa: about 0.4% of each value, accumulated over 2 layers
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()
    assert (bf16.argmax(-1) == fp32.argmax(-1)).float().mean() > 0.9


def test_prepared_weights_follow_parameter_updates(prior):
    first = decoder_weights(prior, torch.float32, torch.device("cpu"))
    assert decoder_weights(prior, torch.float32, torch.device("cpu")) is first
    with torch.no_grad():
        prior.gpt.transformer.ln_f.bias.add_(0.0)  # an in-place update bumps the version
    assert decoder_weights(prior, torch.float32, torch.device("cpu")) is not first


def test_precision_settings(monkeypatch):
    import clipgen.generation.decoder as decoder

    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    for fast_bf16, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(decoder, "cpu_has_fast_bf16", lambda fast=fast_bf16: fast)
        assert resolve_dtype("auto", torch.device("cpu")) == dtype
    with pytest.raises(ValueError, match="float16 needs a GPU"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(ValueError, match="decoder must be one of"):
        SamplingConfig(decoder="fast")
    with pytest.raises(ValueError, match="guidance_interval"):
        SamplingConfig(guidance_interval=[5, 2])


def test_compiled_static_step_samples_the_same_tokens(prior):
    pytest.importorskip("torch._inductor")
    eager = _sample(prior, temperature=1.0, guidance_scale=2.0)
    compiled = _sample(prior, temperature=1.0, guidance_scale=2.0, compile=True)
    assert torch.equal(eager, compiled)


def test_cache_read_bytes_counts_the_keys_and_values_every_attention_call_reads(prior,
                                                                                 monkeypatch):
    from clipgen.generation import decoder as decoder_module

    read = []
    sdpa = decoder_module.F.scaled_dot_product_attention

    def counting(q, k, v, *args, **kwargs):
        read.append(k.numel() * k.element_size() + v.numel() * v.element_size())
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(decoder_module.F, "scaled_dot_product_attention", counting)
    _sample(prior, n=3, top_k=10)
    weights = decoder_weights(prior, torch.float32, torch.device("cpu"))
    cfg = prior.config
    assert weights.cache_read_bytes(3, cfg.n_prefix, cfg.n_tokens) == sum(read)
