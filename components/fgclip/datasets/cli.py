"""`fgclip dataset`: prepare the dataset params name and pin it (the pipeline's first stage)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from fgclip.core.storage import write_text_atomic
from fgclip.core.tracking import tracked_run
from fgclip.data.ingest.runner import IngestError
from fgclip.data.ingest.urls import UrlListError
from fgclip.datasets.prepare import DatasetError, prepare_dataset
from fgclip.errors import ComponentError

if TYPE_CHECKING:
    from fgclip.config import Params

HELP = "prepare the dataset named in params (demo world, shards in place, URL list download, FineHARD) and pin it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="data/dataset", help="writes OUT/manifest.json (default: data/dataset)")
    parser.add_argument("--report", default=None, help="JSON summary (a DVC metrics file): shards, ingest totals")


def command(args: argparse.Namespace, params: Params) -> int:
    config = params.dataset
    with tracked_run(params.tracking, f"dataset:{config.name}", tags={"component": "dataset"}) as tracker:
        tracker.log_params({"dataset": config.model_dump(mode="json")})
        try:
            manifest = prepare_dataset(params, args.out, progress=not args.no_progress, tracker=tracker)
        except (DatasetError, IngestError, UrlListError, OSError) as error:
            raise ComponentError(str(error)) from error
        tracker.set_tags({"dataset.name": manifest.name, "dataset.version": manifest.version})
        tracker.log_dataset(manifest.images, manifest.name)
        summary = {
            "name": manifest.name,
            "source": manifest.source,
            "version": manifest.version,
            "shards": len(manifest.shards),
            "heldout_shards": len(manifest.heldout),
            **manifest.details,
        }
        tracker.log_metrics({"shards": summary["shards"], "heldout_shards": summary["heldout_shards"]})
        if args.report:
            write_text_atomic(args.report, json.dumps(summary, indent=2) + "\n")
            tracker.log_artifact(args.report)
    print(json.dumps(summary))
    return 0
