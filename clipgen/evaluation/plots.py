"""Plots of suite reports (PNG, matplotlib without pyplot): per-attribute confusion matrices,
attribute accuracy across runs, and FID against blur radius. Each plot carries a title, axis
labels with units and a footer with the command and date that made it."""

from __future__ import annotations

import datetime
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from clipgen.atomic import write_atomic

DPI = 100


def footer_text(command: str | None = None) -> str:
    """The footer line: the command (this process's, by default) and today's date."""
    command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    return f"{command}  |  {datetime.date.today().isoformat()}"


def save_figure(fig: Figure, path: Path, footer: str) -> Path:
    """Add the footer and write the figure as PNG atomically."""
    width = int(fig.get_figwidth() * 19)  # characters that fit at this font size
    text = footer if len(footer) <= width else footer[: width - 1] + "…"
    fig.text(0.01, 0.005, text, fontsize=6.5, color="0.35", ha="left", va="bottom")
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def confusion_figure(tables: Mapping[str, Mapping[str, Any]], title: str) -> Figure:
    """One panel per attribute: counts of asked (rows) against drawn (columns) values."""
    fig = Figure(figsize=(4.2 * len(tables), 4.6))
    for i, (name, table) in enumerate(tables.items()):
        ax = fig.add_subplot(1, len(tables), i + 1)
        counts = table["counts"]
        ax.imshow(counts, cmap="Blues", vmin=0)
        ax.set_xticks(range(len(table["columns"])), table["columns"], rotation=60, fontsize=7)
        ax.set_yticks(range(len(table["labels"])), table["labels"], fontsize=7)
        ax.set_xlabel("drawn (read back from pixels)")
        ax.set_ylabel("asked in the prompt")
        total = sum(map(sum, counts))
        right = sum(counts[r][r] for r in range(len(counts)))
        ax.set_title(f"{name}: {right}/{total} images", fontsize=9)
        peak = max(max(row) for row in counts) or 1
        for r, row in enumerate(counts):
            for c, n in enumerate(row):
                if n:
                    ax.text(c, r, str(n), ha="center", va="center", fontsize=6,
                            color="white" if n > peak / 2 else "black")
    fig.suptitle(title)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.28, top=0.85, wspace=0.45)
    return fig


def accuracy_figure(reports: Mapping[str, Mapping[str, Any]], group: str = "all") -> Figure:
    """Attribute accuracy (fraction of images) per attribute, one bar per run (for example
    with and without reranking)."""
    keys = sorted({k for r in reports.values()
                   for k in r["metrics"].get("attributes", {}).get(group, {})})
    fig = Figure(figsize=(max(6.0, 1.1 * len(keys) * max(1, len(reports))), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(reports))
    for i, (label, report) in enumerate(reports.items()):
        by_key = report["metrics"].get("attributes", {}).get(group, {})
        values = [by_key.get(k, {}).get("accuracy", 0.0) for k in keys]
        ax.bar([x + i * width for x in range(len(keys))], values, width, label=label)
    ax.set_xticks([x + width * (len(reports) - 1) / 2 for x in range(len(keys))], keys,
                  fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (fraction of images)")
    ax.set_xlabel("attribute named in the prompt")
    ax.set_title(f"Attribute accuracy ({group} prompts)")
    ax.legend(fontsize=8)
    fig.subplots_adjust(bottom=0.2)
    return fig


def frechet_by_radius(metrics: Mapping[str, Any]) -> dict[str, dict[float, float]]:
    """{"fid": {radius: value}, "fd_clip": {...}} from a report's metrics (`fid`, `fid_2` ...)."""
    curves: dict[str, dict[float, float]] = {}
    for key, value in metrics.items():
        match = re.fullmatch(r"(fid|fd_clip)(?:_(\d+(?:\.\d+)?))?", key)
        if match and isinstance(value, (int, float)):
            curves.setdefault(match.group(1), {})[float(match.group(2) or 0)] = float(value)
    return {k: dict(sorted(v.items())) for k, v in curves.items()}


def radius_figure(metrics: Mapping[str, Any]) -> Figure:
    """FID (and FD on CLIP features) against the Gaussian blur radius (FID-k)."""
    fig = Figure(figsize=(6, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for name, curve in frechet_by_radius(metrics).items():
        ax.plot(list(curve), list(curve.values()), marker="o", label=name)
    ax.set_xlabel("blur radius k (Gaussian std, pixels)")
    ax.set_ylabel("Fréchet distance")
    ax.set_title("Fréchet distance after blurring both image sets (FID-k)")
    ax.legend(fontsize=8)
    fig.subplots_adjust(bottom=0.17)
    return fig


def write_suite_plots(report: Mapping[str, Any], out_dir: Path, footer: str) -> list[Path]:
    """The plots a suite report supports, written beside it; returns their paths."""
    metrics = report["metrics"]
    written = []
    for group, tables in metrics.get("attribute_confusion", {}).items():
        fig = confusion_figure(tables, f"{report['suite']} suite, {group} combinations: "
                                       "asked vs drawn")
        written.append(save_figure(fig, out_dir / f"confusion_{group}.png", footer))
    if metrics.get("attributes"):
        written.append(save_figure(accuracy_figure({report["suite"]: report}),
                                   out_dir / "accuracy.png", footer))
    if any(len(c) > 1 for c in frechet_by_radius(metrics).values()):
        written.append(save_figure(radius_figure(metrics), out_dir / "fid_by_radius.png",
                                   footer))
    return written


def sampling_speed_figure(rows: list[Mapping[str, Any]], title: str) -> Figure:
    """Per model: tokens/s against batch size for each decoder, precision and compile mode
    (rows of the sampling benchmark), with each precision's weight-read roofline (tokens/s if
    decoding only read the weights once per step at the measured copy bandwidth)."""
    timed = [r for r in rows if isinstance(r.get("tokens_per_s"), (int, float))]
    models = list(dict.fromkeys(r["model"] for r in timed))
    fig = Figure(figsize=(5.2 * max(1, len(models)), 4.4))
    for i, model in enumerate(models):
        ax = fig.add_subplot(1, max(1, len(models)), i + 1)
        mine = [r for r in timed if r["model"] == model]
        series: dict[str, dict[int, float]] = {}
        roofline: dict[str, dict[int, float]] = {}
        for r in mine:
            label = f"{r['decoder']} {r['dtype']}" + (" compiled" if r.get("compile") else "")
            series.setdefault(label, {})[int(r["batch"])] = float(r["tokens_per_s"])
            if r.get("roofline_fraction"):
                roofline.setdefault(r["dtype"], {})[int(r["batch"])] = (
                    float(r["tokens_per_s"]) / float(r["roofline_fraction"]))
        for label, curve in series.items():
            points = sorted(curve.items())
            ax.plot([b for b, _ in points], [v for _, v in points], marker="o", label=label)
        for dtype, curve in roofline.items():
            points = sorted(curve.items())
            ax.plot([b for b, _ in points], [v for _, v in points], linestyle="--",
                    color="0.4", label=f"weight-read roofline ({dtype})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (rows sampled together)")
        ax.set_ylabel("tokens per second")
        ax.set_title(model, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.subplots_adjust(bottom=0.16, top=0.86, wspace=0.3)
    return fig
