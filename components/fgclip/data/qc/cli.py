"""`fgclip qc`: load the population, run QC, write every output, then gate (exit code 3)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from fgclip.core.dataset import TRUTH, add_dataset_arguments, dataset_input
from fgclip.core.shards import list_shards
from fgclip.core.storage import sha256_file
from fgclip.core.tracking import tracked_run
from fgclip.data.qc.population import load_population
from fgclip.data.qc.report import mlflow_metrics, write_outputs
from fgclip.data.qc.reviewers import make_reviewer
from fgclip.data.qc.run import run_qc
from fgclip.data.qc.validators import ValidationRules
from fgclip.errors import ComponentError, ExitCode

if TYPE_CHECKING:
    from fgclip.config import Params

log = logging.getLogger(__name__)

HELP = "sampled QC of regions and negatives: noise estimate with a Wilson interval, a gate, a review gallery"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser, images_help="image shards (NNNNN.tar): the shard list and the gallery's images")
    parser.add_argument("--captions", required=True, help="caption_record shards")
    parser.add_argument("--regions", required=True, help="regions_record shards")
    parser.add_argument("--negatives", required=True, help="negatives_record shards")
    parser.add_argument(
        "--truth", default=None, help="truth sidecars with --images (qc.reviewer=truth; the demo dataset names its own)"
    )
    parser.add_argument(
        "--labels", default=None, help="human verdicts downloaded from the gallery (needed by qc.reviewer=labels)"
    )
    parser.add_argument("--out", default="reports/qc", help="output folder (default: reports/qc)")


def command(args: argparse.Namespace, params: Params) -> int:
    config = params.qc
    progress = not getattr(args, "no_progress", False)
    if args.labels is not None and config.reviewer != "labels":
        raise ComponentError(
            f"--labels is read only by the labels reviewer; add --set qc.reviewer=labels (now {config.reviewer})"
        )
    data = dataset_input(args)
    truth = args.truth or data.sidecar(TRUTH)
    if config.reviewer == "truth" and truth is None:
        raise ComponentError(
            "qc.reviewer=truth is the demo world's oracle and this dataset has no truth: "
            "use qc.reviewer none (validators) or labels (verdicts from the gallery)"
        )
    try:
        shards = data.shards if data.shards is not None else list_shards(data.images)
        population = load_population(
            shards,
            regions_dir=args.regions,
            negatives_dir=args.negatives,
            captions_dir=args.captions,
            progress=progress,
        )
        reviewer = make_reviewer(config, truth_dir=truth, labels=args.labels)
        rules = ValidationRules.from_params(params)
    except (FileNotFoundError, ValueError, ImportError) as error:
        raise ComponentError(str(error)) from error

    inputs = {"images": data.images, "captions": args.captions, "regions": args.regions, "negatives": args.negatives}
    if config.reviewer == "truth":
        inputs["truth"] = str(truth)
    with tracked_run(params.tracking, "qc", tags={"component": "qc"}) as tracker:
        tracker.log_params(
            {
                "stage": "qc",
                "qc": config.model_dump(),
                "negatives.count": params.negatives.count,
                "reviewer": reviewer.identity(),
                "shards": len(shards),
            }
        )
        for name, path in inputs.items():
            tracker.log_dataset(path, name)
        if args.labels is not None:
            tracker.set_tags({"qc.labels_sha256": sha256_file(args.labels)})
        try:
            result = run_qc(population, config=config, rules=rules, reviewer=reviewer, progress=progress)
        except (FileNotFoundError, ValueError) as error:  # a truth shard missing or broken
            raise ComponentError(str(error)) from error
        paths = write_outputs(
            result,
            args.out,
            images_dir=data.images,
            config=config,
            human_labels=config.reviewer == "labels",
            progress=progress,
        )
        tracker.log_metrics(mlflow_metrics(result))
        for name in ("report", "metrics", "noise_by_shard", "sample"):
            tracker.log_artifact(paths[name], "qc")
        tracker.log_artifact(paths["gallery"], "qc/gallery")
    log.info("qc: %s", result.gate.message)
    print(result.gate.message, file=sys.stdout if result.gate.passed else sys.stderr)
    return ExitCode.OK if result.gate.passed else ExitCode.GATE_FAILED
