"""`fgclip finehard import|export`: the command-line face of the FineHARD converters."""


from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any


from fgclip.core.storage import write_text_atomic
from fgclip.core.tracking import tracked_run
from fgclip.errors import ComponentError
from fgclip.data.finehard.exporter import export_finehard
from fgclip.data.finehard.importer import import_finehard
from fgclip.data.finehard.records import FORMATS

log = logging.getLogger(__name__)


HELP = "import the published FineHARD annotations into shards, or export shards as FineHARD"

def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="action")
    load = actions.add_parser("import", help="FineHARD file(s) + image folder -> image shards and annotation folders")
    load.add_argument("--annotations", nargs="+", required=True, help="FineHARD JSON or JSON-lines file(s); records are numbered across them in order")
    load.add_argument("--image-root", required=True, help="folder the records' f_path values are relative to")
    load.add_argument("--out", required=True, help="writes OUT/images, OUT/captions, OUT/regions, OUT/negatives")
    load.add_argument("--shard-size", type=int, default=10000, help="records per shard (default: 10000, as img2dataset)")
    load.add_argument("--key-prefix", default="fh", help="sample keys are PREFIX + 9-digit record number (default: fh)")
    load.add_argument("--missing-score", type=float, default=1.0,
                      help="region score when a bbox has no usable 5th value (default: 1.0, the box was published)")
    load.add_argument("--report", help="write the import counts as JSON here")
    save = actions.add_parser("export", help="image shards + annotation folders -> one FineHARD file")
    save.add_argument("--images", required=True)
    save.add_argument("--captions", required=True)
    save.add_argument("--regions", help="regions folder (left out: no bbox_info)")
    save.add_argument("--negatives", help="negatives folder (left out: no negatives)")
    save.add_argument("--out", required=True, help="FineHARD file to write")
    save.add_argument("--format", choices=FORMATS, help="json (one array) or jsonl; default: by the --out suffix")
    save.add_argument("--report", help="write the export counts as JSON here")


def command(args: argparse.Namespace, params: Any) -> int:
    progress = not getattr(args, "no_progress", False)
    with tracked_run(params.tracking, f"finehard-{args.action}", tags={"component": "finehard"}) as tracker:
        try:
            if args.action == "import":
                summary = import_finehard(args.annotations, args.image_root, args.out, shard_size=args.shard_size,
                                          key_prefix=args.key_prefix, missing_score=args.missing_score, progress=progress)
                counts = summary.as_dict()
                tracker.log_params({"shard_size": args.shard_size, "key_prefix": args.key_prefix, "missing_score": args.missing_score})
                for path in args.annotations:
                    tracker.log_dataset(path, f"finehard:{Path(path).name}")
            else:
                counts = dict(export_finehard(args.images, args.captions, args.regions, args.negatives, args.out,
                                              fmt=args.format, progress=progress))
        except (OSError, ValueError) as error:
            raise ComponentError(str(error)) from error
        tracker.log_metrics({k: v for k, v in counts.items() if k != "stages"})
        if args.report:
            write_text_atomic(args.report, json.dumps(counts, indent=2) + "\n")
            tracker.log_artifact(args.report)
    print(json.dumps(counts, indent=2))
    return 0
