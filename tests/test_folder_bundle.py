"""Your own folder of images: the `data=folder` reader, and `make_bundle.py` taking a tiny
folder to a bundle that samples images."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from clipgen.data.image_files import ImageFilesDataset
from clipgen.data.shapes import ShapesWorld
from clipgen.generation.gap_shift import GAP_FILE, load_modality_gap
from clipgen.generation.text_to_image import TextToImage
from clipgen.jobs.folder_bundle import run_folder_bundle
from clipgen.jobs.sample_run import run_sampling
from clipgen.models.bundle import BUNDLE_FILES

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["trainer.max_steps=2", "trainer.val_check_interval=2", "checkpoint_every_n_steps=2",
         "plot_curves=false", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1",
         "trainer.log_every_n_steps=1", "logger=csv", "trainer=cpu"]
TINY_STAGES = {
    "vqgan": ["experiment=shapes_vqgan", "data.batch_size=4", "data.val_batch_size=4",
              "model.image_log_every=0", "model.loss.disc_start=1000", *STEPS],
    "clip": ["experiment=shapes_clip", "data.batch_size=4", *STEPS],
    "precompute": ["experiment=shapes_prior", "batch_size=8"],
    "prior": ["experiment=shapes_prior", "data.batch_size=4", "model.prior.n_layer=1",
              "model.prior.n_embd=32", "model.prior.n_head=2", "model.train.sample_prompts=[]",
              *STEPS],
}


def write_image_folder(folder: Path, count: int = 20, captions: bool = True) -> Path:
    """`count` Shapes renders as PNG files two folders deep, each with its caption beside it."""
    world = ShapesWorld(image_size=32, seed=3)
    for i in range(count):
        path = folder / f"group{i % 2}" / "deeper" / f"img{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        world[i].image.save(path)
        if captions:
            path.with_suffix(".txt").write_text(world[i].caption + "\n")
    return folder


def test_the_folder_splits_into_disjoint_seeded_train_and_val_images(tmp_path):
    folder = write_image_folder(tmp_path / "images")
    (tmp_path / "images" / ".hidden").mkdir()
    ShapesWorld(image_size=32).__getitem__(0).image.save(tmp_path / "images/.hidden/x.png")
    train = ImageFilesDataset(folder, "train", val_fraction=0.25, resolution=16)
    val = ImageFilesDataset(folder, "val", val_fraction=0.25, resolution=16)
    assert (len(train), len(val)) == (15, 5)
    assert not set(train.files) & set(val.files)
    assert set(ImageFilesDataset(folder, "val", val_fraction=0.25).files) == set(val.files)
    assert set(ImageFilesDataset(folder, "val", 0.25, split_seed=1).files) != set(val.files)
    item = val[0]
    assert item["image"].shape == (3, 16, 16) and item["caption"]
    assert item["caption"] == val.files[0].with_suffix(".txt").read_text().strip()


def test_the_folder_reader_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.train.root"):
        ImageFilesDataset(tmp_path / "absent")
    folder = write_image_folder(tmp_path / "plain", count=4, captions=False)
    with pytest.raises(ValueError, match="needs them"):
        ImageFilesDataset(folder, "train", val_fraction=0.25, require_caption=True)
    with pytest.raises(ValueError, match="val_fraction=0"):
        ImageFilesDataset(folder, "val", val_fraction=0)
    (folder / "group0" / "broken.png").write_bytes(b"not a png")
    everything = ImageFilesDataset(folder, "all", resolution=16)
    broken = [i for i, f in enumerate(everything.files) if f.name == "broken.png"]
    assert everything[broken[0]] is None and everything.skipped.count == 1


def _recipe(tmp_path: Path, folder: Path, *overrides: str):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("make_bundle", overrides=[
            f"folder={folder}", f"out={tmp_path / 'bundle'}", "resolution=16",
            "val_fraction=0.25", *overrides])
    with open_dict(cfg):
        cfg.stages = OmegaConf.create(TINY_STAGES)
    return cfg


def _logged(run_dir: Path) -> set[str]:
    names: set[str] = set()
    for path in run_dir.glob("logs/version_*/metrics.csv"):
        with open(path) as f:
            for row in csv.DictReader(f):
                names |= {k for k, v in row.items() if v}
    return names


def test_make_bundle_takes_a_folder_to_a_bundle_that_samples(tmp_path):
    folder = write_image_folder(tmp_path / "images")
    cfg = _recipe(tmp_path, folder, "clip.source=train", "gap.scale=2", "gap.batch_size=8")
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        bundle = run_folder_bundle(cfg)
        sample = compose("sample", overrides=[f"bundle={bundle}", f"out_dir={tmp_path}/s",
                                              "n_candidates=2", "samples_per_prompt=1",
                                              "prompts=[a red circle]"])
    assert all((bundle / name).is_file() for name in BUNDLE_FILES)
    work = Path(cfg.work_dir)
    # every stage validated on the held-out images
    assert "val/psnr" in _logged(work / "vqgan")
    assert "val/i2t_r1" in _logged(work / "clip")
    assert "val/token_loss" in _logged(work / "prior")
    assert (work / "cache" / "val").is_dir()
    # the modality gap, over the 15 captioned training images only, read by sampling
    pipe = TextToImage.from_bundle(bundle)
    gap = load_modality_gap(bundle / GAP_FILE, pipe.clip)
    assert (gap.images, gap.texts, gap.scale) == (15, 15, 2.0)
    torch.testing.assert_close(pipe.text_shift, 2.0 * gap.vector)
    out = run_sampling(sample)
    assert (out / "000_a_red_circle" / "00.png").is_file()
    # run again: every stage is exported already, nothing trains
    before = {p: p.stat().st_mtime_ns for p in bundle.iterdir()}
    run_folder_bundle(cfg)
    assert {p: p.stat().st_mtime_ns for p in bundle.iterdir()} == before


def test_make_bundle_refuses_a_clip_it_cannot_have_before_training(tmp_path):
    folder = write_image_folder(tmp_path / "images", count=4, captions=False)
    with pytest.raises(ValueError, match="has none"):
        run_folder_bundle(_recipe(tmp_path, folder, "clip.source=train"))
    with pytest.raises(FileNotFoundError, match="clip.file"):
        run_folder_bundle(_recipe(tmp_path, folder, "clip.source=file", "clip.file=null"))
    with pytest.raises(ValueError, match="no caption .* set gap.scale=null"):
        run_folder_bundle(_recipe(tmp_path, folder, "clip.source=bundle", "gap.scale=2"))
    captioned = write_image_folder(tmp_path / "captioned", count=4)
    with pytest.raises(ValueError, match="gap.scale must be a number"):
        run_folder_bundle(_recipe(tmp_path, captioned, "clip.source=bundle", "gap.scale=auto"))
    assert not (tmp_path / "bundle").exists()


def test_an_unset_required_setting_is_named_before_anything_loads(tmp_path, capsys):
    from clipgen.jobs.entry import run_job

    def job(cfg):  # never reached
        raise AssertionError("the job ran with a required setting unset")

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=shapes_vqgan", "data=folder",
                                          f"run_dir={tmp_path}"])
    with pytest.raises(SystemExit) as stop:
        run_job(job, cfg)
    assert stop.value.code == 2
    assert "data.train.root is not set" in capsys.readouterr().err


def test_an_open_clip_weights_file_becomes_the_bundles_clip(tmp_path):
    from clipgen.jobs.folder_bundle import clip_from_file
    from clipgen.models.bundle import bundle_clip
    from clipgen.models.clip import FrozenCLIP
    from tests.helpers import CLIP_ARCH, write_tiny_encoders

    _, weights = write_tiny_encoders(tmp_path / "enc")
    (tmp_path / "bundle").mkdir()
    clip_from_file(CLIP_ARCH, weights, tmp_path / "bundle")
    arch, converted = bundle_clip(tmp_path / "bundle")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert arch == CLIP_ARCH
    assert torch.equal(FrozenCLIP(arch, str(converted)).encode_image(images),
                       FrozenCLIP(arch, str(weights)).encode_image(images))
