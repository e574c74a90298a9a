"""Reader for webdataset tar shards in the img2dataset layout (`{key}.jpg|png|webp`,
`{key}.txt`, `{key}.json`)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence

import torch
import webdataset as wds
from PIL import Image

from clipgen.data.skips import SkipCounter
from clipgen.data.transforms import image_transform

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")


def decode_image(data: bytes) -> Image.Image:
    """Decode and fully load image bytes as RGB (raises on corrupt data)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.convert("RGB")


def _sample_decoder(transform: Callable[[Image.Image], torch.Tensor], counter: SkipCounter,
                    caption_key: str) -> Callable[[dict], dict | None]:
    def decode(sample: dict) -> dict | None:
        key = sample.get("__key__", "?")
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        try:
            if ext is None:
                raise ValueError(f"no image member (expected one of {IMAGE_EXTENSIONS})")
            image = transform(decode_image(sample[ext]))
        except Exception as error:  # PIL raises many types for bad data: count and skip
            counter.skip(f"{sample.get('__url__', '?')}:{key}", error)
            return None
        out = {"image": image, "key": key,
               "caption": sample[caption_key].decode("utf-8") if caption_key in sample else ""}
        if "json" in sample:
            out["meta"] = json.loads(sample["json"])
        return out

    return decode


class WebImageTextDataset(wds.DataPipeline):
    """Streaming (image, caption) samples from webdataset shards.

    Shards are split across distributed ranks, then across DataLoader workers; give at least
    `world_size * num_workers` shards. Corrupt images are skipped, warned about and counted in
    `self.skipped`. With `resampled=True` shards are drawn with replacement forever and
    `epoch_length` (samples per worker) marks epochs, the usual setting for multi-node runs.
    """

    def __init__(self, urls: str | Sequence[str], resolution: int = 256, crop: str = "center",
                 hflip: bool = False, shuffle_buffer: int = 0, seed: int = 0,
                 resampled: bool = False, epoch_length: int | None = None,
                 caption_key: str = "txt") -> None:
        urls = list(urls) if not isinstance(urls, str) else urls
        if not urls:
            raise ValueError("no webdataset shards given: set data urls to a path or brace "
                             "pattern such as /data/coco/{00000..00099}.tar")
        self.skipped = SkipCounter()
        decode = _sample_decoder(image_transform(resolution, crop, hflip), self.skipped,
                                 caption_key)
        stages: list = []
        if resampled:
            stages.append(wds.ResampledShards(urls, seed=seed))
        else:
            stages.append(wds.SimpleShardList(urls))
            if shuffle_buffer:
                stages.append(wds.detshuffle(bufsize=1000, seed=seed))
            stages.append(wds.split_by_node)
        stages += [wds.split_by_worker, wds.tarfile_to_samples(handler=wds.warn_and_continue)]
        if shuffle_buffer:
            stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 1000)))
        stages.append(wds.map(decode))
        super().__init__(*stages)
        if epoch_length is not None:
            self.with_epoch(epoch_length)
