import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from clipgen.data.coco import CocoCaptionsDataset, draw_captions
from clipgen.data.datamodule import ImageTextDataModule, collate_samples
from clipgen.data.export_shapes import export_shapes
from clipgen.data.image_folder import ImageFolderDataset
from clipgen.data.shapes import ShapesWorld
from clipgen.data.transforms import image_transform, pil_to_tensor
from clipgen.data.webdataset_reader import WebImageTextDataset


def _png_bytes(color=(200, 10, 10), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_exported_shards_read_back_identically(tmp_path):
    shards = export_shapes(tmp_path, 25, image_size=32, seed=2, shard_size=10, progress=False)
    assert [p.name for p in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    with tarfile.open(shards[0]) as tar:
        names = tar.getnames()
    assert sorted(names[:3]) == ["000000000.json", "000000000.png", "000000000.txt"]
    ds = WebImageTextDataset(str(tmp_path / "{00000..00002}.tar"), resolution=32)
    samples = {s["key"]: s for s in ds}
    world = ShapesWorld(image_size=32, seed=2)
    assert len(samples) == 25
    for i in range(25):
        s = samples[f"{i:09d}"]
        assert torch.equal(s["image"], pil_to_tensor(world[i].image))
        assert s["caption"] == world[i].caption
        assert s["meta"]["color"] == world[i].record.color
    assert ds.skipped.count == 0


def test_corrupt_image_in_a_shard_is_skipped_and_counted(tmp_path, caplog):
    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(5):
            png = _png_bytes() if i != 2 else b"\x89PNG\r\n\x1a\n this is not an image"
            _add(tar, f"{i:09d}.png", png)
            _add(tar, f"{i:09d}.txt", f"caption {i}".encode())
    ds = WebImageTextDataset(str(path), resolution=16)
    with caplog.at_level("WARNING"):
        keys = [s["key"] for s in ds]
    assert keys == ["000000000", "000000001", "000000003", "000000004"]
    assert ds.skipped.count == 1
    assert "000000002" in caplog.text


def test_skip_count_is_shared_with_dataloader_workers(tmp_path):
    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(4):
            _add(tar, f"{i:09d}.jpg", b"garbage" if i % 2 else _png_bytes())
            _add(tar, f"{i:09d}.txt", b"x")
    ds = WebImageTextDataset(str(path), resolution=16)
    loader = DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_samples)
    total = sum(len(b["caption"]) for b in loader if b)
    assert total == 2 and ds.skipped.count == 2


def test_shuffle_buffer_keeps_every_sample(tmp_path):
    export_shapes(tmp_path, 30, image_size=16, shard_size=10, progress=False)
    ds = WebImageTextDataset([str(p) for p in sorted(tmp_path.glob("*.tar"))], resolution=16,
                             shuffle_buffer=8, seed=1)
    keys = [s["key"] for s in ds]
    assert sorted(keys) == [f"{i:09d}" for i in range(30)] and keys != sorted(keys)


def test_missing_urls_is_a_clear_error():
    with pytest.raises(ValueError, match="no webdataset shards"):
        WebImageTextDataset([])


def test_transform_resizes_shorter_side_and_crops():
    img = Image.new("RGB", (80, 40), (255, 0, 0))
    out = image_transform(32, crop="center")(img)
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out[0], torch.ones(32, 32), atol=1e-2)
    assert torch.allclose(out[1], -torch.ones(32, 32), atol=1e-2)
    with pytest.raises(ValueError, match="crop must be"):
        image_transform(32, crop="top")


def test_image_folder_reads_classes_and_counts_corrupt(tmp_path):
    for cls, color in (("n01", (255, 0, 0)), ("n02", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (20, 24), color).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "n02" / "bad.jpg").write_bytes(b"not a jpeg")
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"n01": "tench", "n02": "goldfish"}))
    ds = ImageFolderDataset(tmp_path, resolution=16, class_names=names)
    assert len(ds) == 5 and ds.classes == ["n01", "n02"]
    batch = collate_samples([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (4, 3, 16, 16)
    assert batch["label"].tolist() == [0, 0, 1, 1]
    assert batch["caption"][0] == "a photo of a tench."
    assert ds.skipped.count == 1


def test_coco_captions(tmp_path):
    (tmp_path / "val2014").mkdir()
    images, anns = [], []
    for i in range(3):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.new("RGB", (50, 40), (i * 80, 0, 0)).save(tmp_path / "val2014" / name)
        images.append({"id": i, "file_name": name})
        anns += [{"id": 10 * i + j, "image_id": i, "caption": f"image {i} caption {j} "}
                 for j in range(2)]
    ann_file = tmp_path / "captions_val2014.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns}))
    per_caption = CocoCaptionsDataset(ann_file, tmp_path / "val2014", resolution=32)
    assert len(per_caption) == 6
    assert per_caption[1]["caption"] == "image 0 caption 1"
    per_image = CocoCaptionsDataset(ann_file, tmp_path / "val2014", resolution=32, mode="image")
    assert [per_image[i]["image_id"] for i in range(3)] == [0, 1, 2]
    assert draw_captions(anns, 4, seed=0) == draw_captions(anns, 4, seed=0)
    assert len({a["id"] for a in draw_captions(anns, 4, seed=0)}) == 4
    with pytest.raises(FileNotFoundError, match="captions_val2014.json"):
        CocoCaptionsDataset(tmp_path / "missing.json", tmp_path / "val2014")


def test_datamodule_batches_shapes():
    from clipgen.data.shapes_dataset import ShapesDataset

    dm = ImageTextDataModule(ShapesDataset(8, image_size=16), ShapesDataset(4, 16, split="val"),
                             batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16)
    assert len(batch["attributes"]["color"]) == 4
    assert np.isclose(dm.skipped(), 0)


def test_shards_split_across_ranks(tmp_path, monkeypatch):
    export_shapes(tmp_path, 40, image_size=16, shard_size=10, progress=False)
    urls = str(tmp_path / "{00000..00003}.tar")
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append({s["key"] for s in WebImageTextDataset(urls, resolution=16)})
    assert len(seen[0]) == len(seen[1]) == 20 and not seen[0] & seen[1]
