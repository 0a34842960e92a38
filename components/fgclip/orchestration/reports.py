"""A fanned-out stage's counts report, merged from its shard groups' reports.

Each shard group of a fanned-out stage writes its own counts (pipeline.group_report); once
every group has run, their sum is the stage's report at the path dvc.yaml names, the file
`dvc metrics show` reads. Counts add up; the throughput is items processed over the time
spent processing them, summed over the groups.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from fgclip.core.storage import write_text_atomic
from fgclip.orchestration.pipeline import GROUP_REPORTS, REPORT_FLAG, Project, StageSpec, group_report

log = logging.getLogger(__name__)

SUMMED = ("shards", "shards_skipped", "items_in", "items_out", "rejected_total")
BY_REASON = ("rejected", "ignored")


class ReportError(RuntimeError):
    """The groups' reports cannot be merged (missing or unreadable); the message says which."""


def merge_counts(reports: list[dict[str, Any]], stage: str) -> dict[str, Any]:
    merged: dict[str, Any] = {"stage": stage}
    for key in SUMMED:
        merged[key] = sum(int(report.get(key, 0)) for report in reports)
    for key in BY_REASON:
        total: Counter[str] = Counter()
        for report in reports:
            total.update({reason: int(count) for reason, count in (report.get(key) or {}).items()})
        merged[key] = dict(sorted(total.items()))
    seconds = sum(float(report.get("seconds", 0.0)) for report in reports)
    processed = sum(
        float(report.get("items_per_second", 0.0)) * float(report.get("seconds", 0.0)) for report in reports
    )
    merged["seconds"] = round(seconds, 3)
    merged["items_per_second"] = round(processed / seconds, 2) if seconds > 0 else 0.0
    merged["groups"] = len(reports)
    return merged


def merge_stage_report(project: Project, stage: StageSpec, groups: list[list[str]] | None = None) -> dict[str, Any]:
    """Write the stage's report from its groups' reports; returns it. `groups`: the groups that
    must have reported (all of this run's); None: whatever groups reported."""
    target = stage.option(REPORT_FLAG)
    if target is None:
        return {}
    folder = project.root / GROUP_REPORTS / stage.name
    if groups is not None:
        files = [project.root / group_report(stage.name, group) for group in groups]
        missing = [str(file) for file in files if not file.is_file()]
        if missing:
            raise ReportError(f"{stage.name}: shard groups wrote no report {missing}")
    else:
        files = sorted(folder.glob("*.json"))
    if not files:
        raise ReportError(f"{stage.name}: no shard group reports in {folder}")
    reports = []
    for file in files:
        try:
            reports.append(json.loads(Path(file).read_text()))
        except (OSError, ValueError) as error:
            raise ReportError(f"{stage.name}: cannot read the group report {file}: {error}") from error
    merged = merge_counts(reports, stage.name)
    write_text_atomic(project.root / target, json.dumps(merged, indent=2) + "\n")
    log.info("%s: %d group reports merged into %s: %s", stage.name, len(files), target, merged)
    return merged


def merge_reports(project: Project, groups: list[list[str]] | None = None) -> dict[str, dict[str, Any]]:
    """Merge the reports of every fanned-out stage of the data build."""
    return {stage.name: merge_stage_report(project, stage, groups) for stage in project.data_stages() if stage.fan_out}
