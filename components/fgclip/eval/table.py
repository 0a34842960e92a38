"""eval-table: print the metrics of several `fgclip eval` reports side by side.

    fgclip eval-table --reports reports/eval/stage1 reports/eval/stage2
    fgclip eval-table --paper --reports reports/benchmarks/stage1 reports/benchmarks/stage2 \\
        [--plot table.png]

One row per metric, one column per report (named after its folder), and with two or
more reports a last column with the change from the first to the last. ``--paper``: the
paper's table of `fgclip eval --suite paper` reports instead, one row per model, with
the published numbers as reference rows (markdown; ``--plot`` also draws it).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fgclip.core.storage import local_path
from fgclip.errors import ComponentError
from fgclip.eval.metrics import metric_order
from fgclip.eval.report import METRICS_FILE
from fgclip.eval.suite.results import format_table as format_paper_table
from fgclip.eval.suite.results import plot_table

if TYPE_CHECKING:
    from fgclip.config import Params

HELP = "print a comparison table of `fgclip eval` reports (e.g. stage 1 vs stage 2)"
MISSING = "-"


def read_report(folder: str | Path) -> dict[str, float]:
    path = local_path(folder) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `fgclip eval --out {folder}` first")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object of metrics")
    return {str(name): float(value) for name, value in data.items()}


def column_names(folders: Sequence[str | Path]) -> list[str]:
    """Folder names, or the whole paths when two folders share a name."""
    names = [local_path(folder).name for folder in folders]
    return names if len(set(names)) == len(names) else [str(folder) for folder in folders]


def format_table(reports: Mapping[str, Mapping[str, float]]) -> str:
    """A fixed-width table: metric | one column per report | delta (last - first)."""
    names = list(reports)
    metrics = sorted({metric for values in reports.values() for metric in values}, key=metric_order)
    with_delta = len(names) >= 2
    header = ["metric", *names, *(["delta"] if with_delta else [])]
    rows = []
    for metric in metrics:
        values = [reports[name].get(metric) for name in names]
        cells = [metric, *(MISSING if v is None else f"{v:.3f}" for v in values)]
        if with_delta:
            first, last = values[0], values[-1]
            cells.append(MISSING if first is None or last is None else f"{last - first:+.3f}")
        rows.append(cells)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(cells))

    return "\n".join([line(header), "  ".join("-" * width for width in widths), *(line(row) for row in rows)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reports", nargs="+", required=True, help="report folders written by `fgclip eval --out`")
    parser.add_argument("--paper", action="store_true", help="the paper's table of `--suite paper` reports (markdown)")
    parser.add_argument("--no-published", action="store_true", help="--paper: leave out the published reference rows")
    parser.add_argument("--plot", default=None, help="--paper: also draw the table as a bar chart (PNG)")


def command(args: argparse.Namespace, params: Params) -> int:
    try:
        values = [read_report(folder) for folder in args.reports]
    except (FileNotFoundError, ValueError) as error:
        raise ComponentError(str(error)) from error
    reports = dict(zip(column_names(args.reports), values))
    if not args.paper:
        if args.plot or args.no_published:
            raise ComponentError("--plot and --no-published go with --paper")
        print(format_table(reports))
        return 0
    print(format_paper_table(reports, published=not args.no_published))
    if args.plot:
        plot_table(reports, args.plot, params.benchmarks.plot_dpi, published=not args.no_published)
    return 0
