"""Scale-out: DDP on CPU, resume after SIGKILL, data position, atomic checkpoints, SLURM."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from PIL import Image

from clipgen.checkpoint import load_torch_file
from clipgen.data.resumable import ResumableSampler
from clipgen.jobs.training import resolve_ckpt_path
from clipgen.lit.checkpoint_io import AtomicCheckpointIO
from tests.helpers import TINY_STAGE, TINY_TRAINER, tiny_prior_overrides

ROOT = Path(__file__).resolve().parent.parent


def _train(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


@pytest.mark.parametrize("stage", ["vqgan", "clip", "prior"])
def test_two_process_ddp_on_cpu(stage, tmp_path):
    args = tiny_prior_overrides(tmp_path) if stage == "prior" else TINY_STAGE[stage]
    common = [c for c in TINY_TRAINER
              if not (stage == "prior" and c.startswith("data.val.length"))]
    run_dir = tmp_path / "run"
    proc = _train([*args, *common, "trainer.max_steps=5", "trainer.val_check_interval=2",
                   "checkpoint_every_n_steps=2", "trainer.devices=2", "trainer.strategy=ddp",
                   "check_rank_sync=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    assert "effective batch size" in out and "x 2 devices" in out
    assert "weights identical on 2 rank(s)" in out
    ckpt = load_torch_file(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 5  # the steps after the last periodic save are kept
    assert ckpt["clipgen"]["stage"] == stage


def _logged_losses(run_dir: Path) -> dict[int, float]:
    losses = {}
    for path in sorted(run_dir.glob("logs/version_*/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                value = row.get("train/loss") or row.get("train/rec_loss")
                if value:
                    losses[int(row["step"])] = float(value)
    return losses


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_torch_file(path)["state_dict"]


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    """Bit-identical weights at the end and the same loss at every logged step."""
    ours, theirs = _weights(run_dir / "checkpoints" / "last.ckpt"), _weights(
        reference / "checkpoints" / "last.ckpt")
    assert ours.keys() == theirs.keys()
    different = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    assert _logged_losses(run_dir) == _logged_losses(reference)
    names = [sorted(p.name for p in (d / "checkpoints").iterdir()) for d in (run_dir, reference)]
    assert names[0] == names[1]  # nothing left over from the interruption


def test_killed_and_extended_runs_equal_an_uninterrupted_one(tmp_path):
    args = [*TINY_STAGE["vqgan"], *TINY_TRAINER, "trainer.val_check_interval=100",
            "checkpoint_every_n_steps=5", "ckpt_path=last"]
    whole = tmp_path / "whole"
    proc = _train([*args, "trainer.max_steps=24", f"hydra.run.dir={whole}"], cwd=tmp_path)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    with Image.open(whole / "curves.png") as curves:  # drawn from the CSV logs at the end
        assert curves.format == "PNG"

    # killed at a random moment after the second periodic checkpoint, then resumed
    killed = tmp_path / "killed"
    proc = _train([*args, "trainer.max_steps=24", f"hydra.run.dir={killed}"], cwd=tmp_path)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.is_file() and load_torch_file(last)["global_step"] >= 10:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    step = load_torch_file(last)["global_step"]
    assert 10 <= step < 24
    # what a kill can leave besides: a partial checkpoint write, and a periodic checkpoint
    # written after the last.ckpt the run resumes from
    (killed / "checkpoints" / ".last.ckpt.4242.tmp").write_bytes(b"partial")
    (killed / "checkpoints" / f"epoch=0-step={step + 1}.ckpt").write_bytes(b"newer")
    resumed = _train([*args, "trainer.max_steps=24", f"hydra.run.dir={killed}"], cwd=tmp_path)
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out[-3000:]
    _assert_same_run(killed, whole)

    # finished at 12 steps, then extended to 24 from its end-of-run checkpoint
    extended = tmp_path / "extended"
    for max_steps in (12, 24):
        proc = _train([*args, f"trainer.max_steps={max_steps}", f"hydra.run.dir={extended}"],
                      cwd=tmp_path)
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, out[-3000:]
    _assert_same_run(extended, whole)


def test_a_run_ending_before_its_first_periodic_save_keeps_its_mid_epoch_end(tmp_path):
    # 16 batches an epoch, 3 steps, periodic saves every 500: the end-of-run last.ckpt must be
    # the one written mid-epoch, or a longer run resumed from it skips to the next epoch's data
    from hydra import compose, initialize_config_dir

    from clipgen.jobs.training import run_training

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY_STAGE["vqgan"], *TINY_TRAINER, "~logger",
                                          "trainer.max_steps=3", "trainer.val_check_interval=3",
                                          f"run_dir={tmp_path / 'run'}"])
    assert cfg.checkpoint_every_n_steps > 3
    run_training(cfg)
    ckpt = load_torch_file(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3 and ckpt["epoch"] == 0
    assert ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 0
    assert ckpt["ImageTextDataModule"] == {"epoch": 0, "batches": 3}


def test_resumable_sampler_skips_what_was_done_and_splits_ranks():
    full = list(ResumableSampler(50, batch_size=4, seed=3))
    assert sorted(full) == list(range(50))
    resumed = ResumableSampler(50, batch_size=4, seed=3)
    resumed.resume(epoch=0, batches=5)
    assert list(resumed) == full[20:]
    assert list(resumed) == full  # the skip applies once
    resumed.set_epoch(1)
    assert list(resumed) != full
    shards = [list(ResumableSampler(50, 4, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 16 for s in shards)
    assert not set(shards[0]) & set(shards[1]) and not set(shards[1]) & set(shards[2])


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 5, "w": torch.ones(3)}, path)

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    with mock.patch("torch.save", dying_save), pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"global_step": 6, "w": torch.zeros(3)}, path)
    assert load_torch_file(path)["global_step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_resume_picks_the_newest_checkpoint(tmp_path):
    assert resolve_ckpt_path("last", tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    assert resolve_ckpt_path("last", tmp_path) == str(last)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # written by Lightning on SLURM's signal
    hpc.write_bytes(b"x")
    os.utime(last, (time.time() - 60, time.time() - 60))
    assert resolve_ckpt_path("last", tmp_path) == str(hpc)
    with pytest.raises(FileNotFoundError):
        resolve_ckpt_path(str(tmp_path / "nothing.ckpt"), tmp_path)


SBATCH = sorted((ROOT / "slurm").glob("*.sbatch"))


@pytest.mark.parametrize("script", SBATCH, ids=[p.name for p in SBATCH])
def test_slurm_scripts_parse(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_slurm_dry_run_prints_the_srun_command():
    env = {**os.environ, "DRY_RUN": "1", "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4",
           "SLURM_JOB_NAME": "g", "SLURM_JOB_ID": "77"}
    env.pop("SLURM_SUBMIT_DIR", None)
    out = subprocess.run(["bash", str(ROOT / "slurm" / "prior.sbatch"),
                          "experiment=coco_gpt2_medium", "model.train.lr=1e-4"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == (
        "srun --nodes=2 --ntasks-per-node=4 --kill-on-bad-exit=1 python train.py stage=prior "
        "experiment=coco_gpt2_medium model.train.lr=1e-4 trainer=ddp trainer.devices=4 "
        "trainer.num_nodes=2 ckpt_path=last hydra.run.dir=outputs/slurm/g-77")


@pytest.mark.parametrize("script", ["prior.sbatch", "eval.sbatch", "precompute.sbatch"])
def test_slurm_scripts_refuse_an_sbatch_option_given_after_the_script(script):
    env = {**os.environ, "DRY_RUN": "1"}
    proc = subprocess.run(["bash", str(ROOT / "slurm" / script), "experiment=coco_gpt2_medium",
                           "--nodes=4"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "srun" not in proc.stdout
    assert "--nodes=4 is not a Hydra override; sbatch options go before the script" in proc.stderr


def test_slurm_submit_creates_the_log_folder_then_calls_sbatch(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text('#!/bin/bash\necho "sbatch $*"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(ROOT / "slurm" / "submit.sh"), "--nodes=4",
                           "slurm/prior.sbatch", "experiment=x"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    assert (tmp_path / "outputs" / "slurm").is_dir()
    assert proc.stdout.strip() == "sbatch --nodes=4 slurm/prior.sbatch experiment=x"


@pytest.mark.parametrize("trainer,strategy", [(None, "ddp"), ("fsdp", "fsdp_strategy")])
def test_slurm_command_composes_the_users_trainer(trainer, strategy):
    from hydra import compose, initialize_config_dir

    env = {**os.environ, "DRY_RUN": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_GPUS_ON_NODE": "2"}
    env.pop("SLURM_SUBMIT_DIR", None)
    args = ["experiment=coco_gpt2_medium", "model/prior=gpt2_xl"]
    args += [f"trainer={trainer}"] if trainer else []
    out = subprocess.run(["bash", str(ROOT / "slurm" / "prior.sbatch"), *args], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    overrides = out[out.index("train.py") + 1:]
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    found = cfg.trainer.strategy
    assert (found if isinstance(found, str) else found._target_).endswith(strategy)
    assert cfg.trainer.devices == 2 and cfg.model.prior.n_layer == 48


def test_wandb_logs_offline_and_falls_back_to_csv(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from pytorch_lightning.loggers import CSVLogger

    from clipgen.jobs.training import build_logger

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=coco_gpt2_medium",
                                          f"run_dir={tmp_path}"])
    assert cfg.logger._target_.endswith("WandbLogger") and cfg.logger.offline
    import pytorch_lightning.loggers.wandb as wandb_module

    monkeypatch.setattr(wandb_module, "_WANDB_AVAILABLE", False)
    logger = build_logger(cfg)
    assert isinstance(logger, CSVLogger) and logger.save_dir == str(tmp_path)
    monkeypatch.undo()
    import wandb

    def service_fails(*args, **kwargs):
        raise wandb.errors.CommError("wandb service process did not start")

    monkeypatch.setattr(wandb, "init", service_fails)  # installed, but fails at run start
    logger = build_logger(cfg)
    assert isinstance(logger, CSVLogger) and logger.save_dir == str(tmp_path)


def test_run_curves_go_to_wandb_when_it_logs(tmp_path):
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    from clipgen.jobs.training import write_run_curves

    folder = tmp_path / "logs" / "version_0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("epoch,step,train/loss\n0,0,1.0\n0,1,0.5\n")
    wandb_logger = mock.create_autospec(WandbLogger, instance=True)
    path = write_run_curves(tmp_path, [wandb_logger, CSVLogger(str(tmp_path), name="logs")])
    assert path == tmp_path / "curves.png" and path.is_file()
    wandb_logger.log_image.assert_called_once_with(key="run/curves", images=[str(path)])


def _run_ok(args: list[str], cwd: Path) -> str:
    proc = _train(args, cwd=cwd)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_two_process_fsdp_on_cpu_shards_resumes_exports_and_matches_ddp(tmp_path):
    from clipgen.jobs.export import export_checkpoint

    args = [*tiny_prior_overrides(tmp_path),
            *[c for c in TINY_TRAINER if not c.startswith("data.val.length")],
            "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
            "trainer.val_check_interval=2", "checkpoint_every_n_steps=2", "plot_curves=false"]
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    out = _run_ok([*args, "trainer=fsdp", "trainer.max_steps=4", f"hydra.run.dir={fsdp}"],
                  tmp_path)
    _run_ok([*args, "trainer.strategy=ddp", "trainer.max_steps=4", f"hydra.run.dir={ddp}"],
            tmp_path)
    sharded = _weights(fsdp / "checkpoints" / "last.ckpt")
    replicated = _weights(ddp / "checkpoints" / "last.ckpt")
    # the strategy is FSDP, and rank 0 holds about half of the parameter values
    assert "strategy: ShardedStrategy, 2 process(es)" in out
    held = int(out.split("parameter values held by rank 0: ")[1].split()[0])
    total = sum(t.numel() for t in sharded.values() if t.is_floating_point())
    assert held < 0.6 * total
    # the same seed and data as DDP: the same weights up to the order of float reductions
    assert sharded.keys() == replicated.keys()
    for key in sharded:
        assert torch.allclose(sharded[key], replicated[key], atol=1e-5, rtol=1e-4), key
    # resumed for two more steps, then exported to one file that sample.py reads
    out = _run_ok([*args, "trainer=fsdp", "trainer.max_steps=6", "ckpt_path=last",
                   f"hydra.run.dir={fsdp}"], tmp_path)
    assert "resuming from" in out or "Restoring states" in out
    ckpt = load_torch_file(fsdp / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6
    bundle = tmp_path / "bundle"
    export_checkpoint(fsdp / "checkpoints" / "last.ckpt", bundle)
    sample = subprocess.run([sys.executable, str(ROOT / "sample.py"), f"bundle={bundle}",
                             "prompts=[a red circle]", "n_candidates=2", "samples_per_prompt=1",
                             f"hydra.run.dir={tmp_path / 'samples'}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert list((tmp_path / "samples").glob("*/00.png"))
