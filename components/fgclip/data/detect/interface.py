"""The detector backend interface of the detect component: candidate boxes per expression.

Backends live in `backends/` and are looked up by `params.detect.backend` in `DETECTORS`:
`demo` (a teacher over the demo world's truth), `owlv2` and `grounding_dino` (Hugging
Face) and `yolo_world` (ultralytics). All return pixel boxes with scores, for a batch of
images at once (`Detector.detect_batch`, `detect.batch_size` images per call); the core
selection (`selection.py`) then treats every backend the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgclip.core.backends import BackendRegistry
from fgclip.core.shards import RawSample
from fgclip.core.storage import local_path
from fgclip.data.detect.config import DetectConfig
from fgclip.data.detect.expressions import Expression


# ---------------------------------------------------------------- backend interface

@dataclass(frozen=True)
class Candidate:
    """One candidate box for one expression: pixel x1, y1, x2, y2 (may reach outside
    the image; the core clips) and a confidence in [0, 1]."""

    bbox: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class DetectContext:
    """What a backend may need besides the image: where the sample comes from and the
    run's seed (for teachers that inject errors reproducibly)."""

    shard: str
    key: str
    seed: int


class DetectorError(Exception):
    """A backend could not process one sample; the sample becomes a `detector_failed`
    reject and the shard goes on."""


@dataclass(frozen=True)
class DetectItem:
    """One image and its expressions, as a batch hands them to a backend."""

    image: RawSample
    expressions: Sequence[Expression]
    context: DetectContext


class Detector(ABC):
    """Boxes referring expressions in one image, or in a batch of images."""

    needs_truth: bool = False  # True for teachers that read the demo world's truth sidecar

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Name, version, model/prompt hash: part of the stage fingerprint."""

    @abstractmethod
    def detect(self, image: RawSample, expressions: Sequence[Expression], context: DetectContext) -> list[list[Candidate]]:
        """Candidates per expression: one list (possibly empty) for each expression, in order."""

    def detect_batch(self, items: Sequence[DetectItem]) -> list[list[list[Candidate]] | DetectorError]:
        """`detect` for several images: per item, its candidate lists or the DetectorError
        that failed it alone. Model backends override this to run the images together."""
        results: list[list[list[Candidate]] | DetectorError] = []
        for item in items:
            try:
                results.append(self.detect(item.image, item.expressions, item.context))
            except DetectorError as error:
                results.append(error)
        return results

    def metrics(self) -> dict[str, float]:
        """Throughput of a model backend (images/s, expressions/s), logged to MLflow by the stage."""
        return {}


DetectorFactory = Callable[[DetectConfig, Path | None], Detector]
DETECTORS: BackendRegistry[DetectorFactory] = BackendRegistry("detector backend", {
    "demo": "fgclip.data.detect.backends.demo:build",
    "owlv2": "fgclip.data.detect.backends.hf:build",
    "grounding_dino": "fgclip.data.detect.backends.hf:build",
    "yolo_world": "fgclip.data.detect.backends.yolo_world:build",
})


def build_detector(config: DetectConfig, truth_dir: str | Path | None = None) -> Detector:
    """The configured detector; factories take `(config, truth_dir)`."""
    return DETECTORS.factory(config.backend)(config, local_path(truth_dir) if truth_dir is not None else None)
