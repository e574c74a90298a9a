"""Images/s of an evaluation suite's generate step (prompts to PNG files, the same path as
`eval/evaluate.py`) for each generation batch size and sampling variant, timed in one run, to
choose the suite's `batch_size` default and sampling weights by measurement."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

from clipgen.evaluation.sharded_generation import generate_images
from clipgen.evaluation.suite import generator_settings, method_image_generator, suite_prompts
from clipgen.generation.settings import build_generator, resolve_device
from clipgen.jobs.hardware_check import compose_config


def suite_throughput_rows(eval_overrides: Sequence[str], variants: Mapping[str, Sequence[str]],
                          batches: Sequence[int], images: int, repeats: int = 1
                          ) -> list[dict[str, Any]]:
    """One row per variant (a name and its extra `eval` overrides) and batch size: seconds
    and images/s of generating the suite's first `images` prompts into a fresh folder (best
    of `repeats`), and the speed-up over the first variant at the first batch size. The
    models load once; each variant's decode weights are prepared before its timing starts."""
    base = compose_config("eval", [*eval_overrides, "out_dir=unused"])
    device = resolve_device(base.device)
    pipe = build_generator(base, device)
    rows: list[dict[str, Any]] = []
    for name, overrides in variants.items():
        for batch in batches:
            cfg = compose_config("eval", [*eval_overrides, *overrides, f"batch_size={batch}",
                                          "out_dir=unused"])
            # a variant may phrase the prompts its own way (suite.prompts.*)
            prompts = suite_prompts(cfg)[:images]
            if len(prompts) < images:
                raise ValueError(f"the suite gives {len(prompts)} prompts, fewer than "
                                 f"images={images} (variant {name})")
            generate = method_image_generator(pipe, cfg)
            generate([p.text for p in prompts[:batch]], 0)  # warm-up: weights, caches
            best = float("inf")
            for _ in range(repeats):
                with tempfile.TemporaryDirectory() as out:
                    start = time.perf_counter()
                    made = generate_images(generate, prompts, out, generator_settings(cfg, pipe),
                                           batch, cfg.seed, progress=False)
                    best = min(best, time.perf_counter() - start)
            rows.append({"variant": name, "overrides": " ".join(overrides), "batch_size": batch,
                         "images": made, "seconds": round(best, 2),
                         "images_per_s": round(made / best, 2)})
    first = rows[0]["images_per_s"]
    for row in rows:
        row["x_first"] = round(row["images_per_s"] / first, 2)
    return rows


def bench(cfg: DictConfig) -> list[dict[str, Any]]:
    """`suite_throughput_rows` from a `bench_suite` config."""
    variants = {str(k): [str(o) for o in v] for k, v in cfg.variants.items()}
    return suite_throughput_rows([str(o) for o in cfg.eval_overrides], variants,
                                 [int(b) for b in cfg.batches], int(cfg.images),
                                 int(cfg.repeats))
