"""Attribute accuracy of a Shapes bundle conditioned on CLIP image embeddings of test renders
versus the text embeddings of prompts naming all their attributes:
python eval/condition_gap.py [bundle folder] [--num-images 64] [--top-k K] [--guidance-scale G].
Sampling settings default to configs/generator/default.yaml. Prints JSON and a markdown table."""

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf

from clipgen.benchmark import machine_description, print_report
from clipgen.evaluation.condition_gap import CONDITIONS, condition_gap
from clipgen.pipeline import TextToImage, default_bundle
from clipgen.sampling import SamplingConfig

GENERATOR_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "generator" / "default.yaml"
ATTRIBUTES = ("color", "shape", "color_and_shape", "size", "position", "background")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", nargs="?", default=None,
                        help="folder with vqgan, clip and gpt exports (default: the shipped one)")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--split", default="test")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None, help="0 turns top-k off")
    parser.add_argument("--guidance-scale", type=float, default=None)
    args = parser.parse_args()
    settings = OmegaConf.to_container(OmegaConf.load(GENERATOR_CONFIG).sampling)
    for key in ("temperature", "top_k", "guidance_scale"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings["top_k"] = settings["top_k"] or None
    torch.set_flush_denormal(True)
    t2i = TextToImage.from_bundle(args.bundle or default_bundle())
    report = condition_gap(t2i, args.num_images, SamplingConfig(**settings), args.batch_size,
                           split=args.split)
    common = {"bundle": args.bundle or "shipped", "images": report["images"],
              "text_image_cosine": report["text_image_cosine"],
              "top_k": settings["top_k"], "guidance_scale": settings["guidance_scale"]}
    rows = [{"condition": name, **{a: report[f"{name}_{a}"] for a in ATTRIBUTES}, **common,
             **machine_description()} for name in CONDITIONS]
    print_report(rows, "Image versus text conditioning")


if __name__ == "__main__":
    main()
