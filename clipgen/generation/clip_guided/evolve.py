"""Evolutionary search over VQGAN latents with CLIP similarity as the fitness: a genetic
algorithm (elitism, tournament selection, uniform crossover, Gaussian mutation) or a separable
CMA-ES (diagonal covariance; Ros & Hansen 2008)."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from clipgen.generation.clip_guided.latents import (
    autocast_for,
    clip_similarity,
    decode_latents,
    random_latents,
)
from clipgen.models.clip import FrozenCLIP
from clipgen.models.vqgan import VQGAN


@dataclass
class EvolveConfig:
    algorithm: str = "ga"       # ga or cma (separable CMA-ES)
    population: int = 16
    generations: int = 20
    elite: int = 2              # ga: best individuals copied unchanged
    crossover: float = 0.5      # ga: probability that a child mixes two parents
    mutation: float = 0.3       # ga: std of the Gaussian mutation
    sigma: float = 0.5          # cma: initial step size
    quantize: bool = True       # decode quantised latents (images the tokenizer can produce)
    init_noise: float = 0.1
    dtype: str = "float32"      # VQGAN and CLIP passes: float32 or, under autocast, bf16 ...


@dataclass
class EvolveResult:
    latents: torch.Tensor       # (B, P, C, h, w), the final population, best first
    fitness: torch.Tensor       # (B, P), best first
    images: torch.Tensor        # (B, P, 3, H, W) of the final population, best first
    best: torch.Tensor          # (generations + 1, B): best fitness of each generation


class Fitness:
    """CLIP similarity of decoded latents to their prompt's condition."""

    def __init__(self, vqgan: VQGAN, clip: FrozenCLIP, cond: torch.Tensor, quantize: bool,
                 batch_size: int = 64,
                 precision: AbstractContextManager | None = None) -> None:
        """`precision`: the autocast context the VQGAN and CLIP passes run in (none: fp32)."""
        self.vqgan, self.clip, self.cond = vqgan, clip, cond
        self.quantize, self.batch_size = quantize, batch_size
        self.precision = precision or nullcontext()

    @torch.no_grad()
    def __call__(self, pop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, P, C, h, w) latents -> ((B, P) fitness, (B, P, 3, H, W) images)."""
        b, p = pop.shape[:2]
        flat = pop.reshape(b * p, *pop.shape[2:])
        cond = self.cond.repeat_interleave(p, dim=0)
        images, scores = [], []
        for i in range(0, len(flat), self.batch_size):
            with self.precision:
                img = decode_latents(self.vqgan, flat[i:i + self.batch_size], self.quantize)
                scores.append(clip_similarity(self.clip, img, cond[i:i + self.batch_size]))
            images.append(img)
        images_t = torch.cat(images)
        return torch.cat(scores).view(b, p), images_t.view(b, p, *images_t.shape[1:])


def _ranked(pop: torch.Tensor, fit: torch.Tensor, images: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    order = fit.argsort(dim=1, descending=True)
    take = torch.arange(len(fit), device=fit.device)[:, None]
    return pop[take, order], fit[take, order], images[take, order]


def _ga_generation(pop: torch.Tensor, fit: torch.Tensor, cfg: EvolveConfig,
                   gen: torch.Generator) -> torch.Tensor:
    """The next population from a ranked one (best first)."""
    b, p = fit.shape
    dev = pop.device
    n_child = p - cfg.elite

    def tournament() -> torch.Tensor:  # (B, n_child) indices: the better of two random picks
        a = torch.randint(0, p, (b, n_child), generator=gen, device=dev)
        c = torch.randint(0, p, (b, n_child), generator=gen, device=dev)
        return torch.minimum(a, c)  # ranked population: lower index = fitter

    take = torch.arange(b, device=dev)[:, None]
    mother, father = pop[take, tournament()], pop[take, tournament()]
    spatial = (b, n_child, 1, *pop.shape[3:])
    mask = torch.rand(spatial, generator=gen, device=dev) < 0.5
    mixes = torch.rand((b, n_child, 1, 1, 1), generator=gen, device=dev) < cfg.crossover
    children = torch.where(mask & mixes, father, mother)
    children = children + cfg.mutation * torch.randn(children.shape, generator=gen, device=dev)
    return torch.cat([pop[:, :cfg.elite], children], dim=1)


class SeparableCMA:
    """sep-CMA-ES for B independent problems at once, on flattened latents of dimension d."""

    def __init__(self, mean: torch.Tensor, sigma: float, population: int) -> None:
        b, d = mean.shape
        self.mean, self.d, self.lam = mean.clone(), d, population
        self.mu = population // 2
        w = math.log(self.mu + 0.5) - torch.log(torch.arange(1, self.mu + 1, dtype=mean.dtype,
                                                             device=mean.device))
        self.w = w / w.sum()
        self.mueff = float(1 / (self.w ** 2).sum())
        self.cs = (self.mueff + 2) / (d + self.mueff + 5)
        self.ds = 1 + 2 * max(0.0, math.sqrt((self.mueff - 1) / (d + 1)) - 1) + self.cs
        self.cc = (4 + self.mueff / d) / (d + 4 + 2 * self.mueff / d)
        scale = (d + 2) / 3  # separable CMA: faster covariance learning
        self.c1 = scale * 2 / ((d + 1.3) ** 2 + self.mueff)
        self.cmu = min(1 - self.c1, scale * 2 * (self.mueff - 2 + 1 / self.mueff)
                       / ((d + 2) ** 2 + self.mueff))
        self.chi = math.sqrt(d) * (1 - 1 / (4 * d) + 1 / (21 * d * d))
        self.sigma = torch.full((b, 1), sigma, dtype=mean.dtype, device=mean.device)
        self.diag = torch.ones_like(mean)
        self.ps = torch.zeros_like(mean)
        self.pc = torch.zeros_like(mean)
        self.noise: torch.Tensor | None = None

    def ask(self, gen: torch.Generator) -> torch.Tensor:
        b = len(self.mean)
        self.noise = torch.randn((b, self.lam, self.d), generator=gen, device=self.mean.device)
        return self.mean[:, None] + self.sigma[:, None] * self.diag.sqrt()[:, None] * self.noise

    def tell(self, fitness: torch.Tensor) -> None:
        """Update from the (B, lambda) fitness of the last `ask` (higher is better)."""
        order = fitness.argsort(dim=1, descending=True)[:, : self.mu]
        take = torch.arange(len(order), device=order.device)[:, None]
        z = self.noise[take, order]                     # (B, mu, d) standard normal steps
        y = self.diag.sqrt()[:, None] * z                 # steps in the search space / sigma
        zw, yw = (self.w[None, :, None] * z).sum(1), (self.w[None, :, None] * y).sum(1)
        self.mean = self.mean + self.sigma * yw
        self.ps = (1 - self.cs) * self.ps + math.sqrt(self.cs * (2 - self.cs) * self.mueff) * zw
        self.pc = (1 - self.cc) * self.pc + math.sqrt(self.cc * (2 - self.cc) * self.mueff) * yw
        rank_mu = (self.w[None, :, None] * y * y).sum(1)
        self.diag = ((1 - self.c1 - self.cmu) * self.diag + self.c1 * self.pc ** 2
                     + self.cmu * rank_mu).clamp(min=1e-8)
        norm = self.ps.norm(dim=1, keepdim=True)
        self.sigma = self.sigma * torch.exp((self.cs / self.ds) * (norm / self.chi - 1))


@torch.no_grad()
def evolve_latents(vqgan: VQGAN, clip: FrozenCLIP, cond: torch.Tensor, cfg: EvolveConfig,
                   seed: int = 0,
                   on_generation: Callable[[int, torch.Tensor], None] | None = None
                   ) -> EvolveResult:
    """A population per row of `cond`, evolved for `cfg.generations`; returns the final
    population ranked by fitness (CLIP similarity). `on_generation(g, best_images)` sees each
    generation's best image per row."""
    if cfg.algorithm not in ("ga", "cma"):
        raise ValueError(f"unknown algorithm {cfg.algorithm!r}: use ga or cma")
    if cfg.algorithm == "ga" and not 0 <= cfg.elite < cfg.population:
        raise ValueError(f"elite ({cfg.elite}) must lie in [0, population={cfg.population})")
    device = cond.device
    gen = torch.Generator(device=device).manual_seed(seed)
    fitness = Fitness(vqgan, clip, cond, cfg.quantize, precision=autocast_for(cfg.dtype, device))
    b, p = len(cond), cfg.population
    pop = random_latents(vqgan, b * p, gen, cfg.init_noise)
    shape = pop.shape[1:]
    pop = pop.view(b, p, *shape)
    cma = SeparableCMA(pop.mean(1).flatten(1), cfg.sigma, p) if cfg.algorithm == "cma" else None
    best: list[torch.Tensor] = []
    fit = torch.empty(0)
    for g in range(cfg.generations + 1):
        if cma is not None:
            pop = cma.ask(gen).view(b, p, *shape)
        elif g > 0:
            pop = _ga_generation(pop, fit, cfg, gen)
        fit, images = fitness(pop)
        if cma is not None:
            cma.tell(fit)  # in the order of ask
        pop, fit, images = _ranked(pop, fit, images)
        best.append(fit[:, 0].cpu())
        if on_generation:
            on_generation(g, images[:, 0])
    return EvolveResult(pop.cpu(), fit.cpu(), images.cpu(), torch.stack(best))
