"""Write Shapes samples to webdataset tar shards in the img2dataset layout."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from clipgen.data.shapes import ShapesWorld


def export_shapes(out_dir: str | Path, num_samples: int, image_size: int = 64, seed: int = 0,
                  split: str = "train", holdout: Iterable[Mapping[str, str]] = (),
                  shard_size: int = 1000, progress: bool = True) -> list[Path]:
    """Render `num_samples` Shapes samples into `out_dir/{00000..}.tar`; return the shard paths.

    Each sample is `{key}.png`, `{key}.txt` (the caption) and `{key}.json` (the attribute
    record with geometry, seed, split and index); keys are 9-digit sample indices.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = ShapesWorld(image_size=image_size, seed=seed, split=split, holdout=list(holdout))
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=shard_size, verbose=0) as sink:
        for index in tqdm(range(num_samples), desc=f"shapes {split}", disable=not progress):
            sample = world[index]
            png = io.BytesIO()
            sample.image.save(png, format="PNG")
            meta = {**sample.record.to_dict(), "seed": seed, "split": split, "index": index,
                    "caption": sample.caption}
            sink.write({"__key__": f"{index:09d}", "png": png.getvalue(),
                        "txt": sample.caption.encode("utf-8"),
                        "json": json.dumps(meta).encode("utf-8")})
    return sorted(out.glob("*.tar"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", help="folder for the .tar shards")
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train")
    parser.add_argument("--holdout", default="[]",
                        help='JSON list of held-out combinations, e.g. '
                             '\'[{"color": "yellow", "shape": "triangle"}]\'')
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parser.parse_args(argv)
    shards = export_shapes(args.out_dir, args.num_samples, args.image_size, args.seed,
                           args.split, json.loads(args.holdout), args.shard_size)
    print(f"wrote {args.num_samples} samples in {len(shards)} shards to {args.out_dir}")


if __name__ == "__main__":
    main()
