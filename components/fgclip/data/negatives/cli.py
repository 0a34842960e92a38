"""`fgclip negatives`: the command-line face of the negatives stage."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from fgclip.core.dataset import load_manifest
from fgclip.core.given import GivenRecords
from fgclip.core.stage import ShardStage
from fgclip.core.stage_command import add_stage_arguments, run_tracked_stage, select_shards
from fgclip.data.negatives.stage import STAGE, NegativesStage
from fgclip.errors import ComponentError
from fgclip.llm.chat import EndpointDown

if TYPE_CHECKING:
    from fgclip.config import Params

log = logging.getLogger(__name__)

HELP = "generate hard negatives (attribute rewrites keeping the object noun) for every region"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--regions", required=True, help="regions records folder (detect output)")
    parser.add_argument("--dataset", default=None, help="dataset manifest: a source's own negatives pass through")
    add_stage_arguments(parser, "negatives")


def command(args: argparse.Namespace, params: Params) -> int:
    # The regions stage's manifests name its finished shards; a shard without one is
    # not finished and must not be read.
    shards, every_shard = select_shards(args.regions, args.shards, suffix=".manifest.json", hint="run detect first")
    manifest = getattr(args, "dataset", None)  # callers that build the namespace may leave it out
    given = load_manifest(manifest).annotations.get("negatives") if manifest else None
    stage: ShardStage
    try:
        if given is not None:  # the source brought its negatives (FineHARD): pass them through
            stage = GivenRecords(STAGE, "negatives_record", given)
        else:
            stage = NegativesStage(args.regions, params.negatives, params.seed)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise ComponentError(str(error)) from error
    try:
        summary, _ = run_tracked_stage(
            stage,
            params=params,
            shards=shards,
            out=args.out,
            report=args.report,
            inputs={"regions": args.regions},
            progress=not args.no_progress,
            prune=every_shard,
        )
    except EndpointDown as error:  # finished shards are on disk; a rerun resumes after them
        raise ComponentError(f"negatives stopped: {error}") from error
    log.info(
        "negatives: %d records in, %d written, ignored %s", summary.items_in, summary.items_out, dict(summary.ignored)
    )
    return 0
