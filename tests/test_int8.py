"""Int8 decoding weights: per-channel quantisation, each kernel's logits against fp32, the
cache of quantised weights, and the settings that refuse int8."""

import pytest
import torch

from clipgen.generation.decoder import StaticDecoder, decoder_weights, resolve_precision
from clipgen.generation.int8_weights import int8_weight, quantise_per_channel
from clipgen.generation.sampling import SamplingConfig, sample_tokens
from clipgen.models.prior import CLIPPrior
from tests.helpers import random_prior

N_TOKENS = 12
# Logits of the int8 decoders against the same decoder with the weights in the activation
# dtype: relative RMS error ||int8 - reference|| / ||reference|| over every position of 6
# rows. Measured at 0.017 (int8, fp32), 0.021 (int8, bf16) and 0.043 (int8_dynamic, whose
# activations are rounded to 7 bits too); bf16 against fp32, unquantised, is 0.009.
WEIGHT_ONLY_TOLERANCE = 0.03
DYNAMIC_TOLERANCE = 0.07


def _prior(seed: int = 0) -> CLIPPrior:
    return random_prior(seed, weight_std=0.2, vocab_size=64, n_tokens=N_TOKENS, cond_dim=16,
                        n_prefix=2, n_layer=2, n_embd=64, n_head=2)


@pytest.fixture(scope="module")
def prior():
    return _prior()


def _cond(n=6):
    return torch.nn.functional.normalize(
        torch.randn(n, 16, generator=torch.Generator().manual_seed(1)), dim=-1)


@torch.no_grad()
def _logits(prior, dtype, weights, rows=6):
    """Every position's logits from the static decoder, teacher-forced on fixed tokens."""
    cond = _cond(rows)
    tokens = torch.randint(0, 64, (rows, N_TOKENS), generator=torch.Generator().manual_seed(2))
    dec = StaticDecoder(decoder_weights(prior, dtype, cond.device, weights=weights), rows,
                        prior.config.n_prefix + N_TOKENS)
    out = [dec.prefill(prior.prefix(cond))]
    out += [dec.step(tokens[:, i], prior.config.n_prefix + i) for i in range(N_TOKENS - 1)]
    return torch.stack(out, 1).float()


def test_quantise_per_channel_rounds_each_weight_within_half_a_step():
    w = torch.randn(40, 24) * torch.linspace(0.01, 3.0, 40)[:, None]  # rows of every scale
    values, scales = quantise_per_channel(w)
    assert values.dtype == torch.int8 and scales.shape == (40,)
    error = (values.float() * scales[:, None] - w).abs()
    assert (error <= scales[:, None] / 2 + 1e-7).all()
    assert torch.equal(values.abs().amax(1), torch.full((40,), 127, dtype=torch.int8))


@pytest.mark.parametrize("kernel,dtype", [("convert", torch.float32), ("int8pack", torch.bfloat16),
                                          ("dynamic", torch.float32)])
def test_each_kernel_multiplies_by_the_dequantised_weight(kernel, dtype):
    w, x = torch.randn(48, 32), torch.randn(5, 32).to(dtype)
    bias = torch.randn(48).to(dtype)
    fmt = "int8_dynamic" if kernel == "dynamic" else "int8"
    q = int8_weight(w, fmt, dtype, torch.device("cpu"))
    assert q.kernel == kernel  # the bf16 kernel runs on every CPU build of torch
    values, scales = quantise_per_channel(w)
    expected = x.float() @ (values.float() * scales[:, None]).t() + bias.float()
    got = q.linear(x, bias)
    assert got.dtype == dtype and got.shape == (5, 48)
    # dynamic rounds the activations to 7 bits as well; bf16 rounds the product
    tolerance = {"convert": 1e-4, "int8pack": 2e-2, "dynamic": 5e-2}[kernel]
    assert (got.float() - expected).abs().max() / expected.std() < tolerance


@pytest.mark.parametrize("weights,dtype,tolerance", [
    ("int8", torch.float32, WEIGHT_ONLY_TOLERANCE),
    ("int8", torch.bfloat16, WEIGHT_ONLY_TOLERANCE),
    ("int8_dynamic", torch.float32, DYNAMIC_TOLERANCE)])
