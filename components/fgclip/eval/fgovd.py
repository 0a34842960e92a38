"""Reader for the FG-OVD benchmark in its own jsonl format.

One JSON object per line: ``img_path`` (a COCO val2017 path), ``bbox`` [x, y, w, h] in
pixels, ``pos_expression`` [1 string], ``neg_expression`` [up to 10 strings; a few
lines of the published files carry fewer], ``width``, ``height``, ``test_type``.

Each line becomes an :class:`FGOVDItem` with the box in normalised x1, y1, x2, y2
(clipped to the image). A line that cannot be used is a counted, logged ``Reject``
with a reason code, never a crash. Images are resolved by file name under a local
COCO val2017 folder; the ones that are missing are counted and named in one message.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from fgclip.core.shards import IMAGE_EXTS, Reject
from fgclip.core.storage import local_path

log = logging.getLogger(__name__)

#: Difficulty -> the benchmark's file name (hard: 1 attribute changed, medium: 2,
#: easy: 3, trivial: negatives drawn from other objects' expressions).
FGOVD_FILES: dict[str, str] = {
    "hard": "h_attributes_llava.jsonl",
    "medium": "m_attributes_llava.jsonl",
    "easy": "e_attributes_llava.jsonl",
    "trivial": "shuffle_negatives_llava.jsonl",
}

STAGE = "fgovd"


@dataclass(frozen=True)
class FGOVDItem:
    """One benchmark question: which of 1 + N expressions describes this box?"""

    difficulty: str
    line: int
    image_name: str  # file name, e.g. 000000113867.jpg (how images are resolved)
    img_path: str  # as written in the benchmark, e.g. val2017/000000113867.jpg
    box: tuple[float, float, float, float]  # normalised x1, y1, x2, y2
    positive: str
    negatives: tuple[str, ...]
    width: int
    height: int
    test_type: str

    @property
    def candidates(self) -> tuple[str, ...]:
        """Positive first: the target index is always 0."""
        return (self.positive, *self.negatives)


@dataclass
class FGOVDSplit:
    """The usable items of one difficulty file and what was rejected."""

    difficulty: str
    path: Path
    lines: int = 0
    items: list[FGOVDItem] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    clipped_boxes: int = 0  # boxes that reached past the image and were clipped

    def reject_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self.rejects).items()))


class _BadLine(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _positive_number(record: dict[str, Any], name: str) -> float:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise _BadLine("bad_image_size", f"{name} must be a positive number, got {value!r}")
    return float(value)


def _expressions(record: dict[str, Any], name: str) -> list[str]:
    value = record.get(name)
    if not isinstance(value, list) or not value:
        raise _BadLine("bad_expression", f"{name} must be a non-empty list of strings, got {value!r}")
    texts = []
    for text in value:
        if not isinstance(text, str) or not text.strip():
            raise _BadLine("bad_expression", f"{name} holds an empty or non-string entry {text!r}")
        texts.append(text.strip())
    return texts


def normalised_xyxy(bbox: Any, width: float, height: float) -> tuple[tuple[float, float, float, float], bool]:
    """[x, y, w, h] in pixels -> (normalised x1, y1, x2, y2 clipped to [0, 1], was_clipped)."""
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise _BadLine("bad_bbox", f"bbox must be [x, y, w, h], got {bbox!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in bbox):
        raise _BadLine("bad_bbox", f"bbox holds a non-finite or non-numeric value: {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise _BadLine("bad_bbox", f"bbox has non-positive width or height: {bbox!r}")
    raw = (x / width, y / height, (x + w) / width, (y + h) / height)
    clipped = tuple(min(max(v, 0.0), 1.0) for v in raw)
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise _BadLine("box_outside_image", f"bbox {bbox!r} lies outside the {width:g}x{height:g} image")
    return clipped, clipped != raw  # type: ignore[return-value]


def parse_line(text: str, difficulty: str, line: int) -> tuple[FGOVDItem, bool]:
    """One benchmark line -> (item, box_was_clipped); raises _BadLine with a reason code."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise _BadLine("bad_json", f"not valid JSON: {error}") from error
    if not isinstance(record, dict):
        raise _BadLine("bad_json", f"expected a JSON object, got {type(record).__name__}")
    img_path = record.get("img_path")
    if not isinstance(img_path, str) or not PurePosixPath(img_path).name:
        raise _BadLine("bad_image_path", f"img_path must be a file path, got {img_path!r}")
    width, height = _positive_number(record, "width"), _positive_number(record, "height")
    box, was_clipped = normalised_xyxy(record.get("bbox"), width, height)
    positives = _expressions(record, "pos_expression")
    if len(positives) != 1:
        raise _BadLine("bad_expression", f"pos_expression must hold exactly 1 string, got {len(positives)}")
    negatives = _expressions(record, "neg_expression")
    test_type = record.get("test_type")
    if not isinstance(test_type, str):
        raise _BadLine("bad_test_type", f"test_type must be a string, got {test_type!r}")
    item = FGOVDItem(
        difficulty=difficulty,
        line=line,
        image_name=PurePosixPath(img_path).name,
        img_path=img_path,
        box=box,
        positive=positives[0],
        negatives=tuple(negatives),
        width=int(width),
        height=int(height),
        test_type=test_type,
    )
    return item, was_clipped


