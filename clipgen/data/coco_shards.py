"""Write MS-COCO (a captions file and its image folder) to webdataset shards, one sample per
image: `{key}.jpg` (the original bytes), `{key}.txt` (its first caption) and `{key}.json`
(image id, file name and every caption). Reads local files only; no download, no URL server."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from clipgen.data.coco import load_coco_captions


def shard_pattern(out_dir: str | Path, count: int) -> str:
    """The brace pattern naming shards 00000 .. count-1 in `out_dir`."""
    return f"{Path(out_dir)}/{{00000..{count - 1:05d}}}.tar"


def write_coco_shards(annotations: str | Path, image_dir: str | Path, out_dir: str | Path,
                      shard_size: int = 1000, progress: bool = True) -> list[Path]:
    """Shard every image of `annotations` that exists in `image_dir`; return the shards.

    Images missing from `image_dir` are an error (a partial copy of COCO would otherwise
    train on a silent subset)."""
    files, anns = load_coco_captions(annotations)
    captions: dict[int, list[str]] = defaultdict(list)
    for a in anns:  # sorted by annotation id: the first caption is the lowest id
        captions[int(a["image_id"])].append(a["caption"].strip())
    image_dir = Path(image_dir)
    missing = [name for name in files.values() if not (image_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(files)} images of {annotations} are "
                                f"not in {image_dir} (first: {missing[0]})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "%05d.tar"), maxcount=shard_size, verbose=0) as sink:
        for image_id in tqdm(sorted(files), desc="coco shards", disable=not progress):
            name = files[image_id]
            texts = captions.get(image_id, [])
            sample = {"__key__": f"{image_id:012d}", "jpg": (image_dir / name).read_bytes(),
                      "json": json.dumps({"image_id": image_id, "file_name": name,
                                          "captions": texts}).encode("utf-8")}
            if texts:
                sample["txt"] = texts[0].encode("utf-8")
            sink.write(sample)
    return sorted(out.glob("*.tar"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("annotations", help="captions_train2014.json")
    parser.add_argument("image_dir", help="train2014/")
    parser.add_argument("out_dir", help="folder for the .tar shards")
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parser.parse_args(argv)
    shards = write_coco_shards(args.annotations, args.image_dir, args.out_dir, args.shard_size)
    print(f"wrote {len(shards)} shards; use them as {shard_pattern(args.out_dir, len(shards))}")


if __name__ == "__main__":
    main()
