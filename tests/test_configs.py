from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONFIGS / "data").glob("*.yaml"))


def _compose(overrides):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    cfg = _compose([f"experiment={name}"])
    assert cfg.stage, f"experiment {name} must name its stage"
    module = OmegaConf.to_container(cfg.stage.module, resolve=True)  # every interpolation
    assert get_class(module["_target_"]).stage == cfg.stage.name
    assert cfg.data._target_ and cfg.trainer._target_


def test_training_without_a_stage_names_the_setting():
    from clipgen.jobs.training import build_stage

    with pytest.raises(ValueError, match="stage=<vqgan|clip|prior>"):
        build_stage(_compose([]))


TOOLS = ["bench_sampling", "kill_trials", "demo", "clip_zero_shot", "compare_methods",
         "compare_conditionings", "compare_emb_loss", "compare_shapes_quality",
         "condition_gap", "prior_token_loss", "vqgan_recon", "bench_train", "precompute",
         "sample", "bench_suite", "modality_gap"]


@pytest.mark.parametrize("name", TOOLS)
def test_every_entry_point_config_composes(name):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(name, return_hydra_config=True)
    assert cfg


@pytest.mark.parametrize("name", DATA)
def test_every_data_config_composes(name):
    overrides = [f"data={name}"]
    if name == "webdataset":
        overrides.append("data.train.urls='/tmp/x/{00000..00001}.tar'")
    cfg = _compose(overrides)
    assert cfg.data.train._target_.startswith("clipgen.data.")


def test_shapes_datamodule_instantiates_from_config():
    cfg = _compose(["resolution=32", "data.train.length=8", "data.batch_size=4"])
    dm = instantiate(cfg.data)
    assert next(iter(dm.train_dataloader()))["image"].shape[1:] == (3, 32, 32)


SUITES = sorted(p.stem for p in (CONFIGS / "suite").glob("*.yaml"))


@pytest.mark.parametrize("name", SUITES)
def test_every_eval_suite_composes(name):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("eval", overrides=[f"suite={name}", "out_dir=x"])
    assert cfg.suite.name == name
    assert cfg.suite.prompts._target_.startswith("clipgen.evaluation.prompts.")
    assert cfg.suite.real.dataset._target_.startswith("clipgen.data.")
    assert set(cfg.metrics.fid_features) <= {"inception", "clip"}


def test_training_without_a_logger_as_the_readme_says():
    from clipgen.jobs.training import build_logger

    cfg = _compose(["experiment=shapes_vqgan", "~logger"])
    assert cfg.get("logger") is None and build_logger(cfg) is False


def test_every_experiment_runs_on_shards(tmp_path):
    """data=webdataset composes with each experiment (none sets a key only Shapes has) and
    the CLIP stage's reader drops uncaptioned samples."""
    from clipgen.data.export_shapes import export_shapes

    export_shapes(tmp_path, 8, image_size=16, shard_size=4, progress=False)
    for name in EXPERIMENTS:
        if _compose([f"experiment={name}"]).stage.name == "prior":
            continue  # stage 2 trains from the precomputed cache, not from shards
        cfg = _compose([f"experiment={name}", "data=webdataset",
                        f"data.train.urls='{tmp_path}/{{00000..00001}}.tar'", "resolution=16"])
        dm = instantiate(cfg.data)
        assert dm.train_set.__class__.__name__ == "WebImageTextDataset", name
        assert cfg.data.train.require_caption == (cfg.stage.name == "clip"), name


def test_precompute_from_shards_encodes_each_image_once(tmp_path):
    from clipgen.data.export_shapes import export_shapes
    from clipgen.data.precomputed import PrecomputedDataset
    from clipgen.jobs.build_cache import run_precompute
    from tests.helpers import write_tiny_bundle

    bundle = write_tiny_bundle(tmp_path / "bundle")
    export_shapes(tmp_path / "shards", 14, image_size=16, shard_size=5, progress=False)
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("precompute", overrides=[
            "experiment=shapes_prior", "data=webdataset", "resolution=16",
            f"data.train.urls='{tmp_path}/shards/{{00000..00001}}.tar'", "data.num_workers=0",
            f"data.val.urls={tmp_path}/shards/00002.tar",  # one setting adds a validation set
            f"bundle_dir={bundle}", f"cache_dir={tmp_path}/cache", "batch_size=4"])
    assert cfg.data.train.resampled  # as configured for training; precompute reads once
    run_precompute(cfg)
    assert len(PrecomputedDataset(tmp_path / "cache" / "train")) == 2 * 10  # with flips
    assert len(PrecomputedDataset(tmp_path / "cache" / "val")) == 2 * 4


