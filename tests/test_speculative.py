"""Speculative Jacobi decoding: the plain decoder's greedy tokens, plain sampling's
distribution, the residual draw, and the per-row windows of the static decoder."""

from __future__ import annotations

import itertools

import pytest
import torch

from clipgen.generation.decoder import StaticDecoder, decoder_weights
from clipgen.generation.sampling import SamplingConfig, sample_tokens, token_probs
from clipgen.generation.speculative import accepted_lengths, residual
from clipgen.models.prior import CLIPPrior, PriorConfig


def _prior(seed: int = 0, vocab: int = 24, n_tokens: int = 12, n_prefix: int = 1,
           sharpen: float = 1.0) -> CLIPPrior:
    torch.manual_seed(seed)
    prior = CLIPPrior(PriorConfig(vocab_size=vocab, n_tokens=n_tokens, cond_dim=8,
                                  n_prefix=n_prefix, n_layer=2, n_embd=32, n_head=2)).eval()
    with torch.no_grad():
        prior.gpt.transformer.wte.weight.mul_(sharpen)  # the tied head: peakier distributions
    return prior


@pytest.mark.parametrize("settings", [
    {},
    {"guidance_scale": 2.0, "guidance_interval": [2, 7]},
    {"window": 3},
])
def test_greedy_speculative_decoding_gives_the_plain_decoders_tokens(settings):
    prior = _prior(n_prefix=2, sharpen=8.0)
    cond = torch.randn(5, 8)
    plain = SamplingConfig(temperature=0.0, dtype="float32",
                           **{k: v for k, v in settings.items() if k != "window"})
    fast = SamplingConfig(temperature=0.0, dtype="float32", speculative="jacobi",
                          **{"window": 5, **settings})
    stats: dict = {}
    expected = sample_tokens(prior, cond, plain)
    assert torch.equal(sample_tokens(prior, cond, fast, stats=stats), expected)
    assert 1.0 <= stats["tokens_per_step"] and stats["decode_steps"] <= 11


def test_greedy_speculative_decoding_of_composed_parts_matches_the_plain_decoder():
    prior = _prior(sharpen=8.0)
    cond, weights = torch.randn(3, 2, 8), torch.tensor([[2.0, 1.0], [1.5, -0.5], [1.0, 1.0]])
    plain = SamplingConfig(temperature=0.0, dtype="float32")
    fast = SamplingConfig(temperature=0.0, dtype="float32", speculative="jacobi", window=4)
    assert torch.equal(sample_tokens(prior, cond, fast, part_weights=weights),
                       sample_tokens(prior, cond, plain, part_weights=weights))


@torch.no_grad()
def _exact_distribution(prior: CLIPPrior, cond: torch.Tensor, cfg: SamplingConfig
                        ) -> dict[tuple[int, ...], float]:
    """Every token sequence's probability under plain sampling, enumerated through the
    reference forward pass (with guidance: cond and null rows combined)."""
    vocab, n = prior.config.vocab_size, prior.config.n_tokens
    rows = torch.cat([cond, cond])
    prefix = prior.prefix(rows, torch.tensor([False, True]))
    probs: dict[tuple[int, ...], float] = {(): 1.0}
    for length in range(n):
        seqs = list(itertools.product(range(vocab), repeat=length))
        tokens = torch.tensor(seqs, dtype=torch.long).view(len(seqs), length)
        both = prior.full_logits(prefix.repeat_interleave(len(seqs), 0), tokens.repeat(2, 1))
        cond_l, null_l = both[:len(seqs)], both[len(seqs):]
        guided = null_l + cfg.guidance_scale * (cond_l - null_l)
        step = token_probs(guided, cfg)
        probs = {s + (t,): probs[s] * float(step[i, t])
                 for i, s in enumerate(seqs) for t in range(vocab)}
    return probs


def _total_variation(prior, cfg, draws: int) -> float:
    cond = torch.randn(1, 8, generator=torch.Generator().manual_seed(1))
    exact = _exact_distribution(prior, cond, cfg)
    tokens = sample_tokens(prior, cond.expand(draws, -1), cfg,
                           generator=torch.Generator().manual_seed(2))
    counts: dict[tuple[int, ...], int] = {}
    for row in tokens.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    return 0.5 * sum(abs(counts.get(s, 0) / draws - p) for s, p in exact.items())


SAMPLED = dict(temperature=0.8, top_k=3, guidance_scale=1.5, dtype="float32")


