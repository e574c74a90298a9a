"""Reader for webdataset tar shards in the img2dataset layout (`{key}.jpg|png|webp`,
`{key}.txt`, `{key}.json`)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence

import braceexpand
import torch
import webdataset as wds
from PIL import Image

from clipgen.data.image_folder import load_image
from clipgen.data.skips import SkipCounter
from clipgen.data.transforms import image_transform

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")


def _sample_decoder(transform: Callable[[Image.Image], torch.Tensor], counter: SkipCounter,
                    caption_key: str, require_caption: bool) -> Callable[[dict], dict | None]:
    def decode(sample: dict) -> dict | None:
        key = sample.get("__key__", "?")
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        try:
            if ext is None:
                raise ValueError(f"no image member (expected one of {IMAGE_EXTENSIONS})")
            out = {"image": transform(load_image(io.BytesIO(sample[ext]))), "key": key,
                   "caption": sample[caption_key].decode("utf-8").strip()
                   if caption_key in sample else ""}
            if require_caption and not out["caption"]:
                raise ValueError(f"no caption (.{caption_key} member missing or empty)")
            if "json" in sample:
                out["meta"] = json.loads(sample["json"])
                if isinstance(out["meta"], dict) and "captions" in out["meta"]:
                    out["captions"] = [str(c).strip() for c in out["meta"]["captions"]]
        except Exception as error:  # bad image bytes, text or JSON: count and skip the sample
            counter.skip(f"{sample.get('__url__', '?')}:{key}", error)
            return None
        return out

    return decode


def expand_shards(urls: str | Sequence[str]) -> list[str]:
    """The shard list of a path, brace pattern or list of them. Local shards must all exist:
    a pattern that matches no file, or a missing shard, is an error now (with resampling a
    missing shard would otherwise be retried forever)."""
    patterns = [urls] if isinstance(urls, str) else list(urls)
    shards = [u for pattern in patterns for part in str(pattern).split("::")
              for u in braceexpand.braceexpand(part)]
    if not shards:
        raise ValueError("no webdataset shards given: set data urls to a path or brace "
                         "pattern such as /data/coco/{00000..00099}.tar")
    local = [u for u in shards if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not os.path.isfile(u)]
    if missing and len(missing) == len(local):
        raise FileNotFoundError(
            f"the shard pattern {urls} matches no file (first: {missing[0]}); check the path "
            "and the brace range, and quote the pattern on the command line: "
            "data.train.urls=\"'/data/{00000..00099}.tar'\"")
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(local)} shards of {urls} are missing "
                                f"(first: {missing[0]}); fix the brace range to the shards "
                                "that exist")
    return shards


class WebImageTextDataset(wds.DataPipeline):
    """Streaming (image, caption) samples from webdataset shards.

    Shards are split across distributed ranks, then across DataLoader workers; give at least
    `world_size * num_workers` shards. Samples with a corrupt image, caption or JSON (and, with
    `require_caption`, without a caption) are skipped, warned about by `shard:key` and counted
    in `self.skipped`; a truncated shard is warned about and counted as cut short. With
    `resampled=True` shards are drawn with replacement forever and
    `epoch_length` (samples per worker) marks epochs, the usual setting for multi-node runs.
    """

    def __init__(self, urls: str | Sequence[str], resolution: int = 256, crop: str = "center",
                 hflip: bool = False, shuffle_buffer: int = 0, seed: int = 0,
                 resampled: bool = False, epoch_length: int | None = None,
                 caption_key: str = "txt", require_caption: bool = False) -> None:
        urls = expand_shards(urls)
        self.skipped = SkipCounter()
        decode = _sample_decoder(image_transform(resolution, crop, hflip), self.skipped,
                                 caption_key, require_caption)
        stages: list = []
        if resampled:
            stages.append(wds.ResampledShards(urls, seed=seed))
        else:
            stages.append(wds.SimpleShardList(urls))
            if shuffle_buffer:
                stages.append(wds.detshuffle(bufsize=1000, seed=seed))
            stages.append(wds.split_by_node)
        stages += [wds.split_by_worker,
                   wds.tarfile_to_samples(handler=self.skipped.shard_error)]
        if shuffle_buffer:
            stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 1000)))
        stages.append(wds.map(decode))
        super().__init__(*stages)
        if epoch_length is not None:
            self.with_epoch(epoch_length)


def optional_web_dataset(urls: str | Sequence[str] | None = None, **reader: object
                         ) -> WebImageTextDataset | None:
    """A `WebImageTextDataset` over `urls`, or None (no dataset) when no urls are given: the
    validation split of `data=webdataset`, whose reader settings stay filled in so that
    `data.val.urls=...` alone adds a validation set."""
    return None if urls is None else WebImageTextDataset(urls, **reader)
