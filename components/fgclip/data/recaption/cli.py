"""`fgclip recaption`: the command-line face of the recaption stage."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from fgclip.core.stage_command import add_stage_arguments, run_tracked_stage, select_shards
from fgclip.data.recaption.stage import RecaptionStage
from fgclip.errors import ComponentError
from fgclip.llm.chat import EndpointDown

if TYPE_CHECKING:
    from fgclip.config import Params

HELP = "write a long, detailed caption for every image (caption records per shard)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="folder of image shards (NNNNN.tar)")
    parser.add_argument("--truth", default=None, help="demo world truth folder (needed by the demo backend)")
    add_stage_arguments(parser, "caption")


def command(args: argparse.Namespace, params: Params) -> int:
    shards, every_shard = select_shards(args.images, args.shards)
    try:
        stage = RecaptionStage(args.images, args.truth, params.recaption, params.seed)
    except ValueError as error:
        raise ComponentError(str(error)) from error
    inputs = {"images": args.images, **({"truth": args.truth} if args.truth else {})}
    try:
        summary, _ = run_tracked_stage(stage, params=params, shards=shards, out=args.out, report=args.report,
                                       inputs=inputs, progress=not args.no_progress, prune=every_shard)
    except EndpointDown as error:  # finished shards are on disk; a rerun resumes after them
        raise ComponentError(f"recaption stopped: {error}") from error
    print(json.dumps(summary.as_dict()))
    return 0
