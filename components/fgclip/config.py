"""One typed configuration for every component.

params.yaml (read by DVC) and the Airflow trigger form use the same keys. Each component
reads only its own section; unknown keys are errors, so a typo in params.yaml fails loudly
instead of silently running with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DemoWorldConfig(Section):
    """The generated demo world: procedurally drawn scenes of attributed objects."""

    seed: int = 1234
    train_shards: int = Field(4, ge=1)
    heldout_shards: int = Field(1, ge=0)
    samples_per_shard: int = Field(64, ge=1)
    image_width: int = Field(320, ge=64)
    image_height: int = Field(240, ge=64)
    min_objects: int = Field(2, ge=1)
    max_objects: int = Field(4, ge=1)
    photo_background_rate: float = Field(0.5, ge=0.0, le=1.0)
    jpeg_quality: int = Field(90, ge=20, le=100)

    @model_validator(mode="after")
    def _objects_range(self) -> "DemoWorldConfig":
        if self.min_objects > self.max_objects:
            raise ValueError("demo.min_objects must not exceed demo.max_objects")
        return self


class DemoRecaptionTeacher(Section):
    """Error injection of the demo caption teacher, per object mention."""

    attribute_error_rate: float = Field(0.01, ge=0.0, le=1.0)
    miss_rate: float = Field(0.01, ge=0.0, le=1.0)


class RecaptionConfig(Section):
    backend: Literal["demo"] = "demo"
    demo: DemoRecaptionTeacher = DemoRecaptionTeacher()


class DemoDetectTeacher(Section):
    """Error injection of the demo detector teacher."""

    jitter: float = Field(0.03, ge=0.0, le=0.5, description="box jitter, fraction of box size (std)")
    miss_rate: float = Field(0.02, ge=0.0, le=1.0)
    false_positive_rate: float = Field(0.005, ge=0.0, le=1.0, description="per expression")


class DetectConfig(Section):
    extractor: Literal["rules"] = "rules"
    backend: Literal["demo"] = "demo"
    min_confidence: float = Field(0.4, ge=0.0, le=1.0)
    nms_iou: float = Field(0.5, gt=0.0, le=1.0)
    max_regions: int = Field(8, ge=1)
    min_box_side_px: float = Field(4.0, ge=0.0)
    min_box_area_fraction: float = Field(0.0005, ge=0.0, le=1.0)
    demo: DemoDetectTeacher = DemoDetectTeacher()


class NegativesConfig(Section):
    backend: Literal["rules"] = "rules"
    count: int = Field(10, ge=1)
    max_attempts: int = Field(200, ge=1, description="candidate draws per expression before giving up")


class QCConfig(Section):
    sample_size: int = Field(400, ge=1)
    seed: int = 7
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    max_noise_upper: float = Field(0.05, gt=0.0, le=1.0, description="gate: fail when the CI upper bound exceeds this")
    reviewer: Literal["truth", "labels", "none"] = "truth"
    min_box_area_fraction: float = Field(0.0005, ge=0.0, le=1.0)
    max_box_area_fraction: float = Field(1.0, gt=0.0, le=1.0)
    min_caption_words: int = Field(8, ge=0)
    max_caption_words: int = Field(400, ge=1)
    match_iou: float = Field(0.5, gt=0.0, le=1.0, description="truth reviewer: a box matches an object at this IoU")
    gallery_items: int = Field(120, ge=0)


class TrackingConfig(Section):
    """MLflow: a local SQLite store by default; MLFLOW_TRACKING_URI overrides it."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "fgclip-data"
    enabled: bool = True


class Params(Section):
    seed: int = 0
    demo: DemoWorldConfig = DemoWorldConfig()
    recaption: RecaptionConfig = RecaptionConfig()
    detect: DetectConfig = DetectConfig()
    negatives: NegativesConfig = NegativesConfig()
    qc: QCConfig = QCConfig()
    tracking: TrackingConfig = TrackingConfig()


def load_params(path: str | Path | None = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml (missing file -> defaults), apply dotted overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        data = yaml.safe_load(Path(path).read_text()) or {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return Params.model_validate(data)


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` with a YAML-typed value (so 0.2 is a float, true a bool)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)
