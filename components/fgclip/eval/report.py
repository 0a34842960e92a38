"""What `fgclip eval` writes: metrics.json (flat, every value in [0, 1], names without
'@'), counts.json (what was scored and what was rejected) and metrics.png (a bar chart)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

from fgclip.core.storage import local_path, write_text_atomic
from fgclip.eval.metrics import metric_order

matplotlib.use("Agg")  # files only, never a window
from matplotlib import pyplot as plt  # noqa: E402  (after choosing the backend)

METRICS_FILE = "metrics.json"
COUNTS_FILE = "counts.json"
PLOT_FILE = "metrics.png"


def plot_metrics(metrics: dict[str, float], path: str | Path, title: str, dpi: int) -> None:
    """A horizontal bar chart of the metrics (all in [0, 1])."""
    names = sorted(metrics, key=metric_order)
    figure, axes = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
    try:
        bars = axes.barh(names, [metrics[n] for n in names], color="#3b7dd8")
        axes.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
        axes.set_xlim(0, 1.1)
        axes.invert_yaxis()
        axes.set_title(title)
        axes.tick_params(axis="y", labelsize=8)
        figure.tight_layout()
        target = local_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target, dpi=dpi)
    finally:
        plt.close(figure)


def write_outputs(out: str | Path, metrics: dict[str, float], counts: dict[str, Any], title: str, dpi: int) -> Path:
    folder = local_path(out)
    write_text_atomic(folder / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    write_text_atomic(folder / COUNTS_FILE, json.dumps(counts, indent=2, sort_keys=True) + "\n")
    plot_metrics(metrics, folder / PLOT_FILE, title, dpi)
    return folder
