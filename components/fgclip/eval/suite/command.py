"""`fgclip eval --suite paper`: the paper's benchmarks for one checkpoint.

    fgclip eval --suite paper --model models/stage2/final --data-root data/benchmarks \\
        --out reports/benchmarks/stage2 [--benchmarks fgovd,coco_boxes] [--skip-missing] \\
        [--mlflow-run-id RUN]

Writes the files of ``fgclip.eval.suite.results`` and logs the pinned settings, every
metric, the counts, images/s and the report folder to MLflow: in a new run of the
``benchmarks.experiment`` experiment tagged with the model's digest, or, with
``--mlflow-run-id``, in the model's own run (e.g. the training run that produced it).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fgclip.core.tracking import Tracker, dataset_digest, tracked_run
from fgclip.errors import ComponentError
from fgclip.eval.benchmarks.base import BadBenchmarkFile, BenchmarkMissing
from fgclip.eval.benchmarks.config import PAPER_BENCHMARKS
from fgclip.eval.suite.results import TABLE_FILE, write_suite
from fgclip.eval.suite.run import SuiteError, SuiteResult, run_suite
from fgclip.model.embedder import FGCLIPEmbedder, ModelFolderError

if TYPE_CHECKING:
    from fgclip.config import Params

SUITES = {"paper": PAPER_BENCHMARKS}


def add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--suite", choices=sorted(SUITES), default=None, help="run a benchmark suite instead of the demo tasks"
    )
    parser.add_argument("--data-root", default=None, help="benchmark data folder (default: benchmarks.data_root)")
    parser.add_argument("--benchmarks", default=None, help="comma-separated subset of the suite, e.g. fgovd,coco_boxes")
    parser.add_argument(
        "--skip-missing", action="store_true", help="skip a benchmark whose files are missing, with a warning"
    )
    parser.add_argument("--model-name", default=None, help="the model's name in the table (default: its folder name)")
    parser.add_argument(
        "--mlflow-run-id", default=None, help="log into this existing MLflow run (e.g. the model's training run)"
    )


def chosen_benchmarks(args: argparse.Namespace, params: Params) -> list[str]:
    suite = [name for name in SUITES[args.suite] if name in params.benchmarks.suite]
    if not args.benchmarks:
        return suite
    wanted = [name.strip() for name in args.benchmarks.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in SUITES[args.suite]]
    if unknown:
        raise ComponentError(f"--benchmarks: unknown {unknown}; the {args.suite} suite has {list(SUITES[args.suite])}")
    return wanted


def log_suite(
    tracker: Tracker, result: SuiteResult, args: argparse.Namespace, params: Params, names: list[str]
) -> None:
    config = params.benchmarks
    tracker.log_params(
        {
            "suite": args.suite,
            "suite_model": args.model,
            "data_root": args.data_root or config.data_root,
            "benchmarks": ",".join(names),
            "suite_embedder": result.model,
            **{f"protocol.{name}": config.settings(name).model_dump(mode="json") for name in names},
        }
    )
    tracker.log_metrics(result.metrics())
    tracker.log_metrics({f"count.{r.name}": r.counts for r in result.results})
    tracker.log_metrics({f"suite.{key}": value for key, value in result.throughput.items()})
    digest, origin = dataset_digest(args.model)
    tracker.set_tags(
        {
            "model.digest": digest,
            "model.digest_origin": origin,
            "model.dir": str(args.model),
            "suite.skipped": ",".join(r.name for r in result.results if r.status != "scored") or "-",
        }
    )


def suite_command(args: argparse.Namespace, params: Params) -> int:
    names = chosen_benchmarks(args, params)
    config = params.benchmarks
    try:
        embedder = FGCLIPEmbedder(args.model, params.eval.device)
        with tracked_run(
            params.tracking,
            f"eval-suite:{Path(args.out).name}",
            experiment=config.experiment,
            tags={"component": "eval", "suite": args.suite},
            run_id=args.mlflow_run_id,
        ) as tracker:
            result = run_suite(
                embedder,
                config,
                names=names,
                data_root=args.data_root,
                skip_missing=args.skip_missing or None,
                progress=not args.no_progress,
            )
            folder = write_suite(args.out, result, args.model_name or Path(args.model).name, config.plot_dpi)
            log_suite(tracker, result, args, params, names)
            tracker.log_artifact(folder, "benchmarks")
    except (SuiteError, BenchmarkMissing, BadBenchmarkFile, ModelFolderError) as error:
        raise ComponentError(str(error)) from error
    print((folder / TABLE_FILE).read_text(encoding="utf-8"))
    throughput = result.throughput
    print(
        f"{int(throughput['images'])} images decoded once, {int(throughput['regions'])} regions, "
        f"{throughput['images_per_second']:.1f} images/s; report: {folder}"
    )
    return 0
