"""The `eval` section: held-out tasks, prompts and the FG-OVD benchmark."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fgclip.core.config import Section


class EvalConfig(Section):
    """`fgclip eval`: held-out demo tasks (FG-OVD style, box classification, long/short
    retrieval, zero-shot) and, when given, the FG-OVD benchmark."""

    experiment: str = "fgclip-eval"
    batch_size: int = Field(32, ge=1, description="images or texts per forward pass")
    device: str = Field("auto", description="'auto' (cuda, then npu, then cpu) or a torch device such as cuda:1")
    seed: int = Field(11, description="seeds the demo FG-OVD negatives and the held-out long captions")
    negatives_per_region: int = Field(
        10, ge=1, description="demo FG-OVD: hard negatives per positive (the benchmark has 10)"
    )
    retrieval_ks: tuple[int, ...] = Field((1, 5, 10), min_length=1, description="recall@k of the retrieval tasks")
    box_prompt: str = Field("a photo of a {}.", description="box classification prompt; {} is the shape name")
    zero_shot_templates: tuple[str, ...] = Field(
        (
            "a photo of a {}.",
            "a picture of a {}.",
            "an image of a {}.",
            "a drawing of a {}.",
            "a {} shape.",
            "a simple graphic of a {}.",
        ),
        min_length=1,
        description="zero-shot prompt ensemble; {} is the shape name",
    )
    fgovd_difficulties: tuple[Literal["hard", "medium", "easy", "trivial"], ...] = ("hard", "medium", "easy", "trivial")
    fgovd_max_items: int | None = Field(None, ge=1, description="first N items per difficulty (quick runs); None: all")
    fgovd_allow_missing_images: bool = Field(
        False, description="score the items whose COCO image exists instead of failing"
    )
    global_view: Literal["processor", "whole"] = Field(
        "processor",
        description="global image features from the processor's resize + centre crop (as in training), "
        "or from the whole image resized to a square (one pass shared with the regions)",
    )
    plot_dpi: int = Field(100, ge=50)

    @model_validator(mode="after")
    def _templates(self) -> EvalConfig:
        for template in (self.box_prompt, *self.zero_shot_templates):
            if template.count("{}") != 1:
                raise ValueError(f"eval prompt {template!r} must hold exactly one '{{}}' for the class name")
        if any(k < 1 for k in self.retrieval_ks):
            raise ValueError("eval.retrieval_ks must be positive")
        return self
