"""Benchmark name -> its reader: ``reader(settings, data_root, allow_missing_images) -> Benchmark``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fgclip.eval.benchmarks import coco_instances, dci, docci, fgovd, imagenet, karpathy, lvis, sharegpt4v, urban1k
from fgclip.eval.benchmarks.base import Benchmark

Reader = Callable[[Any, Path, bool], Benchmark]

READERS: dict[str, Reader] = {
    "fgovd": fgovd.load,
    "coco_boxes": coco_instances.load,
    "lvis_boxes": lvis.load,
    "sharegpt4v_1k": sharegpt4v.load,
    "dci": dci.load,
    "docci": docci.load,
    "urban1k": urban1k.load,
    "coco_5k": karpathy.load_coco,
    "flickr30k_1k": karpathy.load_flickr,
    "imagenet_1k": imagenet.load,
}
