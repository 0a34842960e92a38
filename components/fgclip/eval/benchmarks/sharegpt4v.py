"""ShareGPT4V-1k: long-caption retrieval on the first 1000 records of ShareGPT4V's
ShareCaptioner file (the protocol of Long-CLIP and FG-CLIP).

Reads ``share-captioner_coco_lcs_sam_1246k_1107.json``: a JSON list of records
``{"id", "image": "coco/train2017/000000000009.jpg", "conversations": [{"from": "human",
"value": "<image>\\n..."}, {"from": "gpt", "value": "<long caption>"}]}``. The caption is
the first ``gpt`` turn. Images resolve under the ShareGPT4V data folder by the path as
written (``coco/train2017/...``, ``sam/images/...``, ``llava/llava_pretrain/images/...``),
else by file name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fgclip.eval.benchmarks.base import (
    BadBenchmarkFile,
    BadRecord,
    Benchmark,
    CaptionedImage,
    ImageFolder,
    RejectLog,
    assemble_retrieval,
    read_json,
    require_file,
)
from fgclip.eval.benchmarks.config import ShareGPT4VSettings

NAME = "sharegpt4v_1k"


def caption_of(record: Any) -> tuple[str, str]:
    """(image reference, long caption) of one record; BadRecord when it has neither."""
    if not isinstance(record, dict):
        raise BadRecord("bad_record", f"expected a JSON object, got {type(record).__name__}")
    image = record.get("image")
    if not isinstance(image, str) or not image.strip():
        raise BadRecord("bad_image_path", f"image must be a file path, got {image!r}")
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise BadRecord("bad_conversations", "conversations must be a list of turns")
    for turn in turns:
        if isinstance(turn, dict) and turn.get("from") == "gpt":
            value = turn.get("value")
            if isinstance(value, str) and value.strip():
                return image.strip(), value.strip()
            raise BadRecord("bad_text", f"the gpt turn holds no caption: {value!r}")
    raise BadRecord("no_caption", "no 'gpt' turn in conversations")


def load(settings: ShareGPT4VSettings, data_root: Path, allow_missing_images: bool) -> Benchmark:
    path = require_file(data_root / settings.annotations, NAME, "ShareCaptioner file")
    records = read_json(path, NAME)
    if not isinstance(records, list):
        raise BadBenchmarkFile(f"{NAME}: {path} must hold a JSON list of records")
    rejects = RejectLog(NAME)
    chosen: list[CaptionedImage] = []
    for index, record in enumerate(records[: settings.first]):
        try:
            image, caption = caption_of(record)
        except BadRecord as bad:
            rejects.add(path.name, f"record{index}", bad.reason, bad.detail)
            continue
        chosen.append(CaptionedImage(path.name, f"record{index}", (image,), (caption,)))
    folder = ImageFolder(data_root / settings.images, NAME)
    data = assemble_retrieval(NAME, chosen, folder, rejects, allow_missing_images, settings.text_prefix)
    rejects.summary()
    counts = {"records_in_file": len(records), "records_read": min(len(records), settings.first)}
    return Benchmark(
        NAME, "retrieval", data, {"annotations": str(path), "images": str(folder.root)}, rejects.items, counts
    )
