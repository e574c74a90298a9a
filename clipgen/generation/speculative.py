"""Speculative Jacobi decoding (Teng et al. 2024, "Accelerating Auto-regressive Text-to-Image
Generation with Training-free Speculative Jacobi Decoding"): each decode step feeds a window of
draft tokens at once, accepts the longest prefix of drafts that passes the probabilistic
acceptance test, and draws the first rejected position again from the residual distribution,
so that every token keeps the distribution of plain one-token-at-a-time sampling. The drafts
of the next window are drawn from the distributions this step computed. With temperature 0 the
test accepts a draft exactly when it is the argmax: Jacobi decoding, the plain greedy tokens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from clipgen.generation.decoder import StaticDecoder

# (rows, S, V) logits of every row block and the (B, S) token positions they predict -> the
# (B, S, V) logits to sample from (guidance and composed parts combined)
Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per distribution of (..., V) probabilities."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The distribution a rejected draft is drawn again from: max(0, p - q), normalised; p
    itself where p and q agree (no mass left, a rejection then has probability 0)."""
    rest = (p - q).clamp(min=0)
    total = rest.sum(-1, keepdim=True)
    return torch.where(total > 0, rest / total.clamp(min=1e-30), p)


def accepted_lengths(p_drafts: torch.Tensor, q_drafts: torch.Tensor, uniform: torch.Tensor
                     ) -> torch.Tensor:
    """(B,) drafts accepted per row, from (B, S) probabilities of each draft under the target
    (p) and draft (q) distributions: the test u < p/q (written u q < p) holds for every draft
    before the first that fails it."""
    passed = uniform * q_drafts < p_drafts
    return passed.long().cumprod(dim=1).sum(dim=1)


def jacobi_decode(decoder: StaticDecoder, first_logits: torch.Tensor, blocks: int,
                  n_tokens: int, n_prefix: int, window: int, combine: Combine,
                  token_probs: Callable[[torch.Tensor], torch.Tensor],
                  generator: torch.Generator | None = None,
                  on_token: Callable[[int, torch.Tensor], None] | None = None,
                  stats: dict[str, Any] | None = None) -> torch.Tensor:
    """(B, n_tokens) tokens by speculative Jacobi decoding over a prefilled `decoder` whose
    rows are `blocks` blocks of B (conditions, then parts and null rows, as `combine` reads
    them); `first_logits` are the prefill's (rows, V) logits. `token_probs` turns logits into
    the sampling distribution (temperature, top-k, top-p). Rows accept different numbers of
    tokens per step; a row that is done idles until the batch is. `stats` (when given) gets the
    decode steps and the tokens made per step, of the batch (it steps until its slowest row is
    done) and of each row (averaged); plain decoding makes 1."""
    device = first_logits.device
    p0 = token_probs(combine(first_logits[:, None], torch.zeros(
        (len(first_logits) // blocks, 1), dtype=torch.long, device=device)))[:, 0]
    b = p0.shape[0]
    out = torch.zeros(b, n_tokens, dtype=torch.long, device=device)
    out[:, 0] = draw(p0, generator)
    done = torch.ones(b, dtype=torch.long, device=device)  # tokens accepted per row
    q = p0[:, None].expand(b, window, -1).contiguous()  # each draft's distribution
    drafts = draw(q, generator)
    offsets = torch.arange(window, device=device)
    rows = torch.arange(b, device=device)
    steps, shown = 0, 0
    row_steps = torch.zeros(b, dtype=torch.long, device=device)  # steps until each row is done
    if on_token:
        on_token(0, out)
        shown = 1
    while bool((done < n_tokens).any()):
        # feed [last accepted token, drafts 0..window-2]: logits of positions done..done+window-1
        inputs = torch.cat([out.gather(1, (done - 1)[:, None]), drafts[:, :-1]], dim=1)
        starts = n_prefix + done - 1
        logits = decoder.window(inputs.repeat(blocks, 1), starts.repeat(blocks))
        positions = done[:, None] + offsets
        p = token_probs(combine(logits, positions))
        steps += 1
        row_steps += (done < n_tokens).long()
        uniform = torch.rand((b, window), generator=generator, device=device)
        taken = accepted_lengths(p.gather(2, drafts[..., None])[..., 0],
                                 q.gather(2, drafts[..., None])[..., 0], uniform)
        room = n_tokens - done
        taken = torch.minimum(taken, room)
        keep = offsets[None] < taken[:, None]  # every kept position lies inside the sequence
        out[rows[:, None].expand_as(keep)[keep], positions[keep]] = drafts[keep]
        # the first rejected position, where there is one inside the sequence: drawn again
        redo = (taken < window) & (taken < room)
        at = taken.clamp(max=window - 1)
        again = draw(residual(p[rows, at], q[rows, at]), generator)
        redo_pos = (done + taken).clamp(max=n_tokens - 1)
        out[rows, redo_pos] = torch.where(redo, again, out[rows, redo_pos])
        new_done = done + taken + redo.long()
        # next drafts: from this step's distributions where they reach, else its last one
        ahead = (new_done - done)[:, None] + offsets
        q = p[rows[:, None], ahead.clamp(max=window - 1)]
        drafts = draw(q, generator)
        done = torch.where(done < n_tokens, new_done, done)
        if on_token:
            ready = int(done.min())
            for i in range(shown, ready):
                on_token(i, out)
            shown = ready
    if stats is not None:
        stats["decode_steps"] = steps
        stats["tokens_per_step"] = (n_tokens - 1) / max(steps, 1)  # the batch's
        stats["row_tokens_per_step"] = float(((n_tokens - 1) / row_steps.clamp(min=1).float())
                                             .mean())  # each row's, averaged
    return out
