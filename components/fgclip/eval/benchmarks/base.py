"""What every benchmark reader shares: the task data it returns, counted rejects, and
resolving the benchmark's image paths under the data root with clear errors.

A reader turns a benchmark's own published files into one of four task shapes:
``RetrievalSet`` (images and their captions), ``BoxSet`` (images, ground-truth boxes and
class labels), ``ClassSet`` (images and one label each) and ``ChoiceSet`` (a box and 1 + N
candidate texts, FG-OVD). Records it cannot use become ``Reject``s with a reason code,
counted and logged, never a crash. Files that are missing raise ``BenchmarkMissing``
(the suite can skip that benchmark with a warning); images that are missing raise
``IncompleteBenchmark`` unless the suite allows scoring the rest.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from fgclip.core.shards import IMAGE_EXTS, Reject

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
Task = Literal["retrieval", "boxes", "classification", "choices"]
#: Log this many rejects of one benchmark one by one; the rest are only counted.
LOGGED_REJECTS = 5


class BenchmarkMissing(FileNotFoundError):
    """A benchmark's files are not under the data root (the suite may skip it)."""


class IncompleteBenchmark(BenchmarkMissing):
    """Some of a benchmark's images are missing; scoring the rest needs allow_missing_images."""


class BadBenchmarkFile(ValueError):
    """A benchmark file that is there but unreadable as a whole (not JSON, wrong shape)."""


class BadRecord(ValueError):
    """One unusable record: a reason code and a readable detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class RetrievalSet:
    images: list[Path]
    texts: list[str]  # caption instances (an image may have several)
    text_image: list[int]  # the image of each caption


@dataclass
class BoxSet:
    images: list[Path]
    boxes: list[np.ndarray]  # per image: (k, 4) normalised x1, y1, x2, y2
    labels: list[list[int]]  # per image: the class index of each box
    class_names: list[str]


@dataclass
class ClassSet:
    images: list[Path]
    labels: list[int]
    class_names: list[str]


@dataclass(frozen=True)
class Choice:
    """Which of ``candidates`` (the positive first) describes ``box`` of image ``image``?"""

    image: int
    box: Box
    candidates: tuple[str, ...]


@dataclass
class ChoiceSet:
    images: list[Path]
    questions: dict[str, list[Choice]]  # by difficulty


TaskData = RetrievalSet | BoxSet | ClassSet | ChoiceSet


@dataclass
class Benchmark:
    """One benchmark as read: its task data, the files it came from and what was rejected."""

    name: str
    task: Task
    data: TaskData
    files: dict[str, str]
    rejects: list[Reject] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the class names' and templates' source

    def reject_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self.rejects).items()))


class RejectLog:
    """Collects a benchmark's rejects; logs the first few, counts them all."""

    def __init__(self, benchmark: str) -> None:
        self.benchmark = benchmark
        self.items: list[Reject] = []

    def add(self, source: str, key: str | None, reason: str, detail: str) -> None:
        self.items.append(Reject(shard=source, key=key, reason=reason, detail=detail, stage=self.benchmark))
        level = logging.WARNING if len(self.items) <= LOGGED_REJECTS else logging.DEBUG
        log.log(level, "%s: %s [%s] %s: %s", self.benchmark, source, key, reason, detail)

    def summary(self) -> None:
        if self.items:
            counts = dict(sorted(Counter(r.reason for r in self.items).items()))
            log.warning("%s: %d records rejected %s", self.benchmark, len(self.items), counts)


def require_file(path: Path, benchmark: str, what: str) -> Path:
    if not path.is_file():
        raise BenchmarkMissing(f"{benchmark}: {what} {path} does not exist (see docs/benchmarks.md for the download)")
    return path


