"""recaption backend `hf`: long captions from any Hugging Face image-text-to-text model
(Qwen2-VL, LLaVA, InternVL, Florence-2, ...) loaded from a local folder or a hub id.

Each batch goes through the processor once (the versioned prompt in the model's chat
template, the images, left padding) and through one `generate` call. What can fail for
one sample fails only that sample: an image that does not decode or that the processor
refuses is a reject with the reason, and the rest of the batch is captioned.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fgclip.data.recaption.config import RecaptionConfig
from fgclip.core.devices import resolve_device, resolve_dtype
from fgclip.core.prompts import load_prompt
from fgclip.data.recaption.interface import PROMPT_PACKAGE, BackendResources, CaptionBackend, CaptionContext, CaptionResult
from fgclip.core.seeding import stable_seed
from fgclip.core.shards import RawSample
from fgclip.core.throughput import Throughput
from fgclip.core.hf_source import ModelLoadError, load_or_explain, model_identity

log = logging.getLogger(__name__)

VERSION = "1"
SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def complete_sentences(text: str) -> str:
    """`text` up to its last sentence end ("" when it has none): a caption cut off by
    max_new_tokens ends mid-word, and a half sentence names half an object."""
    ends = [match.end() for match in SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else ""


class HFCaptioner(CaptionBackend):
    """Batched captions from an image-text-to-text model."""

    def __init__(self, config: RecaptionConfig) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.settings = config.hf
        self.prompt = load_prompt(config.prompt, PROMPT_PACKAGE)
        self.device = resolve_device(self.settings.device)
        self.dtype = resolve_dtype(self.settings.dtype, self.device)
        self.processor = load_or_explain(AutoProcessor, self.settings, "caption processor")
        tokenizer: Any = getattr(self.processor, "tokenizer", None)
        if tokenizer is None:
            raise ModelLoadError(f"{self.settings.model!r}: its processor has no tokenizer; not an image-text-to-text model")
        self.tokenizer = tokenizer
        # Decoder-only models continue the last position: pad on the left so every row ends at its prompt.
        self.tokenizer.padding_side = "left"
        extra = {"attn_implementation": self.settings.attn_implementation} if self.settings.attn_implementation else {}
        self.model = load_or_explain(AutoModelForImageTextToText, self.settings, "captioner", dtype=self.dtype, **extra)
        self.model.to(self.device).eval()
        self.text = self._prompt_text()
        self.throughput = Throughput("images")
        self.truncated = 0
        self._torch = torch

    def _prompt_text(self) -> str:
        if self.settings.prompt_format == "plain":
            return self.prompt.text
        if not getattr(self.processor, "chat_template", None) and not getattr(self.tokenizer, "chat_template", None):
            raise ModelLoadError(f"{self.settings.model!r} has no chat template; set recaption.hf.prompt_format: plain "
                                 "for a task-prompt model, with a prompt file the model understands")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt.text}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generation_kwargs(self) -> dict[str, Any]:
        s = self.settings
        kwargs: dict[str, Any] = {"max_new_tokens": s.max_new_tokens, "do_sample": s.do_sample, "num_beams": s.num_beams,
                                  "repetition_penalty": s.repetition_penalty}
        if s.do_sample:
            kwargs.update(temperature=s.temperature, top_p=s.top_p)
        return kwargs

    def identity(self) -> dict[str, Any]:
        return {"name": "hf", "version": VERSION, **model_identity(self.settings), **self.prompt.identity(),
                "prompt_format": self.settings.prompt_format, "dtype": str(self.dtype).removeprefix("torch."),
                "generation": self.generation_kwargs()}

    def metrics(self) -> dict[str, float]:
        return {**self.throughput.metrics("recaption.backend"), "recaption.backend.truncated": float(self.truncated)}

    # ------------------------------------------------------------ captioning

    def caption(self, batch: Sequence[RawSample], context: CaptionContext) -> list[CaptionResult]:
        results: list[CaptionResult | None] = [None] * len(batch)
        images: dict[int, Any] = {}
        for index, sample in enumerate(batch):
            try:
                images[index] = sample.open_image()
            except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
                results[index] = CaptionResult.failed("image_unreadable", f"{type(error).__name__}: {error}")
        with self.throughput.timed():
            inputs, refused = self._inputs(images)
            for index, detail in refused.items():
                results[index] = CaptionResult.failed("preprocess_failed", detail)
            if inputs is not None:
                order = [i for i in images if i not in refused]
                if self.settings.do_sample:  # reproducible sampling: seeded by the batch's first sample
                    self._torch.manual_seed(stable_seed(context.seed, context.shard, batch[order[0]].key) % 2**63)
                for index, result in zip(order, self._generate(inputs)):
                    results[index] = result
        missing = [batch[i].key for i, result in enumerate(results) if result is None]
        if missing:  # a bug here must not shift captions onto other images
            raise RuntimeError(f"recaption hf: no result for {missing}")
        return results  # type: ignore[return-value]

    def _inputs(self, images: dict[int, Any]) -> tuple[Any, dict[int, str]]:
        """Processor inputs for the images it accepts, and why it refused the others.
        Tried as one batch first; only when that fails is each image tried alone."""
        if not images:
            return None, {}
        try:
            return self._process(list(images.values())), {}
        except (ValueError, TypeError, RuntimeError) as error:
            log.warning("recaption hf: the processor refused a batch (%s); finding the sample(s) it refuses", error)
        refused: dict[int, str] = {}
        for index, image in images.items():
            try:
                self._process([image])
            except (ValueError, TypeError, RuntimeError) as error:
                refused[index] = f"{type(error).__name__}: {error}"
        accepted = [image for index, image in images.items() if index not in refused]
        return (self._process(accepted) if accepted else None), refused

    def _process(self, images: list[Any]) -> Any:
        inputs = self.processor(images=images, text=[self.text] * len(images), padding=True, return_tensors="pt")
        return {name: value.to(self.device, dtype=self.dtype) if value.is_floating_point() else value.to(self.device)
                for name, value in inputs.items()}

    def _generate(self, inputs: dict[str, Any]) -> list[CaptionResult]:
        with self._torch.inference_mode():
            output = self.model.generate(**inputs, **self.generation_kwargs())
        # Decoder-only models return prompt + continuation; encoder-decoder ones the decoder
        # start token + continuation.
        if self.model.config.is_encoder_decoder:
            generated = output[:, 1:]
        else:
            generated = output[:, inputs["input_ids"].shape[1]:]
        stops = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id, *self._generation_eos()} - {None}
        results = []
        for row in generated.tolist():
            length = next((position for position, token in enumerate(row) if token in stops), None)
            finished = length is not None
            tokens = row[:length] if finished else row
            self.throughput.add(items=1, tokens=len(tokens))
            text = " ".join(self.tokenizer.decode(tokens, skip_special_tokens=True).split())
            if not finished:
                self.truncated += 1
                text = complete_sentences(text)
                if not text:
                    results.append(CaptionResult.failed("caption_truncated", f"no complete sentence within "
                                                                             f"max_new_tokens {self.settings.max_new_tokens}"))
                    continue
            results.append(CaptionResult(text=text) if text else CaptionResult.failed("empty_caption", "the model wrote nothing"))
        return results

    def _generation_eos(self) -> list[int]:
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        return list(eos) if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]


def build(config: RecaptionConfig, resources: BackendResources) -> CaptionBackend:
    return HFCaptioner(config)
