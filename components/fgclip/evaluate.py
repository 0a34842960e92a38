"""eval: score an FG-CLIP checkpoint on the held-out demo world (and FG-OVD when given).

    fgclip eval --model models/stage2/final --images data/demo/heldout/images \\
        --truth data/demo/heldout/truth --out reports/eval/stage2 \\
        [--fgovd-dir DIR --coco-images DIR]

Writes ``OUT/metrics.json`` (flat, every value in [0, 1], names without '@':
fgovd_demo_top1, box_cls_top1, long_i2t_r1, ...), ``OUT/counts.json`` (what was scored
and what was rejected) and ``OUT/metrics.png`` (a bar chart), and logs params, metrics,
artifacts and the input data digests to MLflow (experiment ``eval.experiment``).

The model is reached only through :class:`FGCLIPEmbedder`, the one adapter that knows
the FG-CLIP API; the task code (``fgclip.eval_tasks``) takes any ``Embedder``.
Region features come from the image resized whole to the model's input size (no centre
crop), so normalised boxes stay valid and no object is cut off, as in FG-CLIP's own
FG-OVD protocol; global features by default from the processor's resize + centre crop,
as in training and CLIP's retrieval and zero-shot protocols (``eval.global_view``).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fgclip import eval_tasks, fgovd
from fgclip.config import Params
from fgclip.devices import resolve_device
from fgclip.storage import local_path, write_text_atomic
from fgclip.tracking import Tracker, dataset_digest, tracked_run

log = logging.getLogger(__name__)

HELP = "evaluate a model: demo FG-OVD, box classification, long/short retrieval, zero-shot (and FG-OVD)"
METRICS_FILE = "metrics.json"
COUNTS_FILE = "counts.json"
PLOT_FILE = "metrics.png"


class EvalError(Exception):
    """Bad input the user can fix (a missing folder, a model that does not load)."""


# ---------------------------------------------------------------- the model adapter

class FGCLIPEmbedder:
    """FG-CLIP behind the ``eval_tasks.Embedder`` protocol.

    Loads ``FGCLIPModel.from_pretrained(dir)`` and the tokenizer and image processor
    saved beside it. Long captions use the long position table and projection
    (``long_text_max_position_embeddings`` tokens, 248 for CLIP); everything else the
    short ones (``max_position_embeddings``, 77). Regions come from the dense feature
    map via RoIAlign (``fgclip.model.region_features``).
    """

    def __init__(self, model_dir: str | Path, device: str = "auto", global_view: str = "processor") -> None:
        from transformers import AutoTokenizer, CLIPImageProcessor

        from fgclip.model import FGCLIPModel

        self.model_dir = local_path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise EvalError(f"{self.model_dir} is not a saved model (no config.json)")
        self.device = resolve_device(device)
        self.global_view = global_view
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            self.processor = CLIPImageProcessor.from_pretrained(self.model_dir)
            self.model = FGCLIPModel.from_pretrained(self.model_dir).to(self.device).eval()
        except (OSError, ValueError) as error:
            raise EvalError(f"cannot load the model, tokenizer and image processor from {self.model_dir}: {error}") from error
        config = self.model.config
        self.image_size = config.vision_config.image_size
        self.short_length = config.text_config.max_position_embeddings
        self.long_length = config.long_text_max_position_embeddings

    def identity(self) -> dict[str, Any]:
        return {"model_dir": str(self.model_dir), "device": str(self.device), "image_size": self.image_size,
                "global_view": self.global_view,
                "short_length": self.short_length, "long_length": self.long_length,
                "projection_dim": self.model.config.projection_dim}

    def _pixels(self, images: Sequence[Image.Image], whole: bool) -> Any:
        """whole=True: each image resized whole to the model's square input (what regions
        need: normalised boxes stay valid and nothing is cut off; FG-CLIP's own FG-OVD
        protocol). Resized here, not by the processor, so the PIL and torchvision
        processor backends agree. whole=False: the processor's own resize and centre
        crop (what training and CLIP's zero-shot and retrieval protocols use)."""
        pictures = [image.convert("RGB") for image in images]
        if not whole:
            return self.processor(images=pictures, return_tensors="pt")["pixel_values"]
        resample = Image.Resampling(int(getattr(self.processor, "resample", Image.Resampling.BICUBIC)))
        resized = [picture.resize((self.image_size, self.image_size), resample) for picture in pictures]
        return self.processor(images=resized, do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"]

    def encode_images(self, images: Sequence[Image.Image], boxes: Sequence[np.ndarray],
                      with_global: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
        import torch

        from fgclip.model import region_features

        counts = [len(b) for b in boxes]
        with torch.no_grad():
            global_features = dense = None
            if with_global and self.global_view == "whole":  # one pass serves both
                whole = self._pixels(images, whole=True).to(self.device, dtype=self.model.dtype)
                global_features, dense = self.model.get_image_and_dense_features(whole, with_dense=sum(counts) > 0)
            elif sum(counts):
                whole = self._pixels(images, whole=True).to(self.device, dtype=self.model.dtype)
                dense = self.model.get_dense_features(whole)
            if with_global and global_features is None:
                processed = self._pixels(images, whole=False).to(self.device, dtype=self.model.dtype)
                global_features = self.model.get_image_features(processed)
            regions = np.zeros((0, self.model.config.projection_dim), dtype=np.float32)
            if sum(counts):
                flat = torch.as_tensor(np.concatenate([np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes]),
                                       device=self.device)
                index = torch.repeat_interleave(torch.arange(len(counts), device=self.device),
                                                torch.as_tensor(counts, device=self.device))
                regions = region_features(dense, flat, index).float().cpu().numpy()
        globals_ = (global_features.float().cpu().numpy() if global_features is not None
                    else np.zeros((len(images), 0), dtype=np.float32))
        return globals_, np.split(regions, np.cumsum(counts)[:-1])

    def encode_texts(self, texts: Sequence[str], long: bool) -> np.ndarray:
        import torch

        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt",
                                max_length=self.long_length if long else self.short_length)
        with torch.no_grad():
            features = self.model.get_text_features(tokens["input_ids"].to(self.device),
                                                    tokens["attention_mask"].to(self.device), long=long)
        return features.float().cpu().numpy()


# ---------------------------------------------------------------- the evaluation

def load_fgovd_images(fgovd_dir: str | Path, coco_images: str | Path | None,
                      params: Params) -> tuple[dict[str, fgovd.FGOVDSplit], dict[str, Path], dict[str, int]]:
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
        raise EvalError(f"FG-OVD: {resolution.message()}{hint}; set eval.fgovd_allow_missing_images=true to score the rest")
    if resolution.missing:
        log.warning("FG-OVD: %s; scoring the rest", resolution.message())
    return splits, resolution.found, counts


def evaluate(embedder: eval_tasks.Embedder, params: Params, *, images: str | Path, truth: str | Path,
             fgovd_dir: str | Path | None = None, coco_images: str | Path | None = None,
             progress: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics, counts) of every task; the pure core of `fgclip eval` (writes nothing)."""
    try:
        world = eval_tasks.load_heldout(images, truth)
    except FileNotFoundError as error:
        raise EvalError(str(error)) from error
    if not world.samples:
        raise EvalError(f"no usable held-out samples in {images} (rejected: {world.reject_counts()})")
    metrics, counts = eval_tasks.evaluate_world(world, embedder, params, progress)
    report: dict[str, Any] = {**counts, "heldout_rejected": world.reject_counts()}
    if fgovd_dir is not None:
        splits, image_paths, fgovd_counts = load_fgovd_images(fgovd_dir, coco_images, params)
        report.update(fgovd_counts)
        if image_paths:
            more_metrics, more_counts = eval_tasks.evaluate_fgovd(splits, image_paths, embedder, params, progress)
            metrics.update(more_metrics)
            report.update(more_counts)
    return dict(sorted(metrics.items())), report


def plot_metrics(metrics: dict[str, float], path: str | Path, title: str, dpi: int) -> None:
    """A horizontal bar chart of the metrics (all in [0, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = sorted(metrics, key=eval_tasks.metric_order)
    figure, axes = plt.subplots(figsize=(7, 0.3 * len(names) + 1.2))
    try:
        bars = axes.barh(names, [metrics[n] for n in names], color="#3b7dd8")
        axes.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
        axes.set_xlim(0, 1.1)
        axes.invert_yaxis()
        axes.set_title(title)
        axes.tick_params(axis="y", labelsize=8)
        figure.tight_layout()
        target = local_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target, dpi=dpi)
    finally:
        plt.close(figure)


def write_outputs(out: str | Path, metrics: dict[str, float], counts: dict[str, Any], title: str, dpi: int) -> Path:
    folder = local_path(out)
    write_text_atomic(folder / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    write_text_atomic(folder / COUNTS_FILE, json.dumps(counts, indent=2, sort_keys=True) + "\n")
    plot_metrics(metrics, folder / PLOT_FILE, title, dpi)
    return folder


def log_run(tracker: Tracker, args: argparse.Namespace, params: Params, embedder: eval_tasks.Embedder) -> None:
    tracker.log_params({"model": args.model, "images": args.images, "truth": args.truth,
                        "fgovd_dir": args.fgovd_dir, "coco_images": args.coco_images, "eval": params.eval.model_dump(mode="json"),
                        "embedder": embedder.identity()})
    tracker.log_dataset(args.images, "heldout_images")
    tracker.log_dataset(args.truth, "heldout_truth")
    if args.fgovd_dir:
        tracker.log_dataset(args.fgovd_dir, "fgovd")
    digest, origin = dataset_digest(args.model)
    tracker.set_tags({"model.digest": digest, "model.digest_origin": origin, "model.dir": str(args.model)})


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="FG-CLIP checkpoint folder (model, tokenizer, image processor)")
    parser.add_argument("--images", required=True, help="held-out image shards (NNNNN.tar)")
    parser.add_argument("--truth", required=True, help="held-out truth sidecars (NNNNN.jsonl): the labelled test set")
    parser.add_argument("--out", required=True, help="report folder: metrics.json, counts.json, metrics.png")
    parser.add_argument("--fgovd-dir", default=None, help="FG-OVD benchmark folder (*_llava.jsonl)")
    parser.add_argument("--coco-images", default=None, help="COCO val2017 images for FG-OVD (resolved by file name)")


def command(args: argparse.Namespace, params: Params) -> int:
    from fgclip.cli import ComponentError

    if args.coco_images and not args.fgovd_dir:
        raise ComponentError("--coco-images needs --fgovd-dir")
    try:
        embedder = FGCLIPEmbedder(args.model, params.eval.device, params.eval.global_view)
        with tracked_run(params.tracking, f"eval:{Path(args.out).name}", experiment=params.eval.experiment,
                         tags={"component": "eval"}) as tracker:
            log_run(tracker, args, params, embedder)
            metrics, counts = evaluate(embedder, params, images=args.images, truth=args.truth, fgovd_dir=args.fgovd_dir,
                                       coco_images=args.coco_images, progress=not args.no_progress)
            folder = write_outputs(args.out, metrics, counts, f"{args.model}", params.eval.plot_dpi)
            tracker.log_metrics(metrics)
            tracker.log_metrics({f"count.{k}": v for k, v in counts.items()})
            tracker.log_artifact(folder, "eval")
    except EvalError as error:
        raise ComponentError(str(error)) from error
    print(json.dumps(metrics))
    return 0
