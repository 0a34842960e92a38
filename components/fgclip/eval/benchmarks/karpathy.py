"""COCO 5k and Flickr30k 1k: short-caption retrieval on the Karpathy test splits.

Reads Karpathy's split files (``dataset_coco.json``, ``dataset_flickr30k.json`` from
``caption_datasets.zip``): ``{"dataset": "coco", "images": [{"filepath": "val2014",
"filename": "COCO_val2014_000000391895.jpg", "split": "test", "cocoid": 391895,
"sentences": [{"raw": "A man ...", "tokens": [...], "sentid": ...}, ...]}, ...]}``
(Flickr30k records have no ``filepath`` or ``cocoid``). The test split is 5000 COCO or
1000 Flickr30k images; each keeps its first ``captions_per_image`` raw sentences (5).

COCO images resolve as ``<images>/<filepath>/<filename>`` (val2014 naming), else by the
2017 name ``<cocoid:012d>.jpg`` (the same pictures, renamed), so one COCO 2017 download
serves box classification, FG-OVD and this split, and its embeddings are shared.
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
    text_field,
)
from fgclip.eval.benchmarks.config import KarpathySettings


def references(record: dict[str, Any]) -> tuple[str, ...]:
    """Where the image may be: filepath/filename, filename, and COCO's 2017 name."""
    filename = text_field(record, "filename")
    found = [f"{record['filepath']}/{filename}"] if isinstance(record.get("filepath"), str) else []
    found.append(filename)
    cocoid = record.get("cocoid")
    if isinstance(cocoid, int) and not isinstance(cocoid, bool):
        found.append(f"{cocoid:012d}.jpg")
    return tuple(found)


def captions(record: dict[str, Any], count: int) -> tuple[str, ...]:
    sentences = record.get("sentences")
    if not isinstance(sentences, list):
        raise BadRecord("bad_sentences", "sentences must be a list")
    raw = [s["raw"].strip() for s in sentences if isinstance(s, dict) and isinstance(s.get("raw"), str)]
    raw = [text for text in raw if text]
    if not raw:
        raise BadRecord("no_caption", "no sentence with a non-empty 'raw' text")
    return tuple(raw[:count])


def load_split(name: str, settings: KarpathySettings, data_root: Path, allow_missing_images: bool) -> Benchmark:
    path = require_file(data_root / settings.split_file, name, "Karpathy split file")
    content = read_json(path, name)
    images = content.get("images") if isinstance(content, dict) else None
    if not isinstance(images, list):
        raise BadBenchmarkFile(f"{name}: {path} must hold {{'images': [...]}} (Karpathy's split format)")
    rejects = RejectLog(name)
    records: list[CaptionedImage] = []
    short_sets = 0
    for index, record in enumerate(images):
        if not isinstance(record, dict) or record.get("split") != settings.split:
            continue
        key = str(record.get("imgid", index))
        try:
            refs, texts = references(record), captions(record, settings.captions_per_image)
        except BadRecord as bad:
            rejects.add(path.name, key, bad.reason, bad.detail)
            continue
        short_sets += len(texts) < settings.captions_per_image
        records.append(CaptionedImage(path.name, key, refs, texts))
    folder = ImageFolder(data_root / settings.images, name)
    data = assemble_retrieval(name, records, folder, rejects, allow_missing_images, settings.text_prefix)
    rejects.summary()
    counts = {"records_in_file": len(images), "images_with_fewer_captions": short_sets}
    files = {"split_file": str(path), "images": str(folder.root)}
    return Benchmark(name, "retrieval", data, files, rejects.items, counts, {"split": settings.split})


def load_coco(settings: KarpathySettings, data_root: Path, allow_missing_images: bool) -> Benchmark:
    return load_split("coco_5k", settings, data_root, allow_missing_images)


def load_flickr(settings: KarpathySettings, data_root: Path, allow_missing_images: bool) -> Benchmark:
    return load_split("flickr30k_1k", settings, data_root, allow_missing_images)