def read_json(path: Path, benchmark: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadBenchmarkFile(f"{benchmark}: {path} is not valid JSON: {error}") from error


def require_folder(path: Path, benchmark: str, what: str) -> Path:
    if not path.is_dir():
        raise BenchmarkMissing(f"{benchmark}: {what} {path} does not exist (see docs/benchmarks.md for the download)")
    return path


class ImageFolder:
    """Resolves a benchmark's image references under one folder: the path as written
    first, then the file name anywhere below the folder (indexed once, on first need)."""

    def __init__(self, root: Path, benchmark: str) -> None:
        self.root = root
        self.benchmark = benchmark
        self._by_name: dict[str, Path] | None = None

    def _index(self) -> dict[str, Path]:
        if self._by_name is None:
            suffixes = {f".{ext}" for ext in IMAGE_EXTS}
            self._by_name = {}
            if self.root.is_dir():
                for path in sorted(self.root.rglob("*")):
                    if path.suffix.lower() in suffixes and path.is_file():
                        self._by_name.setdefault(path.name, path)
        return self._by_name

    def find(self, *references: str) -> Path | None:
        """The first reference that exists, as a relative path or by its file name."""
        for reference in references:
            direct = self.root / reference
            if reference and direct.is_file():
                return direct
        index = self._index()
        for reference in references:
            found = index.get(PurePosixPath(reference).name)
            if found is not None:
                return found
        return None


def check_images(benchmark: str, folder: Path, referenced: int, missing: Sequence[str], allow_missing: bool) -> None:
    """Fail clearly when images are missing: all of them (wrong folder?) or some (unless allowed)."""
    if not missing:
        return
    first = ", ".join(missing[:3])
    if len(missing) == referenced:
        raise BenchmarkMissing(
            f"{benchmark}: none of its {referenced} images were found under {folder} (first: {first}); "
            "is the images folder right? (docs/benchmarks.md)"
        )
    message = f"{benchmark}: {len(missing)} of {referenced} images not found under {folder} (first: {first})"
    if not allow_missing:
        raise IncompleteBenchmark(f"{message}; set benchmarks.allow_missing_images=true to score the rest")
    log.warning("%s; scoring the rest", message)


def positive_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise BadRecord("bad_image_size", f"{name} must be a positive number, got {value!r}")
    return float(value)


def unit_box_from_xywh(bbox: Any, width: float, height: float) -> Box:
    """[x, y, w, h] in pixels (COCO, LVIS, FG-OVD) -> normalised x1, y1, x2, y2 clipped to [0, 1]."""
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise BadRecord("bad_bbox", f"bbox must be [x, y, w, h], got {bbox!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in bbox):
        raise BadRecord("bad_bbox", f"bbox holds a non-finite or non-numeric value: {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise BadRecord("bad_bbox", f"bbox has non-positive width or height: {bbox!r}")
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (x / width, y / height, (x + w) / width, (y + h) / height))
    if x2 <= x1 or y2 <= y1:
        raise BadRecord("box_outside_image", f"bbox {bbox!r} lies outside the {width:g}x{height:g} image")
    return x1, y1, x2, y2


def text_field(record: Any, name: str) -> str:
    value = record.get(name) if isinstance(record, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise BadRecord("bad_text", f"{name} must be a non-empty string, got {value!r}")
    return value.strip()


def index_of(items: Iterable[Path]) -> dict[Path, int]:
    """Position of each distinct path, in first-seen order."""
    order: dict[Path, int] = {}
    for path in items:
        order.setdefault(path, len(order))
    return order


@dataclass(frozen=True)
class CaptionedImage:
    """One record of a retrieval benchmark before its image is resolved."""

    source: str  # file the record came from
    key: str  # its id in that file (line number, record id, file name)
    references: tuple[str, ...]  # where the image may be, most specific first
    captions: tuple[str, ...]


def assemble_retrieval(
    name: str,
    records: Sequence[CaptionedImage],
    folder: ImageFolder,
    rejects: RejectLog,
    allow_missing: bool,
    prefix: str = "",
) -> RetrievalSet:
    """Resolve every record's image; records whose image is missing are rejected (and the
    benchmark fails unless missing images are allowed). An image named by two records is
    one gallery image with the captions of both."""
    resolved: list[tuple[Path, CaptionedImage]] = []
    missing: list[str] = []
    for record in records:
        path = folder.find(*record.references)
        if path is None:
            missing.append(record.references[0])
            rejects.add(record.source, record.key, "image_missing", f"{record.references[0]} not under {folder.root}")
            continue
        resolved.append((path, record))
    check_images(name, folder.root, len(records), missing, allow_missing)
    order = index_of(path for path, _ in resolved)
    texts, text_image = [], []
    for path, record in resolved:
        for caption in record.captions:
            texts.append(f"{prefix}{caption}")
            text_image.append(order[path])
    return RetrievalSet(images=list(order), texts=texts, text_image=text_image)
