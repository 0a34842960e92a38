"""The `model` section: the starting checkpoint and the tiny demo model's shape."""

from __future__ import annotations

from pydantic import Field, model_validator

from fgclip.core.config import Section


class DemoModelSpec(Section):
    """The tiny CLIP `fgclip init-model --base demo-tiny` builds from scratch (no hub)."""

    tokenizer_vocab_size: int = Field(
        1000, ge=300, description="BPE training target (byte alphabet + merges + specials)"
    )
    tokenizer_min_frequency: int = Field(2, ge=1)
    text_hidden_size: int = Field(64, ge=8)
    # One layer is enough for the demo's short attribute phrases (the held-out tasks stay
    # above their marks) and halves the text tower's cost: it encodes ~18k tokens a stage-2
    # step (10 hard negatives per box), three times what the vision tower does.
    text_layers: int = Field(1, ge=1)
    text_heads: int = Field(2, ge=1)
    text_intermediate_size: int = Field(256, ge=8)
    text_positions: int = Field(77, ge=22, description="short-text positions; stretched to 4L - 60 for long captions")
    vision_hidden_size: int = Field(64, ge=8)
    vision_layers: int = Field(2, ge=2, description=">= 2: dense features run the last block apart")
    vision_heads: int = Field(2, ge=1)
    vision_intermediate_size: int = Field(256, ge=8)
    # 224 px puts a small demo object on 2-3 patches a side instead of about one, which is
    # what lets a from-scratch tower see its outline.
    image_size: int = Field(224, ge=16)
    patch_size: int = Field(16, ge=2)
    projection_dim: int = Field(64, ge=8)
    logit_scale_init: float = Field(2.6592, description="log inverse temperature at init (CLIP: ln(1/0.07))")

    @model_validator(mode="after")
    def _divisible(self) -> DemoModelSpec:
        if self.image_size % self.patch_size:
            raise ValueError("model.demo.image_size must be a multiple of model.demo.patch_size")
        if self.text_hidden_size % self.text_heads or self.vision_hidden_size % self.vision_heads:
            raise ValueError("model.demo hidden sizes must be multiples of their head counts")
        return self


class ModelConfig(Section):
    base: str = Field(
        "demo-tiny", description="'demo-tiny' (built from model.demo) or a local HF CLIP folder / cached hub id"
    )
    demo: DemoModelSpec = DemoModelSpec()
