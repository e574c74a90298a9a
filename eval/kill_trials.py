"""Kill trials: python eval/kill_trials.py [trials.kills=N] [trials.max_steps=S].

Trains a tiny Shapes VQGAN uninterrupted, then the same run SIGKILLed at random moments and
resumed each time, and a run extended from its end-of-run checkpoint; prints JSON and a table
saying whether the weights match bit for bit."""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from clipgen.jobs.benchmark import print_report
from clipgen.jobs.entry import run_job
from clipgen.jobs.interruption import kill_trials

ROOT = Path(__file__).resolve().parents[1]


def trials(cfg: DictConfig) -> dict:
    return kill_trials(ROOT / "train.py", list(cfg.trials.overrides), Path(cfg.out_dir),
                       cfg.trials.kills, cfg.trials.max_steps, cfg.trials.seed)


@hydra.main(version_base="1.3", config_path="../configs", config_name="kill_trials")
def main(cfg: DictConfig) -> None:
    print_report([run_job(trials, cfg)], "kill trials: SIGKILL and resume")


if __name__ == "__main__":
    main()
