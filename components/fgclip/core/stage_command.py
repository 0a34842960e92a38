"""What every shard-stage component does around its core: run the resumable loop
inside an MLflow run, log params, input digests, counts and throughput, and write the
counts as a DVC metrics file."""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgclip.core.shards import list_shards
from fgclip.core.stage import ShardStage, StageSummary, canonical_json, run_stage
from fgclip.core.storage import write_text_atomic
from fgclip.core.tracking import Tracker, tracked_run
from fgclip.errors import ComponentError

if TYPE_CHECKING:
    from fgclip.config import Params


def add_stage_arguments(parser: argparse.ArgumentParser, records: str) -> None:
    """The arguments every shard stage takes: where its `records` go, its counts report,
    and the shard selection of a fan-out."""
    parser.add_argument("--out", required=True, help=f"output folder for {records} records")
    parser.add_argument("--report", default=None, help="JSON counts report (a DVC metrics file)")
    parser.add_argument(
        "--shards",
        nargs="+",
        default=None,
        metavar="NNNNN",
        help="only these shards, e.g. one group of a fan-out (default: all)",
    )


def select_shards(
    folder: str | Path,
    requested: Sequence[str] | None,
    suffix: str = ".tar",
    hint: str = "",
    within: Sequence[str] | None = None,
) -> tuple[list[str], bool]:
    """(shards to run, whether they are all of them) from the shards present in `folder`,
    or from `within` (the shards a dataset manifest pins) when given."""
    try:
        available = sorted(within) if within is not None else list_shards(folder, suffix=suffix)
    except FileNotFoundError as error:
        raise ComponentError(str(error)) from error
    if not available:
        raise ComponentError(f"no shards (NNNNN{suffix}) in {folder}{'; ' + hint if hint else ''}")
    if not requested:
        return available, True
    unknown = sorted(set(requested) - set(available))
    if unknown:
        raise ComponentError(f"shards {unknown} are not in {folder}")
    chosen = sorted(set(requested))
    return chosen, chosen == available


def run_tracked_stage(
    stage: ShardStage,
    *,
    params: Params,
    shards: list[str],
    out: str | Path,
    report: str | Path | None,
    inputs: dict[str, str | Path],
    progress: bool = True,
    prune: bool = True,
    extra_params: dict[str, Any] | None = None,
) -> tuple[StageSummary, Tracker]:
    """Run `stage` over `shards`; returns the summary (the MLflow run is closed).

    Pass prune=False when `shards` is only part of the input (see stage.run_stage)."""
    with tracked_run(params.tracking, stage.name, tags={"component": stage.name}) as tracker:
        tracker.log_params({"stage": stage.name, "settings": stage.settings(), **(extra_params or {})})
        if prune:  # the whole input: its folders (DVC's hashes where dvc.lock has them)
            for name, path in inputs.items():
                tracker.log_dataset(path, name)
        tracker.log_params({"shards": ",".join(shards) if not prune else "all"})
        summary = run_stage(stage, shards, out, progress=progress, prune=prune)
        if not prune:  # one group of a fan-out: its shards, from the digests the stage took anyway
            digest = hashlib.sha256(canonical_json(summary.input_digests).encode()).hexdigest()
            for name, path in inputs.items():
                tracker.log_dataset(path, name, known=(digest, "shards:" + ",".join(shards)))
        counts = summary.as_dict()
        tracker.log_metrics({k: v for k, v in counts.items() if k not in ("rejected", "ignored")})
        tracker.log_metrics({f"rejected.{k}": v for k, v in counts["rejected"].items()})
        tracker.log_metrics({f"ignored.{k}": v for k, v in counts["ignored"].items()})
        tracker.log_metrics(stage.metrics())
        if report is not None:
            write_text_atomic(report, json.dumps(counts, indent=2) + "\n")
            tracker.log_artifact(report)
    return summary, tracker
