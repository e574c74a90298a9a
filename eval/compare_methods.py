"""The generators compared on one suite, same CLIP, same prompts: CLIP-GEN sampling, CLIP-GEN
with CLIP reranking, optimisation of the VQGAN latent (VQGAN-CLIP) and evolutionary search.

    python eval/compare_methods.py [Hydra overrides for every run, e.g.
        suite.prompts.samples_per_combination=2 bundle=<folder>]

Each method writes its suite folder under outputs/compare/<name> (resumable). Prints JSON and a
markdown table: attribute accuracy, CLIP score, FD on CLIP features, seconds per image."""

import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from clipgen.benchmark import machine_description
from clipgen.evaluation.suite import run_suite

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")
METHODS = {
    "clipgen": ["method=clipgen", "n_candidates=1"],
    "clipgen_rerank8": ["method=clipgen", "n_candidates=8"],
    "optimize": ["method=optimize"],
    "evolve_ga": ["method=evolve"],
}


def row(name: str, report: dict) -> dict:
    m = report["metrics"]
    attrs = m.get("attributes", {})

    def acc(group: str, key: str):
        return attrs.get(group, {}).get(key, {}).get("accuracy")

    return {"method": name, "color": acc("all", "color"), "shape": acc("all", "shape"),
            "color_and_shape": acc("all", "color_and_shape"),
            "heldout_color_and_shape": acc("heldout", "color_and_shape"),
            "clip_score_100": m.get("clip_score_100"), "fd_clip": m.get("fd_clip"),
            "seconds_per_image": report["timing"].get("seconds_per_image")}


def main() -> None:
    overrides = sys.argv[1:]
    rows = []
    for name, method in METHODS.items():
        with initialize_config_dir(CONFIGS, version_base="1.3"):
            cfg = compose("eval", overrides=[*method, *overrides,
                                             f"out_dir=outputs/compare/{name}"])
        rows.append(row(name, run_suite(cfg)))
    print(json.dumps({"machine": machine_description(), "overrides": overrides, "rows": rows},
                     indent=2))
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
