"""Urban-1k: long-caption retrieval on Long-CLIP's 1000 urban scenes.

Reads the release's two folders, ``Urban1k/image/<name>.jpg`` and
``Urban1k/caption/<name>.txt``, pairing an image with the caption file of the same stem;
the caption is the file's first line (as Long-CLIP reads it). An image without a caption
or a caption without an image is a counted reject.
"""

from __future__ import annotations

from pathlib import Path

from fgclip.core.shards import IMAGE_EXTS
from fgclip.eval.benchmarks.base import (
    Benchmark,
    CaptionedImage,
    ImageFolder,
    RejectLog,
    assemble_retrieval,
    require_folder,
)
from fgclip.eval.benchmarks.config import Urban1kSettings

NAME = "urban1k"


def load(settings: Urban1kSettings, data_root: Path, allow_missing_images: bool) -> Benchmark:
    root = require_folder(data_root / settings.folder, NAME, "Urban-1k folder")
    image_dir = require_folder(root / "image", NAME, "image folder")
    caption_dir = require_folder(root / "caption", NAME, "caption folder")
    suffixes = {f".{ext}" for ext in IMAGE_EXTS}
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in suffixes and p.is_file()}
    rejects = RejectLog(NAME)
    records: list[CaptionedImage] = []
    captions = sorted(p for p in caption_dir.iterdir() if p.suffix == ".txt" and p.is_file())
    for path in captions:
        text = path.read_text(encoding="utf-8", errors="replace")
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        if not first:
            rejects.add("caption", path.name, "bad_text", "empty caption file")
            continue
        image = images.get(path.stem)
        records.append(CaptionedImage("caption", path.name, (image.name if image else f"{path.stem}.jpg",), (first,)))
    paired = {path.stem for path in captions}
    for stem, image in images.items():
        if stem not in paired:
            rejects.add("image", image.name, "no_caption", f"no caption/{stem}.txt")
    folder = ImageFolder(image_dir, NAME)
    data = assemble_retrieval(NAME, records, folder, rejects, allow_missing_images, settings.text_prefix)
    rejects.summary()
    files = {"images": str(image_dir), "captions": str(caption_dir)}
    return Benchmark(NAME, "retrieval", data, files, rejects.items, {"caption_files": len(captions)})
