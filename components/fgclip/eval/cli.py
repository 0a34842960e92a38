"""`fgclip eval`: score an FG-CLIP checkpoint on the held-out demo world (and FG-OVD when given),
or on the paper's benchmark suite (``--suite paper``, see ``fgclip.eval.suite.command``).

    fgclip eval --model models/stage2/final --images data/demo/heldout/images \\
        --truth data/demo/heldout/truth --out reports/eval/stage2 \\
        [--fgovd-dir DIR --coco-images DIR]
    fgclip eval --suite paper --model models/stage2/final --data-root data/benchmarks \\
        --out reports/benchmarks/stage2

Writes ``OUT/metrics.json``, ``OUT/counts.json`` and ``OUT/metrics.png`` (see
``fgclip.eval.report``), and logs params, metrics, artifacts and the input data digests
to MLflow (experiment ``eval.experiment``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from fgclip.core.tracking import Tracker, dataset_digest, tracked_run
from fgclip.errors import ComponentError
from fgclip.eval.embedding import Embedder
from fgclip.eval.evaluate import EvalError, evaluate
from fgclip.eval.report import write_outputs
from fgclip.eval.suite.command import add_suite_arguments, suite_command
from fgclip.model.embedder import FGCLIPEmbedder, ModelFolderError

if TYPE_CHECKING:
    from fgclip.config import Params

HELP = "evaluate a model: demo FG-OVD, box classification, long/short retrieval, zero-shot (and FG-OVD)"


def log_run(tracker: Tracker, args: argparse.Namespace, params: Params, embedder: Embedder) -> None:
    tracker.log_params(
        {
            "model": args.model,
            "images": args.images,
            "truth": args.truth,
            "fgovd_dir": args.fgovd_dir,
            "coco_images": args.coco_images,
            "eval": params.eval.model_dump(mode="json"),
            "embedder": embedder.identity(),
        }
    )
    tracker.log_dataset(args.images, "heldout_images")
    tracker.log_dataset(args.truth, "heldout_truth")
    if args.fgovd_dir:
        tracker.log_dataset(args.fgovd_dir, "fgovd")
    digest, origin = dataset_digest(args.model)
    tracker.set_tags({"model.digest": digest, "model.digest_origin": origin, "model.dir": str(args.model)})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="FG-CLIP checkpoint folder (model, tokenizer, image processor)")
    parser.add_argument("--images", default=None, help="held-out image shards (NNNNN.tar); required without --suite")
    parser.add_argument(
        "--truth",
        default=None,
        help="held-out truth sidecars (NNNNN.jsonl): the labelled test set; required without --suite",
    )
    parser.add_argument("--out", required=True, help="report folder: metrics.json, counts.json, metrics.png")
    parser.add_argument("--fgovd-dir", default=None, help="FG-OVD benchmark folder (*_llava.jsonl)")
    parser.add_argument("--coco-images", default=None, help="COCO val2017 images for FG-OVD (resolved by file name)")
    add_suite_arguments(parser)


def command(args: argparse.Namespace, params: Params) -> int:
    if args.suite:
        if args.images or args.truth or args.fgovd_dir:
            raise ComponentError(
                "--suite reads its benchmarks from --data-root; drop --images, --truth and --fgovd-dir"
            )
        return suite_command(args, params)
    if not args.images or not args.truth:
        raise ComponentError("the demo evaluation needs --images and --truth (or run a benchmark suite with --suite)")
    if args.coco_images and not args.fgovd_dir:
        raise ComponentError("--coco-images needs --fgovd-dir")
    try:
        embedder = FGCLIPEmbedder(args.model, params.eval.device, params.eval.global_view)
        with tracked_run(
            params.tracking,
            f"eval:{Path(args.out).name}",
            experiment=params.eval.experiment,
            tags={"component": "eval"},
        ) as tracker:
            log_run(tracker, args, params, embedder)
            metrics, counts = evaluate(
                embedder,
                params,
                images=args.images,
                truth=args.truth,
                fgovd_dir=args.fgovd_dir,
                coco_images=args.coco_images,
                progress=not args.no_progress,
            )
            folder = write_outputs(args.out, metrics, counts, f"{args.model}", params.eval.plot_dpi)
            tracker.log_metrics(metrics)
            tracker.log_metrics({f"count.{k}": v for k, v in counts.items()})
            tracker.log_artifact(folder, "eval")
    except (EvalError, ModelFolderError) as error:
        raise ComponentError(str(error)) from error
    print(json.dumps(metrics))
    return 0
