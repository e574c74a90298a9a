"""Shapes CLIP quality: zero-shot accuracy per attribute (prompt ensembles) and retrieval R@1.

    python eval/clip_zero_shot.py <weights: clip.safetensors or .pt> [--arch NAME]
                                  [--num-images 1024] [--split val|heldout]

Prints JSON and a markdown table."""

import argparse

import torch

from clipgen.benchmark import machine_description, print_report
from clipgen.data.shapes import ATTRIBUTE_VALUES
from clipgen.data.shapes_dataset import ShapesDataset
from clipgen.metrics.clip_zero_shot import retrieval_r1, zero_shot_accuracy
from clipgen.models.clip import FrozenCLIP

DEFAULT_HOLDOUT = [{"color": "yellow", "shape": "triangle"}, {"color": "blue", "shape": "star"}]


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights")
    parser.add_argument("--arch", default="clipgen-shapes-vit-tiny")
    parser.add_argument("--num-images", type=int, default=1024)
    parser.add_argument("--split", default="val")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    clip = FrozenCLIP(args.arch, args.weights)
    data = ShapesDataset(args.num_images, image_size=clip.image_size, split=args.split,
                         holdout=DEFAULT_HOLDOUT)
    items = [data[i] for i in range(len(data))]
    images = torch.stack([it["image"] for it in items])
    captions = [it["caption"] for it in items]
    image_emb = torch.cat([clip.encode_image(images[i:i + args.batch_size])
                           for i in range(0, len(items), args.batch_size)])
    text_emb = torch.cat([clip.encode_text(captions[i:i + args.batch_size])
                          for i in range(0, len(items), args.batch_size)])
    truth = {k: [it["attributes"][k] for it in items] for k in ATTRIBUTE_VALUES}
    row = {"split": args.split, "images": len(items),
           **{f"zero_shot_{k}": round(v, 4)
              for k, v in zero_shot_accuracy(image_emb, truth, clip.encode_text).items()}}
    i2t, t2i = retrieval_r1(image_emb, text_emb, captions)
    row.update({"i2t_r1": round(i2t, 4), "t2i_r1": round(t2i, 4), **machine_description()})
    print_report([row], f"Shapes CLIP {args.arch}: {args.weights}")


if __name__ == "__main__":
    main()
