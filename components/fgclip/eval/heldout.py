"""The demo world's held-out split as a labelled test set, and the questions the demo
tasks ask of it.

Held-out demo-world tasks are built from the held-out image shards and their truth
sidecar (here the truth is legitimately the labelled test set):

- ``fgovd_demo``: FG-OVD on the demo world. For every truth object, its box, the full
  attribute phrase as positive ("large red striped circle") and hard negatives from the
  project's negative generator, seeded by (eval seed, key, object id). Top-1 accuracy
  of the region embedding over the 1 + N texts, plus the pairwise win rate against
  negatives that change 1, 2, ... attributes.
- ``box_cls``: region embedding vs one class prompt per shape; top-1 accuracy.
- ``long`` / ``short`` retrieval: image->text and text->image recall@k with the
  error-free teacher caption (long, 248 tokens) and the alt-text (short, 77 tokens).
- ``zero_shot``: image classification with prompt-template ensembles; the label is
  the shape of the largest object.
"""

from __future__ import annotations

import io
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from fgclip.core.seeding import keyed_random
from fgclip.core.shards import RawShardReader, Reject, list_shards
from fgclip.core.storage import local_path
from fgclip.data.negatives.interface import build_generator
from fgclip.data.negatives.validation import select_valid
from fgclip.demo.captions import describe
from fgclip.demo.truth import TRUTH_ATTRIBUTES, TruthSidecar, TruthUnavailable, checked_record
from fgclip.text.lexicon import SHAPES, attribute_class

if TYPE_CHECKING:
    from fgclip.config import Params

log = logging.getLogger(__name__)

STAGE = "eval"


@dataclass(frozen=True)
class HeldoutSample:
    shard: str
    key: str
    image_bytes: bytes
    alt_text: str
    truth: dict[str, Any]

    @property
    def objects(self) -> list[dict[str, Any]]:
        return self.truth["objects"]

    def open_image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.image_bytes)).convert("RGB")

    def boxes(self) -> np.ndarray:
        return np.asarray([obj["bbox"] for obj in self.objects], dtype=np.float64).reshape(-1, 4)


@dataclass
class HeldoutWorld:
    samples: list[HeldoutSample] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)

    def reject_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self.rejects if r.dropped).items()))


def load_heldout(images_dir: str | Path, truth_dir: str | Path) -> HeldoutWorld:
    """Held-out samples joined with their truth; everything unusable is a counted Reject."""
    world = HeldoutWorld()
    truth = TruthSidecar(truth_dir)
    for shard in list_shards(images_dir):
        reader = RawShardReader(local_path(images_dir) / f"{shard}.tar")
        for raw in reader:
            try:
                record = checked_record(truth, shard, raw.key, raw.width, raw.height)
            except TruthUnavailable as problem:
                world.rejects.append(Reject(shard, raw.key, problem.reason, problem.detail, stage=STAGE))
                log.warning("eval: %s [%s] %s", problem.reason, raw.key, problem.detail)
                continue
            world.samples.append(HeldoutSample(shard, raw.key, raw.image_bytes, raw.caption, record))
        world.rejects.extend(reader.rejects)
    return world


def attribute_phrase(obj: Mapping[str, Any]) -> str:
    """A truth object's full short expression, in the caption teacher's word order:
    "large red striped circle" (the pattern always written, "solid" included)."""
    return " ".join([*(str(obj[name]) for name in TRUTH_ATTRIBUTES), str(obj["shape"])])


def changed_attributes(positive: str, negative: str) -> int:
    """How many attribute classes (colour, pattern, size, material, ...) differ."""

    def by_class(text: str) -> dict[str, set[str]]:
        classes: dict[str, set[str]] = defaultdict(set)
        for word in text.lower().split():
            name = attribute_class(word)
            if name is not None:
                classes[name].add(word)
        return classes

    a, b = by_class(positive), by_class(negative)
    return sum(a.get(name, set()) != b.get(name, set()) for name in set(a) | set(b))


def long_caption(sample: HeldoutSample, params: Params) -> str:
    """The demo caption teacher's description with every error rate at zero."""
    exact = params.recaption.demo.model_copy(update={"attribute_error_rate": 0.0, "miss_rate": 0.0})
    return describe(sample.truth, sample.key, params.eval.seed, exact)


def short_caption(sample: HeldoutSample, params: Params) -> str:
    """The alt-text, prefixed as in training ("a photo of ...")."""
    return f"{params.train.short_prefix}{sample.alt_text}"


def largest_object(sample: HeldoutSample) -> dict[str, Any] | None:
    def area(obj: Mapping[str, Any]) -> float:
        x1, y1, x2, y2 = obj["bbox"]
        return (x2 - x1) * (y2 - y1)

    return max(sample.objects, key=area, default=None)


@dataclass(frozen=True)
class RegionChoice:
    """Which of these texts describes region ``region`` of image ``image``?"""

    image: int
    region: int
    candidates: tuple[str, ...]
    target: int
    changed: tuple[int, ...] = ()  # per candidate: attributes it changes (0 for the target)


def fgovd_demo_choices(world: HeldoutWorld, params: Params) -> tuple[list[RegionChoice], int]:
    """FG-OVD-style questions for every truth object; also how many got fewer negatives."""
    generator = build_generator(params.negatives)
    count = params.eval.negatives_per_region
    choices, short_sets = [], 0
    for image, sample in enumerate(world.samples):
        for region, obj in enumerate(sample.objects):
            positive = attribute_phrase(obj)
            rng = keyed_random(params.eval.seed, sample.key, obj["id"])
            negatives = select_valid(positive, generator.generate(positive, count, rng), count)
            if not negatives:
                log.warning("eval: no negatives for %r [%s]; question left out", positive, sample.key)
                short_sets += 1
                continue
            short_sets += len(negatives) < count
            candidates = (positive, *negatives)
            changed = tuple(changed_attributes(positive, text) for text in candidates)
            choices.append(RegionChoice(image, region, candidates, 0, changed))
    return choices, short_sets


def box_classification_choices(world: HeldoutWorld, params: Params) -> list[RegionChoice]:
    prompts = tuple(params.eval.box_prompt.format(shape) for shape in SHAPES)
    return [
        RegionChoice(image, region, prompts, SHAPES.index(obj["shape"]))
        for image, sample in enumerate(world.samples)
        for region, obj in enumerate(sample.objects)
    ]
