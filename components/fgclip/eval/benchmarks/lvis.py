"""Box classification on LVIS v1 val: every ground-truth box of ``lvis_v1_val.json``
classified among the 1203 category names (prompt-template ensemble), top-1 and top-5.

LVIS v1 uses COCO's detection format with its own fields: images carry ``coco_url``
(``http://images.cocodataset.org/val2017/000000397133.jpg``; LVIS v1 val draws on COCO
2017 train *and* val images) instead of ``file_name``; categories carry ``synonyms``,
``synset``, ``def``, ``frequency`` (r/c/f) and names with underscores (``aerosol_can``),
written with spaces in the prompts. Images resolve under the COCO 2017 folder as
``<split>/<file>`` from the URL, else by file name.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from fgclip.eval.benchmarks.base import BadRecord, Benchmark
from fgclip.eval.benchmarks.coco_instances import read_detection_json
from fgclip.eval.benchmarks.config import BoxClassificationSettings

NAME = "lvis_boxes"


def lvis_references(image: dict[str, Any]) -> tuple[str, ...]:
    url = image.get("coco_url")
    if not isinstance(url, str) or not url:
        name = image.get("file_name")  # LVIS v0.5 wrote file names
        if isinstance(name, str) and name:
            return (name,)
        raise BadRecord("bad_image_path", f"coco_url must be the image's COCO URL, got {url!r}")
    parts = PurePosixPath(urlparse(url).path).parts
    if len(parts) < 2:
        raise BadRecord("bad_image_path", f"coco_url {url!r} names no file")
    return (f"{parts[-2]}/{parts[-1]}", parts[-1])


def load(settings: BoxClassificationSettings, data_root: Path, allow_missing_images: bool) -> Benchmark:
    return read_detection_json(NAME, settings, data_root, allow_missing_images, lvis_references, True)
