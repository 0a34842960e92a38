"""Box classification on COCO val2017: every ground-truth box of ``instances_val2017.json``
is classified among the 80 category names (prompt-template ensemble), top-1 and top-5.

Reads COCO's instances format: ``{"images": [{"id", "file_name", "width", "height"}],
"annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h], "iscrowd"}],
"categories": [{"id", "name", "supercategory"}]}``. Class index = position of the category
in ascending id order (COCO's ids run 1..90 with gaps). LVIS v1 uses the same format with
extra fields, so ``read_detection_json`` serves both (``fgclip.eval.benchmarks.lvis``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fgclip.eval.benchmarks.base import (
    BadBenchmarkFile,
    BadRecord,
    Benchmark,
    Box,
    BoxSet,
    ImageFolder,
    RejectLog,
    check_images,
    positive_number,
    read_json,
    require_file,
    unit_box_from_xywh,
)
from fgclip.eval.benchmarks.config import BoxClassificationSettings

NAME = "coco_boxes"

#: image record -> where its file may be, most specific first
ImageReferences = Callable[[dict[str, Any]], tuple[str, ...]]


def coco_references(image: dict[str, Any]) -> tuple[str, ...]:
    name = image.get("file_name")
    if not isinstance(name, str) or not name:
        raise BadRecord("bad_image_path", f"file_name must be a file name, got {name!r}")
    return (name,)


def _category_names(content: dict[str, Any], path: Path, name: str, underscores: bool) -> dict[int, str]:
    categories = content.get("categories")
    if not isinstance(categories, list) or not categories:
        raise BadBenchmarkFile(f"{name}: {path} has no 'categories' list")
    names: dict[int, str] = {}
    for category in categories:
        if not isinstance(category, dict) or not isinstance(category.get("id"), int):
            raise BadBenchmarkFile(f"{name}: {path} holds a category without an integer id: {category!r}")
        text = category.get("name")
        if not isinstance(text, str) or not text.strip():
            raise BadBenchmarkFile(f"{name}: category {category['id']} has no name")
        names[category["id"]] = text.replace("_", " ").strip() if underscores else text.strip()
    return dict(sorted(names.items()))


def read_detection_json(
    name: str,
    settings: BoxClassificationSettings,
    data_root: Path,
    allow_missing_images: bool,
    references: ImageReferences,
    underscores_to_spaces: bool,
) -> Benchmark:
    """A COCO-format detection file -> a BoxSet (boxes grouped by image, labels by class index)."""
    path = require_file(data_root / settings.annotations, name, "annotation file")
    content = read_json(path, name)
    if not isinstance(content, dict) or not isinstance(content.get("images"), list):
        raise BadBenchmarkFile(f"{name}: {path} is not a COCO-format detection file (no 'images' list)")
    names = _category_names(content, path, name, underscores_to_spaces)
    class_of = {category: index for index, category in enumerate(names)}
    rejects = RejectLog(name)
    images: dict[int, dict[str, Any]] = {}
    for record in content["images"]:
        key = str(record.get("id")) if isinstance(record, dict) else "?"
        try:
            if not isinstance(record, dict) or not isinstance(record.get("id"), int):
                raise BadRecord("bad_image", f"image record without an integer id: {record!r}"[:200])
            sizes = (positive_number(record.get("width"), "width"), positive_number(record.get("height"), "height"))
            images[record["id"]] = {"refs": references(record), "size": sizes}
        except BadRecord as bad:
            rejects.add(path.name, f"image{key}", bad.reason, bad.detail)
    boxes: dict[int, list[tuple[Box, int]]] = defaultdict(list)
    crowd_skipped = 0
    annotations = content.get("annotations")
    if not isinstance(annotations, list):
        raise BadBenchmarkFile(f"{name}: {path} has no 'annotations' list")
    for record in annotations:
        key = f"ann{record.get('id')}" if isinstance(record, dict) else "ann?"
        try:
            if not isinstance(record, dict):
                raise BadRecord("bad_annotation", "expected a JSON object")
            image = images.get(record.get("image_id"))  # type: ignore[arg-type]
            if image is None:
                raise BadRecord("unknown_image", f"image_id {record.get('image_id')!r} is not a usable image")
            if record.get("category_id") not in class_of:
                raise BadRecord("unknown_category", f"category_id {record.get('category_id')!r} is not listed")
            if record.get("iscrowd") and not settings.include_crowd:
                crowd_skipped += 1
                continue
            box = unit_box_from_xywh(record.get("bbox"), *image["size"])
        except BadRecord as bad:
            rejects.add(path.name, key, bad.reason, bad.detail)
            continue
        boxes[record["image_id"]].append((box, class_of[record["category_id"]]))
    folder = ImageFolder(data_root / settings.images, name)
    kept: list[Path] = []
    missing: list[str] = []
    box_rows: list[np.ndarray] = []
    labels: list[list[int]] = []
    for image_id in sorted(boxes):
        refs = images[image_id]["refs"]
        found = folder.find(*refs)
        if found is None:
            missing.append(refs[0])
            rejects.add(path.name, f"image{image_id}", "image_missing", f"{refs[0]} not under {folder.root}")
            continue
        kept.append(found)
        box_rows.append(np.asarray([box for box, _ in boxes[image_id]], dtype=np.float64).reshape(-1, 4))
        labels.append([label for _, label in boxes[image_id]])
    check_images(name, folder.root, len(boxes), missing, allow_missing_images)
    rejects.summary()
    counts = {
        "images_in_file": len(content["images"]),
        "annotations_in_file": len(annotations),
        "crowd_boxes_skipped": crowd_skipped,
        "classes": len(names),
    }
    data = BoxSet(images=kept, boxes=box_rows, labels=labels, class_names=list(names.values()))
    files = {"annotations": str(path), "images": str(folder.root)}
    return Benchmark(name, "boxes", data, files, rejects.items, counts)


def load(settings: BoxClassificationSettings, data_root: Path, allow_missing_images: bool) -> Benchmark:
    return read_detection_json(NAME, settings, data_root, allow_missing_images, coco_references, False)
