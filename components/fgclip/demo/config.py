"""Sections of the demo world and of its teachers (the error-injecting caption writer and
detector that the demo backends of recaption and detect use)."""

from __future__ import annotations

from pydantic import Field, model_validator

from fgclip.core.config import Section
from fgclip.text.lexicon import COLOURS, PATTERNS


class DemoWorldConfig(Section):
    """The generated demo world: procedurally drawn scenes of attributed objects."""

    seed: int = 1234
    # 1024 training images: region-level training needs about this many to learn shapes
    # at all; 128 held-out images keep the evaluation's sampling error near 0.02.
    train_shards: int = Field(16, ge=1)
    heldout_shards: int = Field(2, ge=0)
    samples_per_shard: int = Field(64, ge=1)
    # Square, like the model's input: the centre crop of a 4:3 picture cuts a quarter of
    # its width away, with the objects and boxes in it. Measured with the same recipe:
    # stage 2 lifts box classification 11.7 points instead of 8.3, and the FG-OVD-style
    # top-1 reaches 0.93 instead of 0.91.
    image_width: int = Field(240, ge=64)
    image_height: int = Field(240, ge=64)
    min_objects: int = Field(2, ge=1)
    max_objects: int = Field(4, ge=1)
    photo_background_rate: float = Field(0.5, ge=0.0, le=1.0)
    # A small object palette is what makes shape matter. With every lexicon colour and
    # pattern, colour + pattern + size already tell almost every region of a batch apart,
    # so the regional loss never needs shape and box classification stays at chance.
    # Negatives still swap in any lexicon colour or pattern.
    object_colours: tuple[str, ...] = Field(
        ("red", "blue", "yellow", "green"),
        min_length=1,
        description="lexicon colours objects are painted in (a small palette makes shape matter)",
    )
    object_patterns: tuple[str, ...] = Field(
        ("solid", "striped"), min_length=1, description="fill patterns objects are drawn with"
    )
    scene_colours: int = Field(
        2, ge=1, description="distinct object colours per scene (shared colours make shape matter)"
    )
    scene_patterns: int = Field(2, ge=1, description="distinct object patterns per scene (likewise)")
    jpeg_quality: int = Field(90, ge=20, le=100)
    photo_backgrounds: tuple[str, ...] = Field(
        (
            "astronaut",
            "coffee",
            "chelsea",
            "rocket",
            "hubble_deep_field",
            "immunohistochemistry",
            "camera",
            "brick",
            "grass",
            "gravel",
        ),
        description="skimage.data images used as photo backgrounds; a missing one falls back to a gradient",
    )
    background_colours: tuple[str, ...] = Field(
        ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "gray", "cyan"),
        min_length=2,
        description="lexicon colours whose pale tints paint plain and gradient backgrounds",
    )
    background_tint: float = Field(
        0.75, ge=0.0, le=1.0, description="how far background colours are mixed towards white"
    )
    gradient_rate: float = Field(0.5, ge=0.0, le=1.0, description="share of non-photo backgrounds drawn as gradients")
    large_rate: float = Field(0.4, ge=0.0, le=1.0, description="probability that an object is large")
    small_side: tuple[float, float] = Field(
        (0.14, 0.22), description="small object side, fraction of the shorter image side"
    )
    large_side: tuple[float, float] = Field(
        (0.30, 0.42), description="large object side, fraction of the shorter image side"
    )
    max_overlap: float = Field(0.1, ge=0.0, le=1.0, description="max box intersection over the smaller box's area")
    placement_attempts: int = Field(60, ge=1, description="random positions tried per object before leaving it out")
    edge_margin: float = Field(0.02, ge=0.0, lt=0.5, description="free border, fraction of each image side")
    pattern_period: float = Field(
        0.25, gt=0.0, le=1.0, description="stripe/dot/checker period, fraction of object side"
    )
    pattern_min_period_px: int = Field(6, ge=2, description="patterns never get finer than this (JPEG would blur them)")

    @model_validator(mode="after")
    def _objects_range(self) -> DemoWorldConfig:
        if self.min_objects > self.max_objects:
            raise ValueError("demo.min_objects must not exceed demo.max_objects")
        for name in ("small_side", "large_side"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high < 1.0:
                raise ValueError(f"demo.{name} must be (low, high) with 0 < low <= high < 1")
        if self.small_side[1] >= self.large_side[0]:
            raise ValueError("demo.small_side must lie below demo.large_side, or 'small' and 'large' overlap")

        for name, known in (
            ("background_colours", COLOURS),
            ("object_colours", COLOURS),
            ("object_patterns", PATTERNS),
        ):
            values = getattr(self, name)
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise ValueError(f"demo.{name} has words the lexicon does not know: {unknown}")
            if len(set(values)) != len(values):
                raise ValueError(f"demo.{name} names a word twice")
        return self


class DemoRecaptionTeacher(Section):
    """Error injection of the demo caption teacher, per object mention."""

    attribute_error_rate: float = Field(0.01, ge=0.0, le=1.0)
    miss_rate: float = Field(0.01, ge=0.0, le=1.0)
    relation_rate: float = Field(
        0.5, ge=0.0, le=1.0, description="share of object mentions that add a spatial relation"
    )


class DemoDetectTeacher(Section):
    """Error injection of the demo detector teacher."""

    jitter: float = Field(0.03, ge=0.0, le=0.5, description="box jitter, fraction of box size (std)")
    miss_rate: float = Field(0.02, ge=0.0, le=1.0)
    false_positive_rate: float = Field(0.005, ge=0.0, le=1.0, description="per expression")
    score_min: float = Field(
        0.6, ge=0.0, le=1.0, description="lowest score of a found box; must pass detect.min_confidence"
    )
    score_max: float = Field(0.95, ge=0.0, le=1.0)
    sub_threshold_candidates: int = Field(
        2, ge=0, description="random low-score boxes per expression, so the threshold has work"
    )
    sub_threshold_max_fraction: float = Field(
        0.9, gt=0.0, lt=1.0, description="their scores: below this fraction of min_confidence"
    )
    duplicate_rate: float = Field(
        0.5, ge=0.0, le=1.0, description="chance of a near-duplicate, lower-score box, so NMS has work"
    )
    duplicate_jitter: float = Field(
        0.04, ge=0.0, le=0.5, description="near-duplicate offset, fraction of box size (std)"
    )
    duplicate_score_factor: float = Field(0.9, gt=0.0, lt=1.0, description="near-duplicate score = found score x this")
    false_positive_size: tuple[float, float] = Field(
        (0.08, 0.3), description="side range of a false box, fraction of the image side"
    )

    @model_validator(mode="after")
    def _ranges(self) -> DemoDetectTeacher:
        if self.score_min > self.score_max:
            raise ValueError("detect.demo.score_min must not exceed detect.demo.score_max")
        low, high = self.false_positive_size
        if not 0.0 < low <= high <= 1.0:
            raise ValueError("detect.demo.false_positive_size must be (low, high) with 0 < low <= high <= 1")
        return self
