"""Where a Shapes prior's token loss goes (object, near background, far background, border):
python eval/prior_token_loss.py [bundle folder] [--num-images 128]. Prints JSON and a
markdown table."""

import argparse

import torch

from clipgen.benchmark import machine_description, print_report
from clipgen.metrics.prior_regions import token_loss_by_region
from clipgen.pipeline import TextToImage, default_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bundle", nargs="?", default=None,
                        help="folder with vqgan, clip and gpt exports (default: the shipped one)")
    parser.add_argument("--num-images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    name = args.bundle or "shipped"
    t2i = TextToImage.from_bundle(args.bundle or default_bundle())
    report = token_loss_by_region(t2i, args.num_images, args.batch_size, split=args.split)
    print_report([{"bundle": name, **report, **machine_description()}],
                 f"Prior token loss by region: {name}")


if __name__ == "__main__":
    main()
