"""negatives backend `hf`: hard negatives from a Hugging Face causal LM run in this process
(a folder or hub id; GGUF checkpoints through `negatives.hf.gguf_file`)."""

from __future__ import annotations

from fgclip.core.prompts import load_prompt
from fgclip.data.negatives.backends.llm import LLMNegativeGenerator, rules_repair
from fgclip.data.negatives.config import NegativesConfig
from fgclip.data.negatives.interface import PROMPT_PACKAGE, NegativeGenerator
from fgclip.llm.hf_causal import CausalLMChat


def build(config: NegativesConfig) -> NegativeGenerator:
    prompt = load_prompt(config.prompt, PROMPT_PACKAGE)
    return LLMNegativeGenerator("hf", CausalLMChat(config.hf, unit="expressions"), prompt, rules_repair(config))