@pytest.mark.parametrize("name", ["coco_gpt2_medium_text", "coco_gpt2_medium_clip_text"])
def test_coco_caption_priors_precompute_and_train_on_tiny_data(name, tmp_path, monkeypatch):
    """The real-data supervised experiments, shrunk: COCO-layout shards (every caption in the
    JSON) and a val2014 folder, the caption cache, then a few training steps."""
    from clipgen.data.coco_shards import shard_pattern, write_coco_shards
    from clipgen.data.precomputed import PrecomputedDataset
    from clipgen.jobs.build_cache import run_precompute
    from clipgen.jobs.training import run_training
    from clipgen.models.caption_tokens import CaptionTokenizer
    from tests.helpers import CLIP_ARCH, write_tiny_bundle
    from tests.test_readers import _fake_coco

    bundle = write_tiny_bundle(tmp_path / "bundle")
    ann = _fake_coco(tmp_path / "coco", n_images=6, per_image=3)
    write_coco_shards(ann, tmp_path / "coco" / "val2014", tmp_path / "shards", shard_size=3,
                      progress=False)
    monkeypatch.setenv("COCO_ROOT", str(tmp_path / "coco"))
    monkeypatch.setenv("COCO_SHARDS", shard_pattern(tmp_path / "shards", 2))
    common = [f"experiment={name}", "data=coco", "resolution=16", "trainer=cpu", "~logger",
              "data.num_workers=0", "data.pin_memory=false", "data.batch_size=4",
              "data.val.num_samples=4", "data.train.shuffle_buffer=0",
              f"model.tokenizer.path={bundle / 'vqgan.safetensors'}", "model.tokenizer.arch=null",
              f"model.clip.arch={CLIP_ARCH}",
              f"model.clip.pretrained={bundle / 'clip.safetensors'}",
              "model.prior.n_layer=1", "model.prior.n_embd=32", "model.prior.n_head=2",
              "model.prior.text_layers=1", "model.train.emb_loss_weight=0.0",
              f"cache_dir={tmp_path / 'cache'}"]
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        pre = compose("precompute", overrides=[*common, "captions_per_image=5", "flip=false",
                                               "batch_size=4"])
        train = compose("train", overrides=[*common, "trainer.max_steps=3",
                                            "trainer.val_check_interval=3",
                                            "trainer.limit_val_batches=1",
                                            f"run_dir={tmp_path / 'run'}"])
    run_precompute(pre)
    rows = PrecomputedDataset(tmp_path / "cache" / "train")
    assert len(rows) == 6 and rows.meta["captions"]["length"] == 128
    texts = CaptionTokenizer(128).decode(rows[0]["captions"])
    assert texts[3:] == ["", ""] and texts[:3] == [t for t in texts[:3] if t.startswith("image")]
    trainer = run_training(train)
    assert trainer.global_step == 3
    # the last step is also a validation step: one last.ckpt, not a last-v1.ckpt beside it
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("last*")] == ["last.ckpt"]


def _comparison_runs(config_name: str, overrides: list[str]) -> dict:
    """The eval config of each run of eval/compare_methods.py under `config_name`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "compare_methods", CONFIGS.parent / "eval" / "compare_methods.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return script.method_configs(compose(config_name, overrides=overrides), overrides)


def _assert_prompt_counts(kind: str, run) -> None:
    """Held-out runs sample 64 prompts for each held-out combination and no seen ones; the
    others keep the suite's counts."""
    held_only = kind == "heldout"
    assert run.suite.prompts.samples_per_combination == (0 if held_only else 8)
    assert run.suite.prompts.heldout_samples_per_combination == (64 if held_only else None)


def test_compare_conditionings_composes_one_eval_config_per_run():
    runs = _comparison_runs("compare_conditionings",
                            ["compare.bundles=/b", "compare.rerank_candidates=4", "batch_size=4"])
    assert set(runs) == {f"{kind}_{c}" for kind in ("suite", "heldout", "rerank")
                         for c in ("clip_image", "clip_text", "text")}
    for name, run in runs.items():
        kind, condition = name.split("_", 1)
        assert run.bundle == f"/b/bundle_{condition}" and run.out_dir == f"/b/{name}"
        assert run.n_candidates == (4 if kind == "rerank" else 1) and run.batch_size == 4
        _assert_prompt_counts(kind, run)


def test_compare_emb_loss_runs_each_lambda_on_the_suite_and_the_heldout_combinations():
    runs = _comparison_runs("compare_emb_loss", ["compare.bundles=/b"])
    assert set(runs) == {f"{kind}_lambda{w}" for kind in ("suite", "heldout") for w in ("0", "0_2")}
    for name, run in runs.items():
        kind, weight = name.split("_", 1)
        assert run.bundle == f"/b/bundle_{weight}" and run.out_dir == f"/b/{name}"
        assert run.n_candidates == 1
        _assert_prompt_counts(kind, run)


def test_compare_shapes_quality_reads_the_bundle_in_every_caption_template():
    runs = _comparison_runs("compare_shapes_quality",
                            ["bundle=/b", "compare.out_root=/o", "compare.rerank_candidates=4"])
    assert set(runs) == {"one_sample", "best_of_8", "heldout_one_sample"}
    for name, run in runs.items():
        assert run.bundle == "/b" and run.out_dir == f"/o/{name}"
        assert run.suite.prompts.style == "templates"
        assert run.suite.prompts.seed == 1 and run.seed == 1
        assert run.n_candidates == (4 if name == "best_of_8" else 1)
        _assert_prompt_counts("heldout" if name.startswith("heldout") else "suite", run)
