"""detect backends `owlv2` and `grounding_dino`: Hugging Face zero-shot object detectors
loaded from a local folder or a hub id.

A batch of images goes through the processor and the model at once. The backend turns
the model's output into a score for every (box, expression) pair and hands the best
`max_candidates` boxes per expression above `candidate_min_score` to the core, which
applies the same confidence threshold, box checks and NMS as for every backend
(detect.select_regions). Scores per expression, rather than the processors' one label
per box, let one box answer two expressions ("red car", "car on the left"), which the
core's class-agnostic NMS then resolves.

- OWLv2 scores each box against each text query (sigmoid of the class logits); its
  processor pads images to squares, so boxes come back through its post-processing.
- Grounding DINO scores boxes against tokens of one prompt "expr one. expr two.": an
  expression's score is the best probability over its own tokens (the phrase grounding
  of the Grounding DINO paper). Expressions that do not fit one prompt (the model reads
  256 tokens) go into further prompts for the same image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fgclip.data.detect.config import DetectConfig, HFDetectorConfig
from fgclip.data.detect.interface import Candidate, DetectContext, DetectItem, Detector, DetectorError
from fgclip.core.devices import resolve_device, resolve_dtype
from fgclip.data.detect.expressions import Expression
from fgclip.core.shards import RawSample
from fgclip.core.throughput import Throughput
from fgclip.core.hf_source import load_or_explain, model_identity

log = logging.getLogger(__name__)

VERSION = "1"
Outcome = list[list[Candidate]] | DetectorError


class HFZeroShotDetector(Detector):
    """What the two Hugging Face detectors share: loading, images, candidate picking."""

    name: str

    def __init__(self, settings: HFDetectorConfig) -> None:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.processor = load_or_explain(AutoProcessor, settings, f"{self.name} processor")
        self.model = load_or_explain(AutoModelForZeroShotObjectDetection, settings, f"{self.name} detector", dtype=self.dtype)
        self.model.to(self.device).eval()
        self.throughput = Throughput("images")
        self.expressions = 0
        self._torch = torch

    def identity(self) -> dict[str, Any]:
        s = self.settings
        return {"name": self.name, "version": VERSION, **model_identity(s), "dtype": str(self.dtype).removeprefix("torch."),
                "query": s.query, "query_template": s.query_template, "candidate_min_score": s.candidate_min_score,
                "max_candidates": s.max_candidates}

    def metrics(self) -> dict[str, float]:
        return self.throughput.metrics("detect.backend", expressions=self.expressions)

    def query(self, expression: Expression) -> str:
        text = expression.short_expr if self.settings.query == "short" else expression.long_expr
        return self.settings.query_template.format(text)

    def detect(self, image: RawSample, expressions: Sequence[Expression], context: DetectContext) -> list[list[Candidate]]:
        [outcome] = self.detect_batch([DetectItem(image, expressions, context)])
        if isinstance(outcome, DetectorError):
            raise outcome
        return outcome

    def detect_batch(self, items: Sequence[DetectItem]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(items)
        opened: dict[int, Any] = {}
        for index, item in enumerate(items):
            try:
                image = item.image.open_image()
            except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
                outcomes[index] = DetectorError(f"image does not decode: {type(error).__name__}: {error}")
                continue
            if image.size != (item.image.width, item.image.height):
                outcomes[index] = DetectorError(f"image is {image.size[0]}x{image.size[1]}, the shard says "
                                                f"{item.image.width}x{item.image.height}")
                continue
            opened[index] = image
        if opened:
            chosen = [items[i] for i in opened]
            with self.throughput.timed(), self._torch.inference_mode():
                found = self.run(chosen, list(opened.values()))
            self.throughput.add(items=len(chosen))
            self.expressions += sum(len(item.expressions) for item in chosen)
            for index, candidates in zip(opened, found):
                outcomes[index] = candidates
        return outcomes  # type: ignore[return-value]  # every slot is filled above

    def run(self, items: Sequence[DetectItem], images: list[Any]) -> list[Outcome]:
        """Candidate lists per expression (or the item's error) for each item, from one
        batched forward pass."""
        raise NotImplementedError

    def to_device(self, inputs: Any) -> dict[str, Any]:
        return {name: value.to(self.device, dtype=self.dtype) if value.is_floating_point() else value.to(self.device)
                for name, value in inputs.items()}

    def pick(self, scores: Any, boxes: Any) -> list[Candidate]:
        """The best `max_candidates` boxes of one expression above `candidate_min_score`
        (scores: one per box; boxes: pixel x1, y1, x2, y2)."""
        torch = self._torch
        scores = scores.float()
        count = min(self.settings.max_candidates, scores.numel())
        best = torch.topk(scores, count).indices.tolist() if count else []
        return [Candidate(tuple(float(v) for v in boxes[i].tolist()), float(scores[i]))  # type: ignore[arg-type]
                for i in best if float(scores[i]) >= self.settings.candidate_min_score]


class OwlV2Detector(HFZeroShotDetector):
    name = "owlv2"

    def run(self, items: Sequence[DetectItem], images: list[Any]) -> list[Outcome]:
        queries = [[self.query(e) for e in item.expressions] for item in items]
        # OWL reads a fixed 16 tokens per query: pad to that length, cut longer queries.
        inputs = self.processor(text=queries, images=images, padding="max_length", truncation=True, return_tensors="pt")
        self.throughput.add(tokens=int(inputs["attention_mask"].sum()))
        outputs = self.model(**self.to_device(inputs))
        # Boxes through the processor: it undoes the padding of each image to a square.
        sizes = [(image.height, image.width) for image in images]
        placed = self.processor.post_process_grounded_object_detection(outputs, threshold=float("-inf"), target_sizes=sizes)
        # Images with fewer queries than the batch's longest list get padding queries
        # the model does not mask: only each image's own columns are read.
        probabilities = outputs.logits.float().sigmoid()
        return [[self.pick(probabilities[row, :, column], placed[row]["boxes"]) for column in range(len(item.expressions))]
                for row, item in enumerate(items)]


class GroundingDinoDetector(HFZeroShotDetector):
    name = "grounding_dino"

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.max_tokens = min(settings.max_text_tokens, int(getattr(self.model.config, "max_text_len", 256)))

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "max_text_tokens": self.max_tokens}

    def prompts(self, expressions: Sequence[Expression]) -> list[list[int]]:
        """Expression indices per prompt: as many as fit `max_tokens` each, in order."""
        groups: list[list[int]] = [[]]
        for index, expression in enumerate(expressions):
            trial = groups[-1] + [index]
            text = self.prompt_text([expressions[i] for i in trial])
            if groups[-1] and len(self.processor.tokenizer(text)["input_ids"]) > self.max_tokens:
                groups.append([index])
            else:
                groups[-1] = trial
        return groups

    def prompt_text(self, expressions: Sequence[Expression]) -> str:
        # Grounding DINO's format: lowercase phrases, each closed by " ."
        return " ".join(f"{self.query(e).lower().strip().rstrip('.')} ." for e in expressions)

    def run(self, items: Sequence[DetectItem], images: list[Any]) -> list[Outcome]:
        from transformers.image_transforms import center_to_corners_format

        rows: list[tuple[int, list[int]]] = [(n, group) for n, item in enumerate(items) for group in self.prompts(item.expressions)]
        texts = [self.prompt_text([items[n].expressions[i] for i in group]) for n, group in rows]
        inputs = self.processor(images=[images[n] for n, _ in rows], text=texts, padding=True, truncation=True,
                                max_length=self.max_tokens, return_tensors="pt")
        self.throughput.add(tokens=int(inputs["attention_mask"].sum()))
        outputs = self.model(**self.to_device(inputs))
        probabilities = outputs.logits.float().sigmoid()  # (rows, queries, text positions)
        boxes: Any = center_to_corners_format(outputs.pred_boxes.float())  # normalised to each image, padding excluded
        found: list[Any] = [[[] for _ in item.expressions] for item in items]
        for row, ((n, group), text) in enumerate(zip(rows, texts)):
            width, height = images[n].width, images[n].height
            scale = self._torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
            pixel_boxes = boxes[row] * scale
            for index, positions in zip(group, self.token_positions(text, [items[n].expressions[i] for i in group])):
                if isinstance(found[n], DetectorError):
                    break
                if not positions:  # cannot happen with packed prompts; never let it pass unseen
                    found[n] = DetectorError(f"expression {items[n].expressions[index].short_expr!r} has no token in the prompt")
                    break
                scores = probabilities[row][:, positions].max(dim=1).values
                found[n][index] = self.pick(scores, pixel_boxes)
        return found

    def token_positions(self, text: str, expressions: Sequence[Expression]) -> list[list[int]]:
        """Token positions of each phrase of `text` (the processor's tokenization, with
        its special tokens, so positions index the model's text axis)."""
        encoded = self.processor.tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=self.max_tokens)
        spans, start = [], 0
        for expression in expressions:
            phrase = f"{self.query(expression).lower().strip().rstrip('.')}"
            begin = text.index(phrase, start)
            spans.append((begin, begin + len(phrase)))
            start = begin + len(phrase)
        positions: list[list[int]] = [[] for _ in expressions]
        for position, (first, last) in enumerate(encoded["offset_mapping"]):
            if last <= first:
                continue  # special tokens have empty offsets
            for index, (begin, end) in enumerate(spans):
                if first >= begin and last <= end:
                    positions[index].append(position)
        return positions


def build(config: DetectConfig, truth_dir: Path | None = None) -> Detector:
    """The configured Hugging Face detector (detect.backend owlv2 or grounding_dino)."""
    if config.backend == "owlv2":
        return OwlV2Detector(config.owlv2)
    if config.backend == "grounding_dino":
        return GroundingDinoDetector(config.grounding_dino)
    raise ValueError(f"detect.backend {config.backend!r} is not a Hugging Face zero-shot detector")
