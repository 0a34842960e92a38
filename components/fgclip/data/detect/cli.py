"""`fgclip detect`: the command-line face of the detect stage."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from fgclip.core.storage import exists
from fgclip.core.stage_command import add_stage_arguments, run_tracked_stage, select_shards
from fgclip.data.detect.stage import DetectStage
from fgclip.errors import ComponentError

if TYPE_CHECKING:
    from fgclip.config import Params

log = logging.getLogger(__name__)

HELP = "extract referring expressions from long captions and box them with a detector backend"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="image shard folder (NNNNN.tar)")
    parser.add_argument("--captions", required=True, help="caption records folder (recaption output)")
    parser.add_argument("--truth", default=None, help="demo world truth sidecars (only the demo teacher reads them)")
    add_stage_arguments(parser, "regions")


def command(args: argparse.Namespace, params: Params) -> int:
    shards, every_shard = select_shards(args.images, args.shards)
    try:
        stage = DetectStage(args.images, args.captions, args.truth, params.detect, params.seed)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise ComponentError(str(error)) from error
    missing = sorted(str(path) for shard in shards for path in stage.shard_inputs(shard).values() if not exists(path))
    if missing:
        raise ComponentError(f"{len(missing)} input file(s) missing, e.g. {', '.join(missing[:3])}")
    inputs = {"images": args.images, "captions": args.captions}
    if "truth" in stage.shard_inputs(shards[0]):
        inputs["truth"] = args.truth
    summary, _ = run_tracked_stage(stage, params=params, shards=shards, out=args.out, report=args.report,
                                   inputs=inputs, progress=not args.no_progress, prune=every_shard)
    log.info("detect: %d samples in, %d written, ignored %s", summary.items_in, summary.items_out, dict(summary.ignored))
    return 0
