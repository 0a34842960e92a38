"""The `recaption` section and its backends' sub-sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fgclip.core.config import HFModelSource, Section
from fgclip.demo.config import DemoRecaptionTeacher
from fgclip.llm.config import EndpointConfig


class HFCaptionerConfig(HFModelSource):
    """recaption backend `hf`: an image-text-to-text model (Qwen2-VL, LLaVA, InternVL, ...)."""

    prompt_format: Literal["chat", "plain"] = Field(
        "chat", description="chat: the prompt goes through the processor's chat template with the image; "
                            "plain: the prompt text is given as is (task-token models such as Florence-2)")
    max_new_tokens: int = Field(512, ge=1)
    do_sample: bool = Field(False, description="False: greedy/beam decoding (deterministic)")
    temperature: float = Field(1.0, gt=0.0, description="only with do_sample")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="only with do_sample")
    num_beams: int = Field(1, ge=1)
    repetition_penalty: float = Field(1.0, gt=0.0)
    attn_implementation: str | None = Field(None, description="e.g. sdpa, flash_attention_2; None: the model's default")


class RecaptionEndpointConfig(EndpointConfig):
    """recaption.openai: a vision-language model behind an OpenAI-compatible endpoint."""


class RecaptionConfig(Section):
    backend: Literal["demo", "hf", "openai"] = "demo"
    batch_size: int = Field(16, ge=1, description="samples handed to the caption backend at once")
    prompt: str = Field("recaption.v1", description="a built-in prompt (recaption.vN) or a prompt file path; "
                                                    "model backends only; its hash goes into the fingerprint")
    demo: DemoRecaptionTeacher = DemoRecaptionTeacher()
    hf: HFCaptionerConfig = HFCaptionerConfig()
    openai: RecaptionEndpointConfig = RecaptionEndpointConfig()

    @model_validator(mode="after")
    def _model_named(self) -> "RecaptionConfig":
        if self.backend == "hf" and not self.hf.model:
            raise ValueError("recaption.backend 'hf' needs recaption.hf.model (a local folder or hub id)")
        return self
