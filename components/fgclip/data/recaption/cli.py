"""`fgclip recaption`: the command-line face of the recaption stage."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from fgclip.core.dataset import TRUTH, add_dataset_arguments, dataset_input
from fgclip.core.given import GivenRecords
from fgclip.core.stage import ShardStage
from fgclip.core.stage_command import add_stage_arguments, run_tracked_stage, select_shards
from fgclip.data.recaption.stage import STAGE, RecaptionStage
from fgclip.errors import ComponentError
from fgclip.llm.chat import EndpointDown

if TYPE_CHECKING:
    from fgclip.config import Params

HELP = "write a long, detailed caption for every image (caption records per shard)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser)
    parser.add_argument(
        "--truth", default=None, help="demo world truth folder with --images (the dataset names its own)"
    )
    add_stage_arguments(parser, "caption")


def command(args: argparse.Namespace, params: Params) -> int:
    data = dataset_input(args)
    shards, every_shard = select_shards(data.images, args.shards, within=data.shards)
    truth = args.truth or data.sidecar(TRUTH)
    given = data.annotations("captions")
    stage: ShardStage
    try:
        if given is not None:  # the source brought its captions (FineHARD): pass them through
            stage = GivenRecords(STAGE, "caption_record", given)
        else:
            stage = RecaptionStage(data.images, truth, params.recaption, params.seed)
    except ValueError as error:
        raise ComponentError(str(error)) from error
    inputs = {"images": data.images, **({"truth": truth} if truth and given is None else {})}
    try:
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
    except EndpointDown as error:  # finished shards are on disk; a rerun resumes after them
        raise ComponentError(f"recaption stopped: {error}") from error
    print(json.dumps(summary.as_dict()))
    return 0
