"""detect backend `yolo_world`. ultralytics cannot be installed here (it needs a
torchvision that imports beside torch 2.13 CPU), so the model call itself is replaced by a
stand-in with ultralytics' interface (set_classes / predict -> results with boxes.xyxy,
conf, cls); everything around it runs for real: the missing-package error, the batch's
vocabulary, splitting boxes back to each image's expressions, and the core selection."""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from fgclip.data.detect.config import DetectConfig, YoloWorldConfig
from fgclip.data.detect.interface import DetectContext, DetectItem, DetectorError, build_detector
from fgclip.data.detect.selection import select_regions
from fgclip.data.detect.expressions import Expression
from fgclip.core.shards import RawSample
from fgclip.data.detect.backends.yolo_world import YoloWorldDetector, split_by_expression

CIRCLE, STAR = Expression("red circle", "red circle on the left"), Expression("blue star", "blue star")


@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is not None, reason="ultralytics is installed here")
def test_missing_ultralytics_is_a_clear_error(tmp_path: Path) -> None:
    weights = tmp_path / "yolov8s-worldv2.pt"
    weights.write_bytes(b"weights")
    with pytest.raises(ValueError, match="needs the ultralytics package"):
        build_detector(DetectConfig(backend="yolo_world", yolo_world={"weights": str(weights)}))
    with pytest.raises(ValueError, match="detect.yolo_world.weights"):
        DetectConfig(backend="yolo_world")


def test_boxes_go_to_every_expression_of_their_class_name() -> None:
    found = split_by_expression([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 9, 9], [2, 2, 3, 3]], [0.9, 0.8, 0.7, 0.01],
                                [0, 1, 0, 1], ["red circle", "blue star"], ["blue star", "red circle", "red circle"],
                                min_score=0.05, max_candidates=1)
    assert [[(c.bbox, c.score) for c in f] for f in found] == [
        [((5.0, 5.0, 20.0, 20.0), 0.8)], [((0.0, 0.0, 10.0, 10.0), 0.9)], [((0.0, 0.0, 10.0, 10.0), 0.9)]]


@dataclass
class _Boxes:
    xyxy: torch.Tensor
    conf: torch.Tensor
    cls: torch.Tensor


@dataclass
class _Result:
    boxes: _Boxes


class StandIn:
    """ultralytics.YOLOWorld's interface: one box per class per image, placed by the class index."""

    def __init__(self) -> None:
        self.vocabularies: list[list[str]] = []
        self.calls: list[dict] = []

    def set_classes(self, names: list[str]) -> None:
        self.vocabularies.append(list(names))

    def predict(self, source, **kwargs):
        self.calls.append({"images": len(source), **kwargs})
        count = len(self.vocabularies[-1])
        return [_Result(_Boxes(torch.tensor([[10.0 * c, 10.0, 10.0 * c + 30, 40.0] for c in range(count)]),
                               torch.tensor([0.9 - 0.1 * c for c in range(count)]), torch.arange(count).float()))
                for _ in source]


def item(key: str, expressions: list[Expression]) -> DetectItem:
    buffer = io.BytesIO()
    Image.new("RGB", (120, 80), (90, 30, 30)).save(buffer, format="JPEG")
    return DetectItem(RawSample(key, buffer.getvalue(), "jpg", 120, 80, "alt"), expressions, DetectContext("00000", key, 0))


def test_one_predict_per_batch_over_the_union_of_expressions() -> None:
    model = StandIn()
    detector = YoloWorldDetector(YoloWorldConfig(weights="yolov8s-worldv2.pt", device="cpu"), model=model)
    broken = DetectItem(RawSample("broken", b"nope", "jpg", 9, 9, "alt"), [CIRCLE], DetectContext("00000", "broken", 0))
    outcomes = detector.detect_batch([item("a", [CIRCLE, STAR]), broken, item("b", [STAR])])
    assert model.vocabularies == [["red circle", "blue star"]]
    assert model.calls == [{"images": 2, "conf": 0.05, "imgsz": 640, "device": "cpu", "half": False, "verbose": False}]
    assert isinstance(outcomes[1], DetectorError)
    assert [[c.bbox for c in f] for f in outcomes[0]] == [[(0.0, 10.0, 30.0, 40.0)], [(10.0, 10.0, 40.0, 40.0)]]
    assert [[c.bbox for c in f] for f in outcomes[2]] == [[(10.0, 10.0, 40.0, 40.0)]]  # only b's own expression
    detector.detect_batch([item("c", [CIRCLE, STAR])])
    assert len(model.vocabularies) == 1  # same vocabulary: no new text embeddings
    regions, _ = select_regions([CIRCLE, STAR], outcomes[0], 120, 80, DetectConfig())
    assert [r["short_expr"] for r in regions] == ["red circle", "blue star"]
    metrics = detector.metrics()
    assert metrics["detect.backend.images"] == 3 and metrics["detect.backend.expressions"] == 5
    assert detector.identity()["weights"] == "yolov8s-worldv2.pt"
