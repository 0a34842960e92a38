"""What every shard-stage component does around its core: run the resumable loop
inside an MLflow run, log params, input digests, counts and throughput, and write the
counts as a DVC metrics file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fgclip.config import Params
from fgclip.stage import ShardStage, StageSummary, run_stage
from fgclip.storage import write_text_atomic
from fgclip.tracking import Tracker, tracked_run


def run_tracked_stage(stage: ShardStage, *, params: Params, shards: list[str], out: str | Path,
                      report: str | Path | None, inputs: dict[str, str | Path], progress: bool = True,
                      extra_params: dict[str, Any] | None = None) -> tuple[StageSummary, Tracker]:
    """Run `stage` over `shards`; returns the summary (the MLflow run is closed)."""
    with tracked_run(params.tracking, stage.name, tags={"component": stage.name}) as tracker:
        tracker.log_params({"stage": stage.name, "settings": stage.settings(), **(extra_params or {})})
        for name, path in inputs.items():
            tracker.log_dataset(path, name)
        summary = run_stage(stage, shards, out, progress=progress)
        counts = summary.as_dict()
        tracker.log_metrics({k: v for k, v in counts.items() if k not in ("rejected", "ignored")})
        tracker.log_metrics({f"rejected.{k}": v for k, v in counts["rejected"].items()})
        tracker.log_metrics({f"ignored.{k}": v for k, v in counts["ignored"].items()})
        if report is not None:
            write_text_atomic(report, json.dumps(counts, indent=2) + "\n")
            tracker.log_artifact(report)
    return summary, tracker
