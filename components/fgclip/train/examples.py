"""One training sample: image shard members + annotation records -> a tokenised `Example`
(`fgclip.train.collate` makes a padded, masked batch of a list of them).

Every random choice about a sample (which boxes when there are more than `max_boxes`,
short or long expression per box) is seeded by (seed, epoch, sample key), never by its
position in a stream, so the same sample gets the same choices whatever the order,
the worker count or a resume.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fgclip.core.seeding import stable_seed
from fgclip.core.shards import IMAGE_EXTS, annotation_path, read_jsonl
from fgclip.train.images import ImageTransform
from fgclip.train.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts (stable across processes and runs)."""
    return stable_seed(*parts, sep=":") >> 1


# ------------------------------------------------------------------- annotations


@dataclass(frozen=True)
class AnnotationDirs:
    """Stage output folders joined to the images; regions/negatives only for stage 2."""

    captions: str
    regions: str | None = None
    negatives: str | None = None

    def named(self) -> dict[str, str]:
        return {
            name: path
            for name, path in (("captions", self.captions), ("regions", self.regions), ("negatives", self.negatives))
            if path
        }


def shard_of(url: str) -> str:
    """`.../00042.tar` -> `00042`."""
    return Path(url).name.split(".")[0]


class ShardAnnotations:
    """The annotations of one shard at a time, loaded when its first sample arrives."""

    def __init__(self, dirs: AnnotationDirs) -> None:
        self.dirs = dirs
        self.shard: str | None = None
        self.records: dict[str, dict[str, dict[str, Any]]] = {}

    def for_shard(self, shard: str) -> dict[str, dict[str, dict[str, Any]]]:
        if shard != self.shard:
            self.shard = shard
            self.records = {name: self._load(name, folder, shard) for name, folder in self.dirs.named().items()}
        return self.records

    @staticmethod
    def _load(name: str, folder: str, shard: str) -> dict[str, dict[str, Any]]:
        path = annotation_path(folder, shard)
        effect = "its boxes get no negatives" if name == "negatives" else "its samples are skipped"
        try:
            return {record["key"]: record for record in read_jsonl(path)}
        except FileNotFoundError:
            log.warning("shard %s has no %s file %s: %s", shard, name, path, effect)
        except (ValueError, KeyError, TypeError) as error:
            log.error("shard %s: %s file %s is unreadable (%s): %s", shard, name, path, error, effect)
        return {}


# ------------------------------------------------------------------------ texts


