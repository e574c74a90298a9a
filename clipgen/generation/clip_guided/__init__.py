"""Generators that steer the VQGAN with CLIP instead of sampling the prior: gradient ascent on
the latent (VQGAN-CLIP) and evolutionary search (genetic algorithm or separable CMA-ES)."""
