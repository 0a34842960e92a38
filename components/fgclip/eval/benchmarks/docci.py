"""DOCCI: long-caption retrieval on the test split of Google's DOCCI.

Reads ``docci_descriptions.jsonlines``: one JSON object per line, ``{"example_id",
"split": "train" | "test" | "qual_dev" | "qual_test", "image_file": "test_00000.jpg",
"description": "<long description>"}``, and the images unpacked from ``docci_images.tar.gz``
(``images/<image_file>``). The test split has 5000 images, one description each.
"""

from __future__ import annotations

import json
from pathlib import Path

from fgclip.eval.benchmarks.base import (
    BadRecord,
    Benchmark,
    CaptionedImage,
    ImageFolder,
    RejectLog,
    assemble_retrieval,
    require_file,
    text_field,
)
from fgclip.eval.benchmarks.config import DOCCISettings

NAME = "docci"


def load(settings: DOCCISettings, data_root: Path, allow_missing_images: bool) -> Benchmark:
    path = require_file(data_root / settings.descriptions, NAME, "descriptions file")
    rejects = RejectLog(NAME)
    records: list[CaptionedImage] = []
    lines = other_splits = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            lines += 1
            key = f"line{number}"
            try:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise BadRecord("bad_json", f"not valid JSON: {error}") from error
                if not isinstance(record, dict):
                    raise BadRecord("bad_record", f"expected a JSON object, got {type(record).__name__}")
                if record.get("split") != settings.split:
                    other_splits += 1
                    continue
                image, description = text_field(record, "image_file"), text_field(record, "description")
            except BadRecord as bad:
                rejects.add(path.name, key, bad.reason, bad.detail)
                continue
            records.append(CaptionedImage(path.name, str(record.get("example_id", key)), (image,), (description,)))
    folder = ImageFolder(data_root / settings.images, NAME)
    data = assemble_retrieval(NAME, records, folder, rejects, allow_missing_images, settings.text_prefix)
    rejects.summary()
    counts = {"lines": lines, "lines_other_splits": other_splits}
    return Benchmark(
        NAME, "retrieval", data, {"descriptions": str(path), "images": str(folder.root)}, rejects.items, counts
    )
