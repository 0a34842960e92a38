"""The pure core of `fgclip eval`: every task's metrics and counts for one embedder
(writes nothing)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgclip.eval import fgovd
from fgclip.eval.embedding import Embedder
from fgclip.eval.heldout import load_heldout
from fgclip.eval.tasks import evaluate_fgovd, evaluate_world

if TYPE_CHECKING:
    from fgclip.config import Params

log = logging.getLogger(__name__)


class EvalError(Exception):
    """Bad input the user can fix (a missing folder, a model that does not load)."""


def load_fgovd_images(
    fgovd_dir: str | Path, coco_images: str | Path | None, params: Params
) -> tuple[dict[str, fgovd.FGOVDSplit], dict[str, Path], dict[str, int]]:
    """The benchmark splits, their resolved images and the counts of both."""
    try:
        splits = fgovd.load_fgovd(fgovd_dir, params.eval.fgovd_difficulties)
    except (FileNotFoundError, ValueError) as error:
        raise EvalError(str(error)) from error
    counts = {f"fgovd_{name}_rejected": len(split.rejects) for name, split in splits.items()}
    if coco_images is None:
        log.warning("FG-OVD: no --coco-images; the files were read and checked but are not scored")
        return splits, {}, counts
    items = [item for split in splits.values() for item in split.items]
    try:
        resolution = fgovd.resolve_images(items, coco_images)
    except FileNotFoundError as error:
        raise EvalError(str(error)) from error
    counts.update(fgovd_images_referenced=resolution.referenced, fgovd_images_missing=len(resolution.missing))
    if resolution.missing and (not params.eval.fgovd_allow_missing_images or not resolution.found):
        hint = "" if resolution.found else " (none at all: is this the COCO val2017 folder?)"
        raise EvalError(
            f"FG-OVD: {resolution.message()}{hint}; set eval.fgovd_allow_missing_images=true to score the rest"
        )
    if resolution.missing:
        log.warning("FG-OVD: %s; scoring the rest", resolution.message())
    return splits, resolution.found, counts


def evaluate(
    embedder: Embedder,
    params: Params,
    *,
    images: str | Path,
    truth: str | Path,
    fgovd_dir: str | Path | None = None,
    coco_images: str | Path | None = None,
    progress: bool = False,
) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, counts) of every task; the pure core of `fgclip eval` (writes nothing)."""
    try:
        world = load_heldout(images, truth)
    except FileNotFoundError as error:
        raise EvalError(str(error)) from error
    if not world.samples:
        raise EvalError(f"no usable held-out samples in {images} (rejected: {world.reject_counts()})")
    metrics, counts = evaluate_world(world, embedder, params, progress)
    report: dict[str, Any] = {**counts, "heldout_rejected": world.reject_counts()}
    if fgovd_dir is not None:
        splits, image_paths, fgovd_counts = load_fgovd_images(fgovd_dir, coco_images, params)
        report.update(fgovd_counts)
        if image_paths:
            more_metrics, more_counts = evaluate_fgovd(splits, image_paths, embedder, params, progress)
            metrics.update(more_metrics)
            report.update(more_counts)
    return dict(sorted(metrics.items())), report
