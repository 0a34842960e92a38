"""`fgclip detect`: the command-line face of the detect stage."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from fgclip.core.dataset import TRUTH, add_dataset_arguments, dataset_input
from fgclip.core.given import GivenRecords
from fgclip.core.stage import ShardStage
from fgclip.core.stage_command import add_stage_arguments, run_tracked_stage, select_shards
from fgclip.core.storage import exists
from fgclip.data.detect.stage import STAGE, DetectStage
from fgclip.errors import ComponentError

if TYPE_CHECKING:
    from fgclip.config import Params

log = logging.getLogger(__name__)

HELP = "extract referring expressions from long captions and box them with a detector backend"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser)
    parser.add_argument("--captions", required=True, help="caption records folder (recaption output)")
    parser.add_argument(
        "--truth", default=None, help="demo world truth folder with --images (the dataset names its own)"
    )
    add_stage_arguments(parser, "regions")


def command(args: argparse.Namespace, params: Params) -> int:
    data = dataset_input(args)
    shards, every_shard = select_shards(data.images, args.shards, within=data.shards)
    truth = args.truth or data.sidecar(TRUTH)
    given = data.annotations("regions")
    stage: ShardStage
    try:
        if given is not None:  # the source brought its boxes (FineHARD): pass them through
            stage = GivenRecords(STAGE, "regions_record", given)
        else:
            stage = DetectStage(data.images, args.captions, truth, params.detect, params.seed)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise ComponentError(str(error)) from error
    missing = sorted(str(path) for shard in shards for path in stage.shard_inputs(shard).values() if not exists(path))
    if missing:
        raise ComponentError(f"{len(missing)} input file(s) missing, e.g. {', '.join(missing[:3])}")
    inputs = {"images": data.images, "captions": args.captions}
    if "truth" in stage.shard_inputs(shards[0]):
        inputs["truth"] = str(truth)
    summary, _ = run_tracked_stage(
        stage,
        params=params,
        shards=shards,
        out=args.out,
        report=args.report,
        inputs=inputs,
        progress=not args.no_progress,
        prune=every_shard,
    )
    log.info(
        "detect: %d samples in, %d written, ignored %s", summary.items_in, summary.items_out, dict(summary.ignored)
    )
    return 0
