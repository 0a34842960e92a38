"""The `negatives` section: generator backends and validation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fgclip.core.config import Section
from fgclip.llm.config import CausalLMConfig, EndpointConfig


class NegativesEndpointConfig(EndpointConfig):
    """negatives.openai: an instruction-tuned LLM behind an OpenAI-compatible endpoint."""

    max_tokens: int = Field(384, ge=1, description="completion tokens per request (10 short phrases as JSON: ~150)")


class NegativesConfig(Section):
    backend: Literal["rules", "openai", "hf"] = "rules"
    count: int = Field(10, ge=1)
    max_attempts: int = Field(200, ge=1, description="candidate draws per expression before giving up")
    batch_size: int = Field(32, ge=1, description="expressions handed to the generator at once (one batched generate, "
                                                  "or that many concurrent requests)")
    prompt: str = Field("negatives.v1", description="LLM backends: a built-in prompt (negatives.vN) or a prompt file path")
    repair: bool = Field(True, description="LLM backends: fill what the model missed with the rules generator "
                                           "(counted per region); false: such regions get no negatives")
    openai: NegativesEndpointConfig = NegativesEndpointConfig()
    hf: CausalLMConfig = CausalLMConfig()