def test_speculative_sampling_keeps_plain_samplings_distribution():
    """4^4 = 256 sequences, 12,000 draws in one batch (rows accept different lengths). The
    plain decoder's distance from the exact distribution at this count sets the bar; a wrong
    acceptance rule lands far beyond it (measured: see the planted-rule test)."""
    prior = _prior(vocab=4, n_tokens=4, sharpen=4.0)
    plain = _total_variation(prior, SamplingConfig(**SAMPLED), 12_000)
    fast = _total_variation(prior, SamplingConfig(**SAMPLED, speculative="jacobi", window=3),
                            12_000)
    assert plain < 0.035 and fast < 0.035, (plain, fast)


def test_accepting_on_the_argmax_would_fail_the_distribution_test(monkeypatch):
    """The planted rule: a draft is kept when the target finds it likely (p >= 0.5, its most
    likely token here), not by the probability ratio. The distribution test must catch it."""
    import clipgen.generation.speculative as speculative

    def likely_rule(p_drafts, q_drafts, uniform):
        passed = p_drafts >= 0.5  # "the target's likely token", not u < p/q
        return passed.long().cumprod(dim=1).sum(dim=1)

    monkeypatch.setattr(speculative, "accepted_lengths", likely_rule)
    prior = _prior(vocab=4, n_tokens=4, sharpen=4.0)
    wrong = _total_variation(prior, SamplingConfig(**SAMPLED, speculative="jacobi", window=3),
                             12_000)
    assert wrong > 0.035, wrong


def test_a_rejected_draft_is_drawn_again_from_the_residual():
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0]])
    q = torch.tensor([[0.2, 0.6, 0.1, 0.1]])
    # max(0, p - q) = [0.3, 0, 0.1, 0] -> normalised [0.75, 0, 0.25, 0]
    assert torch.allclose(residual(p, q), torch.tensor([[0.75, 0.0, 0.25, 0.0]]))
    assert torch.equal(residual(q, q), q)  # nothing left: the target itself
    # drafts with p/q = 2.5, 0.5, 2: u = 0.9 passes the first, 0.6 fails the second
    lengths = accepted_lengths(torch.tensor([[0.5, 0.3, 0.2]]), torch.tensor([[0.2, 0.6, 0.1]]),
                               torch.tensor([[0.9, 0.6, 0.0]]))
    assert lengths.tolist() == [1]
    assert accepted_lengths(torch.tensor([[0.5, 0.3]]), torch.tensor([[0.2, 0.6]]),
                            torch.tensor([[0.9, 0.4]])).tolist() == [2]


def test_windows_at_different_positions_per_row_match_one_token_steps():
    prior = _prior(n_prefix=2)
    weights = decoder_weights(prior, torch.float32, torch.device("cpu"))
    prefix = prior.prefix(torch.randn(2, 8))
    tokens = torch.randint(0, 24, (2, 8))
    steps = StaticDecoder(weights, 2, 14)
    steps.prefill(prefix)
    expected = torch.stack([steps.step(tokens[:, i], 2 + i) for i in range(8)], dim=1)
    windows = StaticDecoder(weights, 2, 14)
    windows.prefill(prefix)
    windows.window(tokens[:, :3], torch.tensor([2, 2]))  # both rows fed 3 tokens
    # row 0 goes on from its 6th token; row 1 had junk drafts after its 4th token and goes on
    # from its 5th, overwriting them: each row sees only its own positions so far
    junk = torch.randint(0, 24, (3,))
    windows.window(torch.stack([tokens[0, 3:7], torch.cat([tokens[1, 3:4], junk])]),
                   torch.tensor([5, 5]))
    got = windows.window(torch.stack([tokens[0, 5:8], tokens[1, 4:7]]), torch.tensor([7, 6]))
    assert torch.allclose(got[0], expected[0, 5:8], atol=1e-5)
    assert torch.allclose(got[1], expected[1, 4:7], atol=1e-5)


def test_speculative_settings_are_checked():
    with pytest.raises(ValueError, match="static decoder"):
        SamplingConfig(speculative="jacobi", decoder="hf")
    with pytest.raises(ValueError, match="window"):
        SamplingConfig(speculative="jacobi", window=1)
    with pytest.raises(ValueError, match="null or jacobi"):
        SamplingConfig(speculative="medusa")


def test_speculative_decoding_runs_in_forced_bf16():
    """What `auto` picks on CPUs with native bf16 (and on GPUs), forced here so that every
    processor runs it: valid tokens, and fewer steps than tokens on a peaked prior."""
    prior = _prior(n_prefix=2, sharpen=8.0)
    stats: dict = {}
    tokens = sample_tokens(prior, torch.randn(3, 8),
                           SamplingConfig(temperature=0.0, dtype="bfloat16", speculative="jacobi",
                                          window=4, guidance_scale=2.0), stats=stats)
    assert tokens.shape == (3, 12) and 0 <= int(tokens.min()) and int(tokens.max()) < 24
    assert stats["decode_steps"] < 11
