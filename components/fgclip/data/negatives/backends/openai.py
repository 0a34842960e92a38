"""negatives backend `openai`: hard negatives from an LLM behind an OpenAI-compatible
endpoint (vLLM, SGLang, TGI, MindIE, llama.cpp server)."""

from __future__ import annotations

from fgclip.core.prompts import load_prompt
from fgclip.data.negatives.backends.llm import LLMNegativeGenerator, rules_repair
from fgclip.data.negatives.config import NegativesConfig
from fgclip.data.negatives.interface import PROMPT_PACKAGE, NegativeGenerator
from fgclip.llm.endpoint import ChatEndpoint


def build(config: NegativesConfig) -> NegativeGenerator:
    prompt = load_prompt(config.prompt, PROMPT_PACKAGE)
    return LLMNegativeGenerator("openai", ChatEndpoint(config.openai, unit="expressions"), prompt, rules_repair(config))
