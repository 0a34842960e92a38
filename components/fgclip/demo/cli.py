"""`fgclip demo-world`: generate the demo world's splits (image shards + truth sidecars)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from fgclip.core.storage import local_path
from fgclip.core.tracking import tracked_run
from fgclip.demo.world import SPLIT_KEY_PREFIX, generate_split

if TYPE_CHECKING:
    from fgclip.config import Params

HELP = "generate the demo world: drawn scenes with alt-text (image shards) and ground truth (truth sidecars)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="data/demo", help="output root; writes <out>/<split>/{images,truth} (default: data/demo)"
    )
    parser.add_argument(
        "--split", choices=[*SPLIT_KEY_PREFIX, "all"], default="all", help="which split to generate (default: all)"
    )


def command(args: argparse.Namespace, params: Params) -> int:
    splits = list(SPLIT_KEY_PREFIX) if args.split == "all" else [args.split]
    with tracked_run(params.tracking, "demo-world", tags={"component": "demo-world"}) as tracker:
        tracker.log_params({"demo": params.demo.model_dump(mode="json"), "splits": ",".join(splits)})
        for split in splits:
            summary = generate_split(params.demo, args.out, split, progress=not args.no_progress)
            counts = summary.as_dict()
            counts.pop("split")
            tracker.log_metrics({f"{split}.{name}": value for name, value in counts.items()})
            if summary.shards:
                tracker.log_dataset(local_path(args.out) / split, f"demo-{split}", context="output")
            print(json.dumps(summary.as_dict()))
    return 0
