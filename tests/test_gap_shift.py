import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipgen.generation.gap_shift import (
    GAP_FILE,
    ModalityGap,
    load_modality_gap,
    measure_modality_gap,
    save_modality_gap,
    text_shift_for,
)
from clipgen.generation.text_to_image import TextToImage
from clipgen.models.clip import FrozenCLIP
from tests.helpers import CLIP_ARCH, write_tiny_bundle


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return FrozenCLIP(CLIP_ARCH, pretrained=None, random_weights=True).eval()


def _batches():
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(3, 3, 16, 16, generator=g) * 2 - 1,
             "caption": ["a red circle", "", "a blue star on a black background"]},
            {},  # a batch whose every sample was skipped
            {"image": torch.rand(2, 3, 16, 16, generator=g) * 2 - 1,
             "caption": ["a green square", "a small yellow triangle"]}]


def test_the_gap_is_mean_image_minus_mean_text_embedding(clip):
    batches = _batches()
    gap = measure_modality_gap(clip, batches, "random", scale=2.0, progress=False)
    images = torch.cat([batches[0]["image"], batches[2]["image"]])
    texts = ["a red circle", "a blue star on a black background", "a green square",
             "a small yellow triangle"]  # the empty caption counts for images only
    with torch.no_grad():
        expected = clip.encode_image(images).mean(0) - clip.encode_text(texts).mean(0)
    torch.testing.assert_close(gap.vector, expected, atol=1e-6, rtol=1e-5)
    assert (gap.images, gap.texts, gap.scale) == (5, 4, 2.0)


def test_a_source_without_captions_is_refused(clip):
    batch = {"image": torch.zeros(2, 3, 16, 16), "caption": ["", " "]}
    with pytest.raises(ValueError, match="no image of folder x has a caption"):
        measure_modality_gap(clip, [batch], "folder x", scale=2.0, progress=False)


def test_a_gap_file_round_trips_and_refuses_another_clip(clip, tmp_path):
    gap = measure_modality_gap(clip, _batches(), "random", scale=1.5, progress=False)
    path = save_modality_gap(gap, tmp_path / GAP_FILE)
    back = load_modality_gap(path, clip)
    assert torch.equal(back.vector, gap.vector)
    assert (back.clip, back.scale, back.images, back.texts, back.source) == (
        gap.clip, 1.5, 5, 4, "random")
    torch.manual_seed(1)
    other = FrozenCLIP(CLIP_ARCH, pretrained=None, random_weights=True)
    with pytest.raises(ValueError, match="measured with CLIP .* measure it again"):
        load_modality_gap(path, other)


def _bundle_with_gap(folder, scale):
    bundle = write_tiny_bundle(folder)
    clip = TextToImage.from_bundle(bundle, gap_shift=0).clip
    vector = F.normalize(torch.randn(clip.embed_dim, generator=torch.Generator().manual_seed(2)),
                         dim=0) * 0.3
    from clipgen.checkpoint import fingerprint

    save_modality_gap(ModalityGap(vector, fingerprint(clip.model), scale, 8, 8, "test"),
                      bundle / GAP_FILE)
    return bundle, vector


def test_the_prior_reads_text_moved_across_the_gap_and_reranking_does_not(tmp_path):
    bundle, vector = _bundle_with_gap(tmp_path, scale=2.0)
    plain = TextToImage.from_bundle(bundle, gap_shift=0)
    prompts = ["a red circle", "a blue star"]
    t = plain.clip.encode_text(prompts)
    cases = {"auto": 2.0, 1.0: 1.0, 0: None}
    for setting, scale in cases.items():
        pipe = TextToImage.from_bundle(bundle, gap_shift=setting)
        cond = pipe.text_conditions(prompts)
        expected = t if scale is None else F.normalize(t + scale * vector, dim=-1)
        torch.testing.assert_close(cond.prior, expected)
        torch.testing.assert_close(cond.clip, t)
        assert ("text_shift" in pipe.fingerprints()) == (scale is not None)
    # composable prompts: each part moved on its own
    pipe = TextToImage.from_bundle(bundle)
    parts = pipe.text_conditions(["a blue shape AND a star"])
    t_parts = plain.clip.encode_text(["a blue shape", "a star"])
    torch.testing.assert_close(parts.prior[0], F.normalize(t_parts + 2.0 * vector, dim=-1))
    # image conditions are image embeddings already: never moved
    images = torch.zeros(1, 3, 16, 16)
    torch.testing.assert_close(pipe.image_conditions(images).prior,
                               plain.image_conditions(images).prior)


def test_gap_shift_settings_are_checked(tmp_path, clip):
    bundle = write_tiny_bundle(tmp_path)
    assert TextToImage.from_bundle(bundle).text_shift is None  # auto, no file: no shift
    with pytest.raises(FileNotFoundError, match="eval/modality_gap.py"):
        TextToImage.from_bundle(bundle, gap_shift=2)
    with pytest.raises(ValueError, match="number >= 0"):
        text_shift_for(-1, None, clip, "clip_image")
    with pytest.raises(ValueError, match="auto or a number"):
        text_shift_for("large", None, clip, "clip_image")
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from clipgen.generation.settings import check_generation_settings

    configs = Path(__file__).resolve().parent.parent / "configs"
    with initialize_config_dir(str(configs), version_base="1.3"):
        cfg = compose("sample", overrides=["gap_shift=large"])
    with pytest.raises(ValueError, match="gap_shift must be auto or a number"):
        check_generation_settings(cfg)  # refused before any model loads
    with pytest.raises(ValueError, match="this prior reads clip_text: set gap_shift=0"):
        text_shift_for(2, tmp_path / GAP_FILE, clip, "clip_text")
    assert text_shift_for("auto", tmp_path / GAP_FILE, clip, "clip_text") is None


def test_the_script_measures_a_captioned_folder_into_the_bundle(tmp_path):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from eval.modality_gap import measure

    bundle = write_tiny_bundle(tmp_path / "bundle")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (colour, caption) in enumerate([((255, 0, 0), "a red image"),
                                           ((0, 0, 255), "a blue image"),
                                           ((0, 255, 0), "")]):
        Image.new("RGB", (24, 24), colour).save(folder / f"{i}.png")
        if caption:
            (folder / f"{i}.txt").write_text(caption)
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "broken.txt").write_text("a broken image")
    configs = Path(__file__).resolve().parent.parent / "configs"
    with initialize_config_dir(str(configs), version_base="1.3"):
        cfg = compose("modality_gap", overrides=[f"bundle={bundle}", f"images={folder}",
                                                 "resolution=16", "batch_size=2",
                                                 "val_fraction=0"])
    row = measure(cfg)[0]
    # every readable image counts for the image mean, captioned ones for the text mean; the
    # corrupt file is skipped
    assert (row["images"], row["texts"]) == (3, 2)
    assert row["skipped_samples"] == 1
    pipe = TextToImage.from_bundle(bundle)
    gap = load_modality_gap(bundle / GAP_FILE, pipe.clip)
    assert gap.scale == 2.0 and pipe.text_shift is not None
    torch.testing.assert_close(pipe.text_shift, 2.0 * gap.vector)
