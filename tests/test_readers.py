import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
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


def test_bad_text_json_and_missing_captions_are_skipped_by_shard_and_key(tmp_path, caplog):
    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(6):
            _add(tar, f"{i:09d}.png", _png_bytes())
            if i != 4:  # sample 4 has no caption
                _add(tar, f"{i:09d}.txt", b"\xff\xfe not utf-8" if i == 1 else b"a caption")
            _add(tar, f"{i:09d}.json", b"{not json" if i == 2 else b'{"w": 40}')
    with caplog.at_level("WARNING"):
        keys = [s["key"] for s in WebImageTextDataset(str(path), resolution=16)]
    assert keys == ["000000000", "000000003", "000000004", "000000005"]
    assert f"{path}:000000001" in caplog.text and f"{path}:000000002" in caplog.text
    ds = WebImageTextDataset(str(path), resolution=16, require_caption=True)  # the CLIP stage
    assert [s["key"] for s in ds] == ["000000000", "000000003", "000000005"]
    assert ds.skipped.count == 3


def test_a_truncated_shard_is_counted_and_reading_goes_on(tmp_path):
    shards = export_shapes(tmp_path, 20, image_size=16, shard_size=10, progress=False)
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[: len(data) // 2])  # cut in the middle of a member
    ds = WebImageTextDataset(str(tmp_path / "{00000..00001}.tar"), resolution=16)
    keys = [s["key"] for s in ds]
    assert 10 < len(keys) < 20 and f"{19:09d}" in keys  # the second shard is read in full
    assert ds.skipped.shards_cut == 1
    from clipgen.data.skips import describe_skips, skip_summary

    assert describe_skips(skip_summary([ds])).startswith("0 unreadable sample(s) skipped, 1 shard")


def test_missing_shards_fail_fast(tmp_path):
    export_shapes(tmp_path, 20, image_size=16, shard_size=10, progress=False)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        WebImageTextDataset(str(tmp_path / "x{00000..00001}.tar"))
    with pytest.raises(FileNotFoundError, match="1 of 3 shards .* missing"):
        WebImageTextDataset(str(tmp_path / "{00000..00002}.tar"), resampled=True,
                            epoch_length=10)


def test_an_all_corrupt_batch_is_skipped_by_every_stage():
    from clipgen.lit.clip_module import CLIPModule
    from clipgen.lit.prior_module import PriorModule
    from clipgen.lit.vqgan_module import VQGANModule

    assert collate_samples([None, None]) == {}
    for module in (CLIPModule, PriorModule, VQGANModule):
        for step in (module.training_step, module.validation_step):
            assert step(object.__new__(module), {}, 0) is None


def test_exif_orientation_is_applied(tmp_path):
    from clipgen.data.image_folder import load_image

    pixels = np.zeros((10, 30, 3), np.uint8)
    pixels[:, :10] = 255  # white on the left of a landscape image
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display it turned 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    upright = np.asarray(load_image(tmp_path / "photo.jpg"))
    assert upright.shape == (30, 10, 3)
    assert upright[:10].mean() > 200 and upright[20:].mean() < 50  # white now at the top


def _fake_coco(root, n_images=6, per_image=3):
    (root / "val2014").mkdir(parents=True)
    images, anns = [], []
    for i in range(n_images):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.new("RGB", (50, 40), (i * 40, 0, 0)).save(root / "val2014" / name)
        images.append({"id": 100 + i, "file_name": name})
        anns += [{"id": 1000 + 10 * i + j, "image_id": 100 + i, "caption": f"image {i} c{j}"}
                 for j in range(per_image)]
    (root / "annotations").mkdir()
    ann_file = root / "annotations" / "captions_val2014.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns}))
    return ann_file


@pytest.mark.parametrize("mode", ["image", "caption"])
def test_coco_suite_protocols_pair_prompts_with_their_images(tmp_path, mode):
    from clipgen.evaluation.prompts import coco_prompts

    ann_file = _fake_coco(tmp_path)
    prompts = coco_prompts(str(ann_file), num_samples=5, seed=3, mode=mode)
    real = CocoCaptionsDataset(ann_file, tmp_path / "val2014", resolution=16, mode=mode,
                               num_samples=5, seed=3)
    assert [p.text for p in prompts] == [real[i]["caption"] for i in range(5)]
    image_ids = [real[i]["image_id"] for i in range(5)]
    if mode == "image":  # five distinct images, each with its first caption
        assert len(set(image_ids)) == 5 and all(p.text.endswith("c0") for p in prompts)
    else:  # 5 of 18 captions: with this seed some image comes up twice
        assert len(set(image_ids)) < 5


def test_imagenet_prompts_read_the_class_index_and_never_use_wnids(tmp_path):
    from clipgen.evaluation.prompts import imagenet_prompts

    for wnid in ("n01440764", "n01443537"):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / wnid / "a.png")
    with pytest.raises(ValueError, match="WordNet ids .*imagenet_class_index.json"):
        imagenet_prompts(str(tmp_path / "val"), per_class=1)
    index = tmp_path / "imagenet_class_index.json"
    index.write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"],
                                 "2": ["n01484850", "great_white_shark"]}))
    texts = [p.text for p in imagenet_prompts(str(tmp_path / "val"), str(index), per_class=2)]
    assert texts == ["a photo of a tench"] * 2 + ["a photo of a goldfish"] * 2
    # training without names: images kept, captions empty rather than "a photo of a n01440764."
    assert ImageFolderDataset(tmp_path / "val", resolution=8)[0]["caption"] == ""


