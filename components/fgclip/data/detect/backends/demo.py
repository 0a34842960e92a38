"""detect backend `demo`: the demo world's detector teacher (`fgclip.demo.detector`) behind
the detector interface. It reads the truth sidecar, which only the demo source has."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fgclip.core.seeding import keyed_random
from fgclip.core.shards import RawSample
from fgclip.data.detect.config import DetectConfig
from fgclip.data.detect.expressions import Expression
from fgclip.data.detect.interface import Candidate, DetectContext, Detector, DetectorError
from fgclip.demo.detector import TeacherBoxes
from fgclip.demo.truth import TruthSidecar, TruthUnavailable, checked_record


class DemoTeacherDetector(Detector):
    """Boxes from the demo detector teacher, one seeded stream per (seed, key, expression)."""

    name = "demo-teacher"
    version = "1"
    needs_truth = True

    def __init__(self, config: DetectConfig, truth_dir: str | Path) -> None:
        self.teacher = config.demo
        self.truth = TruthSidecar(truth_dir)
        self.boxes = TeacherBoxes(config.demo, config.min_confidence)

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "teacher": self.teacher.model_dump(mode="json")}

    def detect(self, image: RawSample, expressions: Sequence[Expression], context: DetectContext) -> list[list[Candidate]]:
        try:
            record = checked_record(self.truth, context.shard, context.key, image.width, image.height)
        except TruthUnavailable as error:
            raise DetectorError(f"the truth of {context.key!r} cannot be used ({error.reason}): {error.detail}") from error
        found = []
        for index, expression in enumerate(expressions):
            rng = keyed_random(context.seed, context.key, index)
            scored = self.boxes.candidates(expression.short_expr, expression.long_expr, record["objects"],
                                           image.width, image.height, rng)
            found.append([Candidate(box, score) for box, score in scored])
        return found


def build(config: DetectConfig, truth_dir: Path | None) -> Detector:
    if truth_dir is None:
        raise ValueError(
            "detect backend 'demo' reads the demo world's truth, which only dataset.source demo has: "
            "choose detect.backend owlv2, grounding_dino or yolo_world for other data (or pass --truth with --images)"
        )
    return DemoTeacherDetector(config, truth_dir)
