"""The `qc` section: sample, validators, reviewer, gate and gallery."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fgclip.core.config import Section


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
    gallery_image_max_side: int = Field(384, ge=32, description="gallery images are downscaled to this longest side (px)")
    gallery_jpeg_quality: int = Field(85, ge=20, le=100)
