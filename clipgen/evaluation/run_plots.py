"""Curves of a training run from its CSV logs (`<run>/logs/version_*/metrics.csv`): every
logged metric against the training step, resumed runs' versions joined."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from matplotlib.figure import Figure

from clipgen.evaluation.plots import save_figure


def read_run_metrics(run_dir: str | Path) -> dict[str, dict[int, float]]:
    """{metric: {step: value}} over every CSV log version of a run (a later version wins at
    a step it repeats, as a resumed run does)."""
    files = sorted(Path(run_dir).glob("logs/version_*/metrics.csv"),
                   key=lambda p: int(p.parent.name.split("_")[-1]))
    if not files:
        raise FileNotFoundError(f"no CSV logs under {run_dir}/logs/version_*/metrics.csv: give "
                                "a run folder of train.py with logger=csv (the default)")
    curves: dict[str, dict[int, float]] = {}
    for path in files:
        with open(path) as f:
            for row in csv.DictReader(f):
                step = int(row["step"])
                for key, value in row.items():
                    if key not in ("step", "epoch") and value not in ("", None):
                        curves.setdefault(key, {})[step] = float(value)
    return {k: dict(sorted(v.items())) for k, v in sorted(curves.items())}


def run_figure(curves: dict[str, dict[int, float]], title: str) -> Figure:
    """One panel per metric, value against training step."""
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows + 0.6))
    for i, (name, curve) in enumerate(curves.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(list(curve), list(curve.values()), marker="." if len(curve) < 40 else None)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.set_ylabel(name.split("/")[-1], fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    return fig


def plot_run(run_dir: str | Path, footer: str, out: str | Path | None = None) -> Path:
    """Write `<run>/curves.png` (or `out`) with every logged metric; returns its path."""
    run_dir = Path(run_dir)
    curves = read_run_metrics(run_dir)
    if not curves:
        raise ValueError(f"the logs of {run_dir} hold no metric values yet")
    path = Path(out) if out else run_dir / "curves.png"
    return save_figure(run_figure(curves, f"training run {run_dir.name}"), path, footer)
