"""DCI (Densely Captioned Images): long-caption retrieval over the release's images.

Reads the release as ``dci.tar.gz`` unpacks it: ``densely_captioned_images/splits.json``
(``{split: [annotation file names]}``), ``annotations/<name>.json`` (one record per image:
``image``, ``short_caption``, ``extra_caption``, ``mask_data``, ...) and ``photos/<image>``
(the SA-1B images, from SA-1B's ``sa_000138.tar``). The caption is the release's extended
caption, ``short_caption`` + newline + ``extra_caption``; every split by default (7805
images), as in the long-retrieval protocol of LoTLIP and FG-CLIP.
"""

from __future__ import annotations

from pathlib import Path

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
    require_folder,
    text_field,
)
from fgclip.eval.benchmarks.config import DCISettings

NAME = "dci"


def extended_caption(record: object) -> tuple[str, str]:
    """(image file, short caption + newline + extra caption) of one annotation."""
    if not isinstance(record, dict):
        raise BadRecord("bad_record", f"expected a JSON object, got {type(record).__name__}")
    image = text_field(record, "image")
    short = text_field(record, "short_caption")
    extra = record.get("extra_caption")
    if extra is not None and not isinstance(extra, str):
        raise BadRecord("bad_text", f"extra_caption must be a string, got {extra!r}")
    return image, f"{short}\n{extra.strip()}" if extra and extra.strip() else short


def load(settings: DCISettings, data_root: Path, allow_missing_images: bool) -> Benchmark:
    root = require_folder(data_root / settings.folder, NAME, "DCI folder")
    splits_file = require_file(root / "splits.json", NAME, "split list")
    annotations = require_folder(root / "annotations", NAME, "annotation folder")
    splits = read_json(splits_file, NAME)
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise BadBenchmarkFile(f"{NAME}: {splits_file} must map split names to lists of annotation files")
    wanted = list(settings.splits) or list(splits)
    unknown = [name for name in wanted if name not in splits]
    if unknown:
        raise BadBenchmarkFile(f"{NAME}: splits {unknown} are not in {splits_file} (it has {list(splits)})")
    rejects = RejectLog(NAME)
    records: list[CaptionedImage] = []
    for split in wanted:
        for entry in splits[split]:
            key = str(entry)
            path = annotations / key
            try:
                if not isinstance(entry, str) or not path.is_file():
                    raise BadRecord("annotation_missing", f"{path} does not exist")
                try:
                    image, caption = extended_caption(read_json(path, NAME))
                except BadBenchmarkFile as error:
                    raise BadRecord("bad_json", str(error)) from error
            except BadRecord as bad:
                rejects.add(splits_file.name, key, bad.reason, bad.detail)
                continue
            records.append(CaptionedImage(key, key, (image,), (caption,)))
    folder = ImageFolder(root / "photos", NAME)
    data = assemble_retrieval(NAME, records, folder, rejects, allow_missing_images, settings.text_prefix)
    rejects.summary()
    files = {"splits": str(splits_file), "annotations": str(annotations), "images": str(folder.root)}
    counts = {"annotations_listed": sum(len(splits[s]) for s in wanted)}
    return Benchmark(NAME, "retrieval", data, files, rejects.items, counts, {"splits": wanted})
