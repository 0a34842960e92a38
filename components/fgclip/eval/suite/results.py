"""What `fgclip eval --suite paper` writes, and the paper-style table.

- ``OUT/<benchmark>.json``: one per benchmark: its pinned settings, the files read,
  metrics, counts, reject reasons (or why it was skipped);
- ``OUT/metrics.json``: every metric, flat, ``<benchmark>_<metric>`` in [0, 1] (what
  MLflow and the registry's promotion gate read);
- ``OUT/suite.json``: the model, the benchmarks' status, images/s and timings;
- ``OUT/table.md`` and ``OUT/table.png``: the paper's table with the published numbers as
  reference rows, marked "(published)".

``format_table``/``plot_table`` take any number of models (`fgclip eval-table --paper`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import matplotlib
import numpy as np

from fgclip.core.storage import local_path, write_text_atomic
from fgclip.eval.suite.published import COLUMNS, PUBLISHED, SOURCE
from fgclip.eval.suite.run import SuiteResult

matplotlib.use("Agg")  # files only, never a window
from matplotlib import pyplot as plt  # noqa: E402  (after choosing the backend)

METRICS_FILE = "metrics.json"
SUITE_FILE = "suite.json"
TABLE_FILE = "table.md"
PLOT_FILE = "table.png"
PUBLISHED_MARK = " (published)"
EMPTY = "–"


def write_suite(out: str | Path, result: SuiteResult, model_name: str, dpi: int) -> Path:
    folder = local_path(out)
    for benchmark in result.results:
        write_text_atomic(folder / f"{benchmark.name}.json", json.dumps(asdict(benchmark), indent=2) + "\n")
    write_text_atomic(folder / METRICS_FILE, json.dumps(result.metrics(), indent=2, sort_keys=True) + "\n")
    summary = {
        "model": result.model,
        "benchmarks": {
            r.name: {"status": r.status, **({"reason": r.reason} if r.reason else {})} for r in result.results
        },
        "throughput": result.throughput,
        "seconds": result.seconds,
    }
    write_text_atomic(folder / SUITE_FILE, json.dumps(summary, indent=2) + "\n")
    models = {model_name: result.metrics()}
    write_text_atomic(folder / TABLE_FILE, format_table(models) + "\n")
    plot_table(models, folder / PLOT_FILE, dpi)
    return folder


def table_rows(models: Mapping[str, Mapping[str, float]], published: bool = True) -> dict[str, dict[str, float]]:
    """Model name -> metric -> percent: published reference rows first, then the measured ones."""
    rows = {f"{name}{PUBLISHED_MARK}": dict(values) for name, values in PUBLISHED.items()} if published else {}
    for name, metrics in models.items():
        rows[name] = {key: 100.0 * value for key, value in metrics.items()}
    return rows


def format_table(models: Mapping[str, Mapping[str, float]], published: bool = True) -> str:
    """A markdown table: one row per model, one column per paper metric (percent)."""
    rows = table_rows(models, published)
    columns = [(header, key) for header, key in COLUMNS if any(key in values for values in rows.values())]
    lines = [
        "| model | " + " | ".join(header for header, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, values in rows.items():
        cells = [f"{values[key]:.1f}" if key in values else EMPTY for _, key in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if published:
        lines.append("")
        lines.append(f"Rows marked{PUBLISHED_MARK}: {SOURCE}. Other rows: measured by `fgclip eval --suite paper`.")
    return "\n".join(lines)


def plot_table(models: Mapping[str, Mapping[str, float]], path: str | Path, dpi: int, published: bool = True) -> None:
    """Grouped bars: one group per paper metric, one bar per model; published rows hatched."""
    rows = table_rows(models, published)
    columns = [(header, key) for header, key in COLUMNS if any(key in values for values in rows.values())]
    figure, axes = plt.subplots(figsize=(max(8.0, 0.9 * len(columns) + 3), 4.8))
    try:
        width = 0.8 / max(len(rows), 1)
        positions = np.arange(len(columns))
        for index, (name, values) in enumerate(rows.items()):
            heights = [values.get(key, np.nan) for _, key in columns]
            axes.bar(
                positions + index * width - 0.4 + width / 2,
                heights,
                width,
                label=name,
                hatch="//" if name.endswith(PUBLISHED_MARK) else None,
                alpha=0.55 if name.endswith(PUBLISHED_MARK) else 0.95,
            )
        axes.set_xticks(positions, [header for header, _ in columns], rotation=40, ha="right", fontsize=8)
        axes.set_ylabel("%")
        axes.set_ylim(0, 100)
        axes.set_title("FG-CLIP paper benchmarks (hatched: published, not measured here)", fontsize=10)
        axes.legend(fontsize=7, ncol=2)
        figure.tight_layout()
        target = local_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target, dpi=dpi)
    finally:
        plt.close(figure)