def test_int8_logits_stay_within_the_stated_tolerance_of_unquantised_ones(prior, weights,
                                                                          dtype, tolerance):
    reference = _logits(prior, dtype, "dtype")
    got = _logits(prior, dtype, weights)
    error = (got - reference).norm() / reference.norm()
    assert error < tolerance, f"{weights} {dtype}: relative RMS error {error:.4f}"
    assert error > 0  # the weights were quantised, not passed through


def test_quantised_weights_are_cached_and_invalidated_when_the_prior_changes():
    prior = _prior(seed=3)
    first = decoder_weights(prior, torch.float32, torch.device("cpu"), weights="int8")
    assert decoder_weights(prior, torch.float32, torch.device("cpu"), weights="int8") is first
    before = _logits(prior, torch.float32, "int8")
    with torch.no_grad():
        # an in-place update, as an optimiser step makes
        prior.gpt.transformer.h[0].mlp.c_fc.weight.mul_(2.0)
    second = decoder_weights(prior, torch.float32, torch.device("cpu"), weights="int8")
    assert second is not first
    assert torch.allclose(second.layers[0]["fc_w"].scales, 2 * first.layers[0]["fc_w"].scales)
    assert not torch.allclose(_logits(prior, torch.float32, "int8"), before)


def test_int8_step_reads_about_a_quarter_of_the_fp32_bytes(prior):
    fp32 = decoder_weights(prior, torch.float32, torch.device("cpu")).step_bytes()
    int8 = decoder_weights(prior, torch.float32, torch.device("cpu"), weights="int8").step_bytes()
    assert 0.25 < int8 / fp32 < 0.30  # int8 values plus fp32 scales, biases and norms


def test_int8_sampling_runs_plain_and_speculative_with_the_same_greedy_tokens(prior):
    cond = _cond(3)
    out = {}
    for speculative in (None, "jacobi"):
        cfg = SamplingConfig(dtype="float32", temperature=0.0, weights="int8",
                             speculative=speculative, window=4)
        out[speculative] = sample_tokens(prior, cond, cfg)
    assert out[None].shape == (3, N_TOKENS) and int(out[None].max()) < 64
    assert torch.equal(out[None], out["jacobi"])
    dynamic = sample_tokens(prior, cond, SamplingConfig(dtype="float32", top_k=4,
                                                        weights="int8_dynamic"),
                            generator=torch.Generator().manual_seed(0))
    assert dynamic.shape == (3, N_TOKENS)


@pytest.mark.parametrize("settings,message", [
    (dict(weights="int4"), "weights must be auto or one of dtype, int8, int8_dynamic"),
    (dict(weights="int8", decoder="hf"), "static decoder only"),
    (dict(weights="int8_dynamic", compile=True), "compile=false or weights=int8")])
def test_settings_that_cannot_run_int8_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**settings)


def test_int8_dynamic_is_refused_off_the_cpu():
    with pytest.raises(ValueError, match="CPU only"):
        int8_weight(torch.randn(8, 8), "int8_dynamic", torch.float32, torch.device("meta"))


@pytest.mark.parametrize("dtype,weights,decoder,compiled,device,expected", [
    ("auto", "auto", "static", False, "cpu", (torch.float32, "int8_dynamic")),
    ("bfloat16", "auto", "static", False, "cpu", (torch.bfloat16, "int8_dynamic")),
    ("float32", "auto", "hf", False, "cpu", (torch.float32, "dtype")),
    ("float32", "auto", "static", True, "cpu", (torch.float32, "dtype")),
    ("float32", "auto", "static", False, "meta", (torch.float32, "dtype")),
    ("float32", "int8", "static", False, "cpu", (torch.float32, "int8"))])
def test_auto_weights_are_int8_dynamic_on_the_cpu_static_decoder_only(dtype, weights, decoder,
                                                                      compiled, device, expected):
    assert resolve_precision(dtype, weights, torch.device(device), decoder, compiled) == expected


def test_auto_weights_sample_what_int8_dynamic_samples_on_a_cpu(prior):
    def tokens(**settings):
        return sample_tokens(prior, _cond(3), SamplingConfig(top_k=8, **settings),
                             generator=torch.Generator().manual_seed(4))

    assert torch.equal(tokens(weights="auto"), tokens(dtype="float32", weights="int8_dynamic"))