def test_the_coco_recipe_of_data_readme_runs_on_a_fake_layout(tmp_path, monkeypatch):
    """The documented commands, as written, on a tiny COCO layout: local files, one sample per
    image, the printed shard pattern read by data=coco."""
    root = Path(__file__).resolve().parents[1]
    recipe = (root / "data" / "README.md").read_text().split("## MS-COCO 2014")[1]
    command = next(line.strip() for line in recipe.splitlines()
                   if line.strip().startswith("clipgen-coco-shards"))
    export = next(line.strip() for line in recipe.splitlines()
                  if line.strip().startswith("export COCO_SHARDS="))
    assert "{00000..00082}" in export and -(-82_783 // 1000) == 83  # the range the doc states
    coco = tmp_path / "coco"
    (coco / "train2014").mkdir(parents=True)
    _fake_coco(tmp_path / "val", n_images=2)  # val2014 layout for data=coco's validation set
    ann = json.loads((tmp_path / "val" / "annotations" / "captions_val2014.json").read_text())
    for im in ann["images"]:
        name = im["file_name"]
        (tmp_path / "val" / "val2014" / name).rename(coco / "train2014" / name)
    (coco / "annotations").mkdir()
    (coco / "annotations" / "captions_train2014.json").write_text(json.dumps(ann))
    script = Path(sys.executable).parent / "clipgen-coco-shards"
    run = subprocess.run(["bash", "-c", command.replace("clipgen-coco-shards", str(script), 1)],
                         env={"COCO_ROOT": str(coco), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    pattern = re.search(r"use them as (\S+)", run.stdout).group(1)
    assert pattern == f"{coco}/shards/{{00000..00000}}.tar"
    with initialize_config_dir(str(root / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["data=coco", "resolution=16", "data.val=null"])
    monkeypatch.setenv("COCO_SHARDS", pattern)
    cfg.data.train.resampled = False
    cfg.data.train.epoch_length = None
    samples = list(instantiate(cfg.data).train_set)
    assert sorted(s["caption"] for s in samples) == ["image 0 c0", "image 1 c0"]  # per image
    assert [len(s["meta"]["captions"]) for s in samples] == [3, 3]


def test_precompute_without_a_val_split_stops_before_writing_anything(tmp_path):
    from hydra import compose, initialize_config_dir

    from clipgen.jobs.build_cache import check_splits, run_precompute

    cache = tmp_path / "cache"
    configs = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(configs, version_base="1.3"):
        cfg = compose("precompute", overrides=[
            "experiment=shapes_prior", "data=webdataset", f"data.train.urls={tmp_path}/x.tar",
            f"cache_dir={cache}"], return_hydra_config=True)
    with pytest.raises(ValueError, match=r"no val dataset.*splits=\[train\]"):
        run_precompute(cfg)
    assert not cache.exists()
    cfg.splits = ["train"]
    check_splits(cfg)  # the training split alone is fine
