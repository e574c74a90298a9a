"""Generate a suite's images into a folder, sharded across processes and resumable: image i is
`images/{i:06d}.png`, written atomically, and finished batches are never generated again."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from clipgen.atomic import remove_stale_temps, write_atomic
from clipgen.data.transforms import to_pil
from clipgen.evaluation.prompts import EvalPrompt

# (prompts, seed) -> (B, 3, H, W) images in [-1, 1]
ImageGenerator = Callable[[Sequence[str], int], torch.Tensor]


def image_path(out_dir: Path, index: int) -> Path:
    return out_dir / "images" / f"{index:06d}.png"


def _manifest(prompts: Sequence[EvalPrompt], settings: dict[str, Any]) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(p.text for p in prompts).encode()).hexdigest()[:16]
    return {"count": len(prompts), "prompts_sha256": digest, "settings": settings}


def _differences(have: Any, want: Any, where: str = "") -> list[str]:
    """The leaves where two manifests differ, as `key: there -> here`."""
    if isinstance(have, dict) and isinstance(want, dict):
        return [d for k in sorted(set(have) | set(want), key=str)
                for d in _differences(have.get(k), want.get(k), f"{where}{k}.")]
    return [] if have == want else [f"{where.rstrip('.')}: {have!r} there, {want!r} now"]


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """The manifest of a folder of generated images."""
    path = out_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} has no manifest.json: run the generate step first")
    return json.loads(path.read_text())


def check_manifest(out_dir: Path, prompts: Sequence[EvalPrompt], settings: dict[str, Any]) -> None:
    """Record what the folder's images are made from; refuse to mix in another prompt set or
    other generator settings or weights."""
    want = _manifest(prompts, settings)
    path = out_dir / "manifest.json"
    if path.is_file():
        have = json.loads(path.read_text())
        if have != want:
            raise ValueError(
                f"{out_dir} holds images generated with other prompts, settings or weights ("
                + "; ".join(_differences(have, want)) + "). Use another out_dir, or delete "
                "the folder to start over")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda p: p.write_text(json.dumps(want, indent=2, sort_keys=True)))


def missing_images(out_dir: Path, indices: Iterable[int]) -> list[int]:
    """The indices among `indices` whose image is not written yet."""
    return [i for i in indices if not image_path(out_dir, i).is_file()]


def generate_images(generate: ImageGenerator, prompts: Sequence[EvalPrompt], out_dir: str | Path,
                    settings: dict[str, Any], batch_size: int = 16, seed: int = 0,
                    rank: int = 0, world_size: int = 1, progress: bool = True) -> int:
    """Generate this process's share of the images (batch b belongs to rank b % world_size;
    batch b is sampled with seed + b, so the images do not depend on how the work was split or
    resumed). Returns the number of images generated now."""
    out_dir = Path(out_dir)
    check_manifest(out_dir, prompts, settings)
    (out_dir / "images").mkdir(exist_ok=True)
    # PNGs half-written by a killed run (other ranks' writes in progress are seconds old)
    remove_stale_temps(out_dir / "images", min_age_s=60)
    batches = [b for b in range(rank, -(-len(prompts) // batch_size), world_size)]
    def span(b: int) -> range:
        return range(b * batch_size, min((b + 1) * batch_size, len(prompts)))

    todo = [b for b in batches if missing_images(out_dir, span(b))]
    made = 0
    share = sum(len(span(b)) for b in batches)
    def write_batch(lo: int, images: torch.Tensor) -> None:
        for i, image in enumerate(images, start=lo):
            write_atomic(image_path(out_dir, i), lambda p, im=image: to_pil(im).save(p, "PNG"))

    # PNG encoding runs in a thread while the next batch is sampled; one batch in flight
    with tqdm(total=share, initial=share - sum(len(span(b)) for b in todo),
              desc=f"generate[{rank}]", unit="img", disable=not progress) as bar, \
            ThreadPoolExecutor(max_workers=1) as writer:
        in_flight: Future | None = None
        for b in todo:
            lo, hi = span(b).start, span(b).stop
            images = generate([p.text for p in prompts[lo:hi]], seed + b)
            if len(images) != hi - lo:
                raise RuntimeError(f"generator returned {len(images)} images for {hi - lo} prompts")
            if in_flight is not None:
                in_flight.result()  # the previous batch is on disk (or its error is raised)
            in_flight = writer.submit(write_batch, lo, images.cpu())
            made += hi - lo
            bar.update(hi - lo)
        if in_flight is not None:
            in_flight.result()
    return made


def read_images(out_dir: str | Path, indices: Sequence[int]) -> torch.Tensor:
    """uint8 (N, 3, H, W) tensors of generated images."""
    arrays = []
    for i in indices:
        with Image.open(image_path(Path(out_dir), i)) as im:
            arrays.append(np.asarray(im.convert("RGB")))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