def read_fgovd_file(path: str | Path, difficulty: str) -> FGOVDSplit:
    """All usable items of one benchmark file; bad lines become counted rejects."""
    source = local_path(path)
    split = FGOVDSplit(difficulty=difficulty, path=source)
    with open(source, encoding="utf-8") as handle:
        for number, text in enumerate(handle, 1):
            if not text.strip():
                continue
            split.lines += 1
            try:
                item, was_clipped = parse_line(text, difficulty, number)
            except _BadLine as bad:
                reject = Reject(
                    shard=source.name, key=f"line{number}", reason=bad.reason, detail=bad.detail, stage=STAGE
                )
                log.warning("%s:%d: %s: %s", source.name, number, bad.reason, bad.detail)
                split.rejects.append(reject)
                continue
            split.clipped_boxes += was_clipped
            split.items.append(item)
    if split.rejects:
        log.warning(
            "%s: %d of %d lines rejected %s", source.name, len(split.rejects), split.lines, split.reject_counts()
        )
    return split


def load_fgovd(folder: str | Path, difficulties: Sequence[str] | None = None) -> dict[str, FGOVDSplit]:
    """The benchmark's difficulty files in a folder, by difficulty name."""
    root = local_path(folder)
    wanted = list(difficulties) if difficulties is not None else list(FGOVD_FILES)
    unknown = [name for name in wanted if name not in FGOVD_FILES]
    if unknown:
        raise ValueError(f"unknown FG-OVD difficulties {unknown}; known: {list(FGOVD_FILES)}")
    missing = [FGOVD_FILES[name] for name in wanted if not (root / FGOVD_FILES[name]).is_file()]
    if missing:
        raise FileNotFoundError(f"FG-OVD files {missing} not found under {root}")
    return {name: read_fgovd_file(root / FGOVD_FILES[name], name) for name in wanted}


@dataclass
class ImageResolution:
    """Where each referenced image lives, and which could not be found."""

    folder: Path
    found: dict[str, Path]
    missing: list[str]

    @property
    def referenced(self) -> int:
        return len(self.found) + len(self.missing)

    def message(self) -> str:
        return f"{len(self.missing)} of {self.referenced} images not found under {self.folder}"


def index_images(folder: str | Path) -> dict[str, Path]:
    """File name -> path of every image below a folder (COCO keeps names unique)."""
    root = local_path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    suffixes = {f".{ext}" for ext in IMAGE_EXTS}
    index: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file():
            index.setdefault(path.name, path)
    return index


def resolve_images(items: Iterable[FGOVDItem], folder: str | Path) -> ImageResolution:
    """Resolve the items' images by file name under ``folder`` (e.g. COCO val2017)."""
    index = index_images(folder)
    names = sorted({item.image_name for item in items})
    found = {name: index[name] for name in names if name in index}
    missing = [name for name in names if name not in index]
    resolution = ImageResolution(folder=local_path(folder), found=found, missing=missing)
    if missing:
        log.warning("%s (first: %s)", resolution.message(), ", ".join(missing[:3]))
    return resolution
