"""Shapes tokenizer quality: python eval/vqgan_recon.py <vqgan checkpoint or export>
[--num-images 512]. Prints JSON and a markdown table."""

import argparse

import torch

from clipgen.benchmark import machine_description, print_report
from clipgen.metrics.reconstruction import shapes_reconstruction_report
from clipgen.models.vqgan import load_vqgan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("weights", help="clipgen VQGAN checkpoint (.ckpt) or vqgan.safetensors")
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    report = shapes_reconstruction_report(load_vqgan(args.weights), args.num_images,
                                          args.batch_size, split=args.split)
    print_report([{**report, **machine_description()}], f"VQGAN reconstruction: {args.weights}")


if __name__ == "__main__":
    main()
