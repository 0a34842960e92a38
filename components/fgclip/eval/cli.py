"""`fgclip eval`: score an FG-CLIP checkpoint on the held-out demo world (and FG-OVD when given),
or on the paper's benchmark suite (``--suite paper``, see ``fgclip.eval.suite.command``).

    fgclip eval --model models/stage2/final --images data/demo/heldout/images \\
        --truth data/demo/heldout/truth --out reports/eval/stage2 \\
        [--fgovd-dir DIR --coco-images DIR]
    fgclip eval --model models/stage2/final --dataset data/dataset/manifest.json \\
        --captions data/build/captions --regions data/build/regions --negatives data/build/negatives \\
        --out reports/eval/stage2
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
from typing import TYPE_CHECKING, Any

from fgclip.core.dataset import HELDOUT_IMAGES, HELDOUT_TRUTH, load_manifest
from fgclip.core.tracking import Tracker, dataset_digest, tracked_run
from fgclip.errors import ComponentError
from fgclip.eval.built import evaluate_built
from fgclip.eval.embedding import Embedder
from fgclip.eval.evaluate import EvalError, evaluate, load_fgovd_images
from fgclip.eval.report import write_outputs
from fgclip.eval.suite.command import add_suite_arguments, suite_command
from fgclip.eval.tasks import evaluate_fgovd
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
    if args.truth:
        tracker.log_dataset(args.truth, "heldout_truth")
    if args.fgovd_dir:
        tracker.log_dataset(args.fgovd_dir, "fgovd")
    digest, origin = dataset_digest(args.model)
    tracker.set_tags({"model.digest": digest, "model.digest_origin": origin, "model.dir": str(args.model)})


def with_benchmark(
    embedder: Embedder, params: Params, args: argparse.Namespace, metrics: dict[str, float], counts: dict[str, Any]
) -> tuple[dict[str, float], dict[str, Any]]:
    splits, image_paths, fgovd_counts = load_fgovd_images(args.fgovd_dir, args.coco_images, params)
    counts = {**counts, **fgovd_counts}
    if image_paths:
        more_metrics, more_counts = evaluate_fgovd(splits, image_paths, embedder, params, not args.no_progress)
        metrics, counts = {**metrics, **more_metrics}, {**counts, **more_counts}
    return dict(sorted(metrics.items())), counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="FG-CLIP checkpoint folder (model, tokenizer, image processor)")
    parser.add_argument(
        "--dataset",
        default=None,
        help="dataset manifest: the demo's held-out split, or the held-out "
        "shards of a built dataset (with --captions, --regions, --negatives)",
    )
    parser.add_argument(
        "--images",
        default=None,
        help="held-out demo image shards (NNNNN.tar), with --truth (or give --dataset or --suite)",
    )
    parser.add_argument("--truth", default=None, help="held-out truth sidecars (NNNNN.jsonl): the labelled test set")
    parser.add_argument("--captions", default=None, help="built data: the captions stage folder")
    parser.add_argument("--regions", default=None, help="built data: the regions stage folder")
    parser.add_argument("--negatives", default=None, help="built data: the negatives stage folder")
    parser.add_argument("--out", required=True, help="report folder: metrics.json, counts.json, metrics.png")
    parser.add_argument("--fgovd-dir", default=None, help="FG-OVD benchmark folder (*_llava.jsonl)")
    parser.add_argument("--coco-images", default=None, help="COCO val2017 images for FG-OVD (resolved by file name)")
    add_suite_arguments(parser)


def command(args: argparse.Namespace, params: Params) -> int:
    if args.suite:
        if args.images or args.truth or args.fgovd_dir or args.dataset:
            raise ComponentError(
                "--suite reads its benchmarks from --data-root; drop --dataset, --images, --truth and --fgovd-dir"
            )
        return suite_command(args, params)
    if args.coco_images and not args.fgovd_dir:
        raise ComponentError("--coco-images needs --fgovd-dir")
    manifest = load_manifest(args.dataset) if args.dataset else None
    if manifest is not None and HELDOUT_TRUTH in manifest.sidecars:  # the demo world's labelled held-out split
        args.images, args.truth = manifest.sidecars[HELDOUT_IMAGES], manifest.sidecars[HELDOUT_TRUTH]
    built = manifest is not None and args.truth is None
    if built and not (args.captions and args.regions and args.negatives):
        raise ComponentError(
            "a built dataset is evaluated on its held-out shards: give --captions, --regions, --negatives"
        )
    if built and manifest is not None and not manifest.heldout:
        raise ComponentError(f"dataset {manifest.name} holds no shard out of training: set dataset.heldout_shards")
    if not built and not (args.images and args.truth):
        raise ComponentError("give --dataset, or --images with --truth (or run a benchmark suite with --suite)")
    try:
        embedder = FGCLIPEmbedder(args.model, params.eval.device, params.eval.global_view)
        with tracked_run(
            params.tracking,
            f"eval:{Path(args.out).name}",
            experiment=params.eval.experiment,
            tags={"component": "eval"},
        ) as tracker:
            if built and manifest is not None:
                args.images = manifest.images
            log_run(tracker, args, params, embedder)
            if built and manifest is not None:
                try:
                    metrics, counts = evaluate_built(
                        embedder,
                        params,
                        images=manifest.images,
                        shards=manifest.heldout,
                        captions=args.captions,
                        regions=args.regions,
                        negatives=args.negatives,
                        progress=not args.no_progress,
                    )
                except (ValueError, FileNotFoundError) as error:
                    raise EvalError(str(error)) from error
                if args.fgovd_dir:  # the benchmark files: the external measure beside the built held-out
                    metrics, counts = with_benchmark(embedder, params, args, metrics, counts)
            else:
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