class TextTokenizer:
    """The model's tokenizer, loaded once per process (DataLoader workers included).

    Texts go straight to the tokenizer's Rust backend, set to truncate at each length
    used: the same ids as the transformers call (checked on the first texts of each
    length; the transformers call is used where they differ) without its per-call Python.
    Ids of texts seen before come from a bounded per-process cache: hard negatives and
    region expressions repeat across a dataset, and a text costs the tokenizer about as
    much as decoding a small image's worth of pixels.
    """

    #: cached texts per length before the cache starts over (a few MB at most)
    CACHE_SIZE = 1 << 16

    def __init__(self, model_dir: str | Path) -> None:
        self.model_dir = str(model_dir)
        self._tokenizer: Any = None
        self._backends: dict[int, Any] = {}  # max_length -> truncating backend, or None: use the transformers call
        self._cache: dict[int, dict[str, list[int]]] = {}  # max_length -> text -> ids

    def __getstate__(self) -> dict[str, Any]:
        return {
            "model_dir": self.model_dir,
            "_tokenizer": None,
            "_backends": {},
            "_cache": {},
        }

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.model_dir)
        return self._tokenizer

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def encode(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Token ids with start/end tokens, truncated to `max_length` (the end token kept)."""
        if not texts:
            return []
        cache = self._cache.setdefault(max_length, {})
        missing = list(dict.fromkeys(text for text in texts if text not in cache))
        if missing:
            if len(cache) + len(missing) > self.CACHE_SIZE:
                cache.clear()
                missing = list(dict.fromkeys(texts))
            cache.update(zip(missing, self._encode(missing, max_length)))
        return [list(cache[text]) for text in texts]

    def _encode(self, texts: list[str], max_length: int) -> list[list[int]]:
        if max_length not in self._backends:
            self._backends[max_length] = self._truncating_backend(texts, max_length)
        backend = self._backends[max_length]
        if backend is None:
            return self.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        return [encoding.ids for encoding in backend.encode_batch_fast(texts)]

    def _truncating_backend(self, texts: list[str], max_length: int) -> Any:
        """A copy of the Rust backend truncating at `max_length`, if it gives exactly the
        transformers call's ids on `texts` (a tokenizer may add tokens in Python); else None."""
        source = getattr(self.tokenizer, "backend_tokenizer", None)
        if source is None:
            return None
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(source.to_str())
        backend.no_padding()
        backend.enable_truncation(max_length, direction=getattr(self.tokenizer, "truncation_side", "right"))
        expected = self.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        if [encoding.ids for encoding in backend.encode_batch_fast(texts)] != expected:
            log.warning(
                "%s: the tokenizer's backend gives other ids than its transformers call; "
                "tokenising through transformers (slower)",
                self.model_dir,
            )
            return None
        return backend


# ---------------------------------------------------------------- the examples


@dataclass(frozen=True)
class StreamSettings:
    """Everything a worker needs to turn raw samples into batches (picklable)."""

    model_dir: str
    dirs: AnnotationDirs
    stage: int
    seed: int
    batch_size: int
    max_boxes: int
    max_negatives: int
    short_prefix: str
    short_text_length: int
    long_text_length: int
    min_box_visible_fraction: float
    long_expression_rate: float
    shuffle_buffer: int
    log_skipped_samples: int


@dataclass
class Example:
    """One tokenised training sample."""

    key: str
    pixels: np.ndarray  # uint8 (H, W, 3): normalised batched, where the batch is used
    short_ids: list[int]
    long_ids: list[int]
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    box_ids: list[list[int]] = field(default_factory=list)
    box_uses_short: list[bool] = field(default_factory=list)
    pos_ids: list[list[int]] = field(default_factory=list)  # short expression; [] where the box text is it already
    neg_ids: list[list[list[int]]] = field(default_factory=list)


class SkipSample(Exception):
    """A sample the stream drops, with a reason code (counted and logged)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _negative_texts(region: dict[str, Any], limit: int) -> list[str]:
    negatives = region.get("short_expr_negs") or []
    if isinstance(negatives, dict):  # FineHARD shape: {"0": text, "1": text, ...}
        negatives = [negatives[k] for k in sorted(negatives, key=lambda k: int(k) if str(k).isdigit() else str(k))]
    return [text.strip() for text in negatives if isinstance(text, str) and text.strip()][:limit]


class ExampleBuilder:
    """Raw webdataset sample + its annotation records -> `Example` (pure per sample)."""

    def __init__(
        self, settings: StreamSettings, transform: ImageTransform, tokenizer: TextTokenizer, epoch: int
    ) -> None:
        self.settings = settings
        self.transform = transform
        self.tokenizer = tokenizer
        self.epoch = epoch

    def __call__(self, sample: dict[str, Any], records: dict[str, dict[str, Any] | None]) -> Example:
        key = sample["__key__"]
        settings = self.settings
        caption = records.get("captions")
        if caption is None:
            raise SkipSample("missing_caption", "no long caption for this sample")
        long_caption = str(caption.get("long_caption") or "").strip()
        if not long_caption:
            raise SkipSample("empty_caption", "the long caption is empty")
        regions = records.get("regions")
        if settings.stage == 2 and regions is None:
            raise SkipSample("missing_regions", "no regions record for this sample")
        alt_text = (sample.get("txt") or b"").decode("utf-8", errors="replace").strip()
        if not alt_text:
            raise SkipSample("missing_alt_text", "no alt text (.txt) for the short caption")
        image_ext = next((ext for ext in IMAGE_EXTS if ext in sample), None)
        if image_ext is None:
            raise SkipSample("missing_image", "no image member")
        try:
            image, full_size = self.transform.decode(sample[image_ext])
        except (
            OSError,
            SyntaxError,
            ValueError,
            Image.DecompressionBombError,
        ) as error:
            raise SkipSample("corrupt_image", f"image cannot be decoded: {error}") from error

        short_texts = [settings.short_prefix + alt_text]
        example = Example(
            key=key,
            pixels=self.transform.pixels(image, full_size),
            short_ids=[],
            long_ids=[],
        )
        if settings.stage == 2 and regions is not None:
            region_texts, layout = self._add_regions(example, regions, records.get("negatives"), full_size)
            short_texts += region_texts
        ids = self.tokenizer.encode(short_texts, settings.short_text_length)
        example.short_ids = ids[0]
        example.long_ids = self.tokenizer.encode([long_caption], settings.long_text_length)[0]
        if settings.stage == 2:
            _fill_region_ids(example, ids[1:], layout)
        return example

    def _add_regions(
        self,
        example: Example,
        regions_record: dict[str, Any],
        negatives_record: dict[str, Any] | None,
        image_size: tuple[int, int],
    ) -> tuple[list[str], list[tuple[bool, int]]]:
        """Pick boxes and their texts.

        Returns the texts to tokenise (box texts, then positives, then negatives) and per
        box (needs its own positive text, number of negatives).
        """
        settings = self.settings
        rng = random.Random(derive_seed(settings.seed, self.epoch, example.key, "regions"))
        regions = regions_record.get("regions") or []
        negatives = (negatives_record or {}).get("regions")
        if negatives is not None and len(negatives) != len(regions):
            log.warning(
                "sample %s: %d negative entries for %d regions; its negatives are ignored",
                example.key,
                len(negatives),
                len(regions),
            )
            negatives = None
        candidates = []
        for index, region in enumerate(regions):
            short_expr = str(region.get("short_expr") or "").strip()
            long_expr = str(region.get("long_expr") or "").strip()
            bbox = region.get("bbox")
            if not (short_expr or long_expr) or not isinstance(bbox, (list, tuple)) or len(bbox) < 4:
                continue
            box, visible = self.transform.map_box(bbox, *image_size)
            if visible >= settings.min_box_visible_fraction and box[2] > box[0] and box[3] > box[1]:
                candidates.append((index, box, short_expr, long_expr))
        if len(candidates) > settings.max_boxes:
            candidates = sorted(rng.sample(candidates, settings.max_boxes))
        box_texts, pos_texts, neg_texts = [], [], []
        layout: list[tuple[bool, int]] = []
        for index, box, short_expr, long_expr in candidates:
            use_long = rng.random() < settings.long_expression_rate
            uses_short = not (use_long and long_expr) and bool(short_expr)
            box_texts.append(short_expr if uses_short else long_expr)
            negs = _negative_texts(negatives[index], settings.max_negatives) if negatives and short_expr else []
            needs_positive = bool(negs) and not uses_short
            if needs_positive:
                pos_texts.append(short_expr)
            neg_texts.extend(negs)
            example.boxes.append(box)
            example.box_uses_short.append(uses_short)
            layout.append((needs_positive, len(negs)))
        return box_texts + pos_texts + neg_texts, layout


def _fill_region_ids(example: Example, ids: list[list[int]], layout: list[tuple[bool, int]]) -> None:
    """Distribute token ids laid out as `_add_regions` returned the texts."""
    count = len(example.boxes)
    positive_count = sum(needs for needs, _ in layout)
    example.box_ids = ids[:count]
    positives = iter(ids[count : count + positive_count])
    negatives = iter(ids[count + positive_count :])
    for needs_positive, neg_count in layout:
        example.pos_ids.append(next(positives) if needs_positive else [])
        example.neg_ids.append([next(negatives) for _ in range(neg_count)])
