"""detect backend `yolo_world`: ultralytics YOLO-World (the detector the paper used) from
a weights file.

YOLO-World's vocabulary is a list of class names whose text embeddings it computes once
per `set_classes` call. A batch of images is detected in one `predict` call over the
union of the batch's expressions; each image then keeps only the boxes of its own
expressions. ultralytics applies its own per-class NMS and a low pre-threshold
(`candidate_min_score`); the core then applies detect.min_confidence, the box checks and
the class-agnostic NMS, as for every backend.

ultralytics needs torchvision; the project's CPU test environment cannot import it
beside torch 2.13, so this backend is exercised here only up to the model call (see
tests/vision/test_detect_yolo.py); the GPU images install ultralytics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fgclip.data.detect.config import DetectConfig, YoloWorldConfig
from fgclip.data.detect.interface import Candidate, DetectContext, DetectItem, Detector, DetectorError
from fgclip.core.devices import resolve_device
from fgclip.data.detect.expressions import Expression
from fgclip.core.shards import RawSample
from fgclip.core.throughput import Throughput
from fgclip.core.hf_source import ModelLoadError
from fgclip.core.storage import sha256_file

VERSION = "1"


def load_yolo_world(weights: str) -> Any:
    """`ultralytics.YOLOWorld(weights)`, or a clear error naming what is missing."""
    try:
        from ultralytics import YOLOWorld
    except ImportError as error:
        raise ModelLoadError("detect.backend 'yolo_world' needs the ultralytics package (and a torchvision that "
                             f"imports beside torch): pip install ultralytics ({error})") from error
    if not Path(weights).is_file():
        raise ModelLoadError(f"detect.yolo_world.weights {weights!r} is not a file")
    return YOLOWorld(weights)


def weights_digest(weights: str) -> str:
    return sha256_file(weights) if Path(weights).is_file() else ""


def vocabulary(items: Sequence[DetectItem], name_of: Any) -> list[str]:
    """The batch's distinct class names, in first-seen order."""
    return list(dict.fromkeys(name_of(e) for item in items for e in item.expressions))


def split_by_expression(xyxy: Sequence[Sequence[float]], scores: Sequence[float], classes: Sequence[int],
                        names: Sequence[str], wanted: Sequence[str], min_score: float,
                        max_candidates: int) -> list[list[Candidate]]:
    """Candidates per expression of one image from its predicted boxes: a box belongs to
    every expression of this image whose class name it was predicted for (two
    expressions may share a name); best `max_candidates` above `min_score` each."""
    found: list[list[Candidate]] = [[] for _ in wanted]
    for box, score, cls in zip(xyxy, scores, classes):
        if float(score) < min_score:
            continue
        name = names[int(cls)]
        for index, expression_name in enumerate(wanted):
            if expression_name == name:
                found[index].append(Candidate(tuple(float(v) for v in box), float(score)))  # type: ignore[arg-type]
    return [sorted(candidates, key=lambda c: -c.score)[:max_candidates] for candidates in found]


class YoloWorldDetector(Detector):
    name = "yolo_world"

    def __init__(self, settings: YoloWorldConfig, model: Any = None) -> None:
        if not settings.weights:
            raise ValueError("detect.backend 'yolo_world' needs detect.yolo_world.weights")
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.model = model if model is not None else load_yolo_world(settings.weights)
        self.half = settings.half and self.device.type != "cpu"
        self.throughput = Throughput("images")
        self.expressions = 0
        self._classes: list[str] | None = None

    def identity(self) -> dict[str, Any]:
        s = self.settings
        return {"name": self.name, "version": VERSION, "weights": Path(s.weights or "").name,
                "weights_sha256": weights_digest(s.weights or ""), "half": self.half, "image_size": s.image_size,
                "query": s.query, "candidate_min_score": s.candidate_min_score, "max_candidates": s.max_candidates}

    def metrics(self) -> dict[str, float]:
        return self.throughput.metrics("detect.backend", expressions=self.expressions)

    def class_name(self, expression: Expression) -> str:
        return expression.short_expr if self.settings.query == "short" else expression.long_expr

    def detect(self, image: RawSample, expressions: Sequence[Expression], context: DetectContext) -> list[list[Candidate]]:
        [outcome] = self.detect_batch([DetectItem(image, expressions, context)])
        if isinstance(outcome, DetectorError):
            raise outcome
        return outcome

    def detect_batch(self, items: Sequence[DetectItem]) -> list[list[list[Candidate]] | DetectorError]:
        outcomes: list[Any] = [None] * len(items)
        opened: dict[int, Any] = {}
        for index, item in enumerate(items):
            try:
                opened[index] = item.image.open_image()
            except (OSError, ValueError) as error:
                outcomes[index] = DetectorError(f"image does not decode: {type(error).__name__}: {error}")
        if not opened:
            return outcomes
        chosen = [items[i] for i in opened]
        names = vocabulary(chosen, self.class_name)
        with self.throughput.timed():
            if names != self._classes:  # text embeddings are recomputed only when the vocabulary changes
                self.model.set_classes(names)
                self._classes = names
            results = self.model.predict(source=list(opened.values()), conf=self.settings.candidate_min_score,
                                         imgsz=self.settings.image_size, device=str(self.device), half=self.half,
                                         verbose=False)
        if len(results) != len(chosen):
            raise RuntimeError(f"YOLO-World returned {len(results)} results for {len(chosen)} images")
        self.throughput.add(items=len(chosen))
        self.expressions += sum(len(item.expressions) for item in chosen)
        for index, item, result in zip(opened, chosen, results):
            boxes = result.boxes
            outcomes[index] = split_by_expression(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), names,
                                                  [self.class_name(e) for e in item.expressions],
                                                  self.settings.candidate_min_score, self.settings.max_candidates)
        return outcomes


def build(config: DetectConfig, truth_dir: Path | None = None) -> Detector:
    return YoloWorldDetector(config.yolo_world)
