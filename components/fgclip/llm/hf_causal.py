"""A Hugging Face causal LM as a chat engine: one batched `generate` per batch.

The model and tokenizer load with `from_pretrained` from a local folder or a hub id (a
GGUF checkpoint through `gguf_file`, which transformers dequantises; it needs the gguf
and accelerate packages). Conversations are rendered with the tokenizer's chat
template and left-padded, so every row's answer starts at the same position. The
device is cuda, then an Ascend npu (torch_npu), else cpu; bfloat16 where the device has
it, float32 on cpu.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fgclip.core.devices import resolve_device, resolve_dtype
from fgclip.core.hf_source import load_or_explain, model_identity
from fgclip.core.throughput import Throughput
from fgclip.llm.chat import ChatEngine, ChatReply, Conversation
from fgclip.llm.config import CausalLMConfig

log = logging.getLogger(__name__)


class CausalLMChat(ChatEngine):
    """Batched chat generation with a local causal LM."""

    def __init__(self, config: CausalLMConfig, *, unit: str = "items") -> None:
        if not config.model:
            raise ValueError("the hf backend needs a model: a local folder or a hub id (params: <stage>.hf.model)")
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        gguf = {"gguf_file": config.gguf_file} if config.gguf_file else {}
        self.tokenizer = load_or_explain(AutoTokenizer, config, "causal LM tokenizer", **gguf)
        self.model = load_or_explain(AutoModelForCausalLM, config, "causal LM", dtype=self.dtype, **gguf)
        if not self.tokenizer.chat_template:
            raise ValueError(f"{config.model!r} has no chat template; use an instruction-tuned model")
        self.tokenizer.padding_side = "left"  # generation continues every row from its last real token
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise ValueError(f"{config.model!r}'s tokenizer has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.to(self.device).eval()
        self.stop_ids = self._stop_ids()
        self.throughput = Throughput(unit)
        log.info("causal LM %s on %s (%s)", config.model, self.device, str(self.dtype).removeprefix("torch."))

    def _stop_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        return ids | {self.tokenizer.eos_token_id} - {None}

    def identity(self) -> dict[str, Any]:
        c = self.config
        return {
            "engine": "hf",
            **model_identity(c),
            "gguf_file": c.gguf_file,
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_new_tokens": c.max_new_tokens,
            "temperature": c.temperature,
            "top_p": c.top_p,
            "seed": c.seed,
        }

    def _decoding(self) -> dict[str, Any]:
        c = self.config
        if c.temperature == 0.0:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": c.temperature, "top_p": c.top_p}

    def chat(self, conversations: Sequence[Conversation]) -> list[ChatReply]:
        if not conversations:
            return []
        with self.throughput.timed():
            texts = [
                self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
            ]
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            torch.manual_seed(self.config.seed)
            with torch.inference_mode():
                output = self.model.generate(
                    **batch,
                    max_new_tokens=self.config.max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **self._decoding(),
                )
            answers = output[:, batch["input_ids"].shape[1] :].tolist()
            prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
            replies = [self._reply(tokens, int(length)) for tokens, length in zip(answers, prompt_lengths)]
        for reply in replies:
            self.prompt_tokens += reply.prompt_tokens
            self.throughput.add(items=1, tokens=reply.completion_tokens)
        return replies

    def _reply(self, tokens: list[int], prompt_tokens: int) -> ChatReply:
        # The answer ends at the first stop token; what follows is padding of finished rows.
        end = next((i for i, token in enumerate(tokens) if token in self.stop_ids), None)
        answer = tokens[:end] if end is not None else tokens
        text = self.tokenizer.decode(answer, skip_special_tokens=True).strip()
        if not text:
            return ChatReply(
                error="empty_reply",
                detail="the model produced no text",
                prompt_tokens=prompt_tokens,
                completion_tokens=len(answer),
            )
        return ChatReply(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(answer) + (end is not None),
            truncated=end is None,
        )

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
