"""`fgclip ingest`: download a URL list into img2dataset-format shards (stable keys,
resized at ingest) and report successes and failures by kind."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from fgclip.core.storage import write_text_atomic
from fgclip.core.tracking import Tracker, tracked_run
from fgclip.data.ingest.config import IngestConfig, UrlListConfig
from fgclip.data.ingest.runner import IngestError
from fgclip.data.ingest.stage import IngestReport, run_ingest
from fgclip.data.ingest.urls import UrlListError
from fgclip.errors import ComponentError

if TYPE_CHECKING:
    from fgclip.config import Params

HELP = "download a URL list (parquet, CSV/TSV, JSON lines) into image shards with stable keys and a failure report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--urls", default=None, help="URL list file or folder (default: params dataset.urls.path)")
    parser.add_argument("--out", required=True, help="shard folder or s3:// prefix (NNNNN.tar, .parquet, _stats.json)")
    parser.add_argument("--report", default=None, help="JSON download report (a DVC metrics file)")


def log_report(tracker: Tracker, report: IngestReport) -> None:
    """The totals as metrics, each shard's success rate as a step of `shard.success_rate`."""
    counts = report.as_dict()
    tracker.log_metrics({k: v for k, v in counts.items() if isinstance(v, (int, float))})
    tracker.log_metrics({f"failures.{kind}": n for kind, n in counts["failures_by_kind"].items()})
    tracker.log_metrics({f"rejected_rows.{reason}": n for reason, n in counts["rejected_rows"].items()})
    for shard, stats in counts["per_shard"].items():
        tracker.log_metrics({"shard.success_rate": stats["success_rate"]}, step=int(shard))
    tracker.log_dict(counts, "ingest/report.json")


def ingest(
    urls: UrlListConfig, config: IngestConfig, out: str, params: Params, report_path: str | None
) -> dict[str, Any]:
    """Run one ingest inside an MLflow run; returns the report."""
    with tracked_run(params.tracking, "ingest", tags={"component": "ingest"}) as tracker:
        tracker.log_params(
            {
                "stage": "ingest",
                "ingest": config.model_dump(mode="json"),
                "urls": urls.model_dump(mode="json"),
                "out": out,
            }
        )
        try:
            report = run_ingest(urls, config, out)
        except (UrlListError, IngestError) as error:
            raise ComponentError(str(error)) from error
        log_report(tracker, report)
        counts = report.as_dict()
        if report_path is not None:
            write_text_atomic(report_path, json.dumps(counts, indent=2) + "\n")
            tracker.log_artifact(report_path)
    return counts


def command(args: argparse.Namespace, params: Params) -> int:
    urls = params.dataset.urls
    if args.urls:
        urls = urls.model_copy(update={"path": args.urls})
    counts = ingest(urls, params.ingest, args.out, params, args.report)
    print(json.dumps({k: v for k, v in counts.items() if k != "per_shard"}))
    return 0
