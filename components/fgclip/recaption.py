"""recaption: a long, detailed caption for every image of a shard (caption_record).

The core (`RecaptionStage`) reads an image shard through `RawShardReader` (whose
rejects pass straight through), hands the valid samples in batches to a
`CaptionBackend`, and turns each result into a caption record or a `Reject`. Backends
are looked up by `params.recaption.backend` in `BACKENDS`; a real one (a Hugging Face
VLM, an OpenAI-compatible endpoint) implements the same three methods.

The `demo` backend is a teacher for the demo world: it reads the world's truth sidecar
(given to its constructor, never read by the core) and writes varied, natural captions
with a controlled error rate. Every object mention has the form
    [a|an|the] <size> <colour> <pattern> <shape>
followed optionally by a position or relation phrase; the pattern is always written,
"solid" included, so an exact mention names all four attributes and a rule-based
extractor (a maximal run of lexicon words before an OBJECT_NOUNS head) recovers it.
A relation phrase refers to another mentioned object by its shortest unambiguous
description ("above the green square"). Backdrops are worded without object nouns.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgclip.config import DemoRecaptionTeacher, Params, RecaptionConfig
from fgclip.seeding import seeded_random
from fgclip.lexicon import ATTRIBUTE_LEXICON, COLOURS, PATTERNS, SIZES
from fgclip.backends import BackendRegistry
from fgclip.component import add_stage_arguments
from fgclip.shards import RawSample, RawShardReader, Reject, batched, read_jsonl
from fgclip.stage import ShardResult, ShardStage
from fgclip.storage import local_path

log = logging.getLogger(__name__)

HELP = "write a long, detailed caption for every image (caption records per shard)"
STAGE = "recaption"
REASON_PATTERN = re.compile(r"^[a-z_]+$")


# ---------------------------------------------------------------- backend interface

@dataclass(frozen=True)
class CaptionContext:
    """What a backend may know about the batch besides the samples themselves."""

    shard: str
    seed: int


@dataclass(frozen=True)
class CaptionResult:
    """A caption, or the reason code (and detail) why this one sample got none."""

    text: str | None = None
    error: str | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if (self.text is None) == (self.error is None):
            raise ValueError("a CaptionResult holds either a caption text or an error reason")
        if self.error is not None and not REASON_PATTERN.match(self.error):
            raise ValueError(f"reject reason {self.error!r} must match {REASON_PATTERN.pattern} (the data contract)")

    @classmethod
    def failed(cls, reason: str, detail: str) -> "CaptionResult":
        return cls(error=reason, detail=detail)


class CaptionBackend(ABC):
    """Writes long captions for a batch of samples."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Name, version and prompt/rules hash; part of the stage fingerprint."""

    def shard_inputs(self, shard: str) -> dict[str, Path]:
        """Extra input files the backend reads for `shard` (fingerprinted with the images)."""
        return {}

    @abstractmethod
    def caption(self, batch: Sequence[RawSample], context: CaptionContext) -> list[CaptionResult]:
        """One result per sample, in order; a per-sample failure is a result, not an exception."""

    def metrics(self) -> dict[str, float]:
        """Throughput of a model backend (images/s, tokens/s), logged to MLflow by the stage."""
        return {}


@dataclass(frozen=True)
class BackendResources:
    """Things a backend may need beyond its config section (paths, clients)."""

    truth_dir: Path | None = None


BackendFactory = Callable[[RecaptionConfig, BackendResources], CaptionBackend]
BACKENDS: BackendRegistry[BackendFactory] = BackendRegistry("recaption backend")
register_backend = BACKENDS.register


def make_backend(config: RecaptionConfig, resources: BackendResources) -> CaptionBackend:
    """The configured backend; ValueError when it is unknown or misconfigured."""
    return BACKENDS.factory(config.backend)(config, resources)


# ---------------------------------------------------------------- the stage

class RecaptionStage(ShardStage):
    name = STAGE
    record_kind = "caption_record"

    def __init__(self, images_dir: str | Path, truth_dir: str | Path | None, config: RecaptionConfig, seed: int,
                 *, backend: CaptionBackend | None = None) -> None:
        self.images_dir = local_path(images_dir)
        self.config = config
        self.seed = seed
        resources = BackendResources(truth_dir=local_path(truth_dir) if truth_dir is not None else None)
        self.backend = backend if backend is not None else make_backend(config, resources)

    def shard_inputs(self, shard: str) -> dict[str, Path]:
        return {"images": self.images_dir / f"{shard}.tar", **self.backend.shard_inputs(shard)}

    def settings(self) -> dict[str, Any]:
        # A model backend's section also says where it runs (URL, device, local path): its
        # identity carries what decides the captions (model and digest, prompt, decoding).
        config = self.config.model_dump(mode="json", exclude={"hf", "openai"})
        return {"config": config, "seed": self.seed, "backend": self.backend.identity()}

    def metrics(self) -> dict[str, float]:
        return self.backend.metrics()

    def process_shard(self, shard: str) -> ShardResult:
        reader = RawShardReader(self.images_dir / f"{shard}.tar")
        context = CaptionContext(shard, self.seed)
        records: list[dict[str, Any]] = []
        failures: list[Reject] = []
        read = 0
        for batch in batched(reader, self.config.batch_size):
            read += len(batch)
            # A backend exception (endpoint down, out of memory) stops the run: the shard is
            # not written, and a rerun resumes here. Only per-sample failures become rejects.
            results = self.backend.caption(batch, context)
            if len(results) != len(batch):  # a broken backend must not shift captions onto other images
                raise RuntimeError(f"caption backend returned {len(results)} results for {len(batch)} samples")
            for sample, result in zip(batch, results):
                text = " ".join(result.text.split()) if result.text is not None else ""
                if result.error is not None:
                    failures.append(Reject(shard, sample.key, result.error, result.detail, stage=STAGE))
                elif not text:
                    failures.append(Reject(shard, sample.key, "empty_caption", "the backend returned an empty caption", stage=STAGE))
                else:
                    records.append({"key": sample.key, "long_caption": text})
        rejects = reader.rejects + failures
        dropped_on_read = sum(1 for item in reader.rejects if item.dropped)
        return ShardResult(records, rejects, items_in=read + dropped_on_read)


# ---------------------------------------------------------------- the demo teacher

TEACHER_VERSION = "1"
ATTRIBUTE_ORDER = ("size", "colour", "pattern")  # the order words take before the shape noun
ATTRIBUTE_VOCAB: dict[str, tuple[str, ...]] = {"size": SIZES, "colour": tuple(COLOURS), "pattern": PATTERNS}
# Shortest reference first; the first that no other mentioned object of the same shape shares wins.
REFERENCE_ATTRIBUTES: tuple[tuple[str, ...], ...] = (("colour",), ("size", "colour"), ("colour", "pattern"), ATTRIBUTE_ORDER)
COUNT_WORDS = ATTRIBUTE_LEXICON["count"]  # "one", "two", ...
VOWELS = "aeiou"

SCENE_TEMPLATES: tuple[str, ...] = (
    "This image shows {things} on {backdrop}.",
    "The picture contains {things} drawn over {backdrop}.",
    "{backdrop}, with {things} drawn on top of it.",
    "A simple graphic of {things} placed on {backdrop}.",
)
EMPTY_SCENE_TEMPLATES: tuple[str, ...] = ("This image shows {backdrop}.", "The picture is {backdrop}.")
SHAPE_WORDS: tuple[str, ...] = ("shapes", "geometric shapes", "figures")
PLAIN_BACKDROPS: tuple[str, ...] = ("a plain light {0} background", "a flat light {0} backdrop", "an even light {0} background")
GRADIENT_BACKDROPS: tuple[str, ...] = ("{description}", "a soft light {0} and light {1} gradient")
OBJECT_TEMPLATES: tuple[str, ...] = (
    "{where} there is {np}{rel}.",
    "{np} sits {where}{rel}.",
    "{np} is placed {where}{rel}.",
    "{where}, you can see {np}{rel}.",
    "There is {np} {where}{rel}.",
    "{np} appears {where}{rel}.",
)
LEADING_RELATION_TEMPLATE = "{rel}, there is {np}."
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left corner", "near the upper left corner", "at the top left"),
    "top": ("near the top", "at the top of the image", "along the upper edge"),
    "top right": ("in the top right corner", "near the upper right corner", "at the top right"),
    "left": ("on the left", "on the left side", "toward the left edge"),
    "center": ("in the center", "in the middle of the image", "near the center"),
    "right": ("on the right", "on the right side", "toward the right edge"),
    "bottom left": ("in the bottom left corner", "near the lower left corner", "at the bottom left"),
    "bottom": ("near the bottom", "at the bottom of the image", "along the lower edge"),
    "bottom right": ("in the bottom right corner", "near the lower right corner", "at the bottom right"),
}
UNKNOWN_POSITION_PHRASES: tuple[str, ...] = ("in the image",)
PREDICATE_PHRASES: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "just above"),
    "below": ("below", "just below"),
}
INVERSE_PREDICATE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _rules_hash() -> str:
    rules = [SCENE_TEMPLATES, EMPTY_SCENE_TEMPLATES, SHAPE_WORDS, PLAIN_BACKDROPS, GRADIENT_BACKDROPS,
             OBJECT_TEMPLATES, LEADING_RELATION_TEMPLATE, POSITION_PHRASES, UNKNOWN_POSITION_PHRASES,
             PREDICATE_PHRASES, ATTRIBUTE_ORDER, ATTRIBUTE_VOCAB, REFERENCE_ATTRIBUTES]
    return hashlib.sha256(json.dumps(rules, sort_keys=True).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Mention:
    """An object as the teacher describes it (possibly with one wrong attribute)."""

    id: int
    shape: str
    position: str
    words: dict[str, str] = field(hash=False)

    def noun_phrase(self, attributes: Sequence[str] = ATTRIBUTE_ORDER, article: str | None = None) -> str:
        body = " ".join([*(self.words[name] for name in ATTRIBUTE_ORDER if name in attributes), self.shape])
        if article is None:
            article = "an" if body[0] in VOWELS else "a"
        return f"{article} {body}"


def teacher_mention(obj: dict[str, Any], key: str, seed: int, config: DemoRecaptionTeacher) -> Mention | None:
    """The teacher's view of one truth object: None when missed, else its words, one maybe wrong.

    Seeded per (seed, key, object id), so each object's fate is independent of the
    others, of the order of samples and of any other part of the caption.
    """
    rng = seeded_random(seed, STAGE, key, "object", obj["id"])
    missed = rng.random() < config.miss_rate
    wrong = rng.random() < config.attribute_error_rate
    attribute = rng.choice(ATTRIBUTE_ORDER)
    if missed:
        return None
    words = {name: obj[name] for name in ATTRIBUTE_ORDER}
    if wrong:
        words[attribute] = rng.choice([word for word in ATTRIBUTE_VOCAB[attribute] if word != obj[attribute]])
    return Mention(obj["id"], obj["shape"], obj["position"], words)


def _reference(mention: Mention, mentions: Sequence[Mention]) -> str:
    """The shortest "the ..." description that no other mentioned object of that shape shares."""
    rivals = [m for m in mentions if m.id != mention.id and m.shape == mention.shape]
    for attributes in REFERENCE_ATTRIBUTES:
        if all(any(r.words[a] != mention.words[a] for a in attributes) for r in rivals):
            return mention.noun_phrase(attributes, "the")
    return mention.noun_phrase(ATTRIBUTE_ORDER, "the")


def _backdrop(background: dict[str, Any], rng: random.Random) -> str:
    kind, colours = background.get("kind"), background.get("colours") or []
    if kind == "plain" and colours:
        return rng.choice(PLAIN_BACKDROPS).format(*colours)
    if kind == "gradient" and len(colours) >= 2:
        return rng.choice(GRADIENT_BACKDROPS).format(*colours, description=background.get("description", ""))
    return str(background.get("description") or "a background")


def _things(count: int, rng: random.Random) -> str:
    noun = rng.choice(SHAPE_WORDS)
    if count == 1:
        return f"a single {noun[:-1]}"  # "shapes" -> "shape"
    return f"{COUNT_WORDS[count - 1] if count <= len(COUNT_WORDS) else count} {noun}"


def _relation_phrase(mention: Mention, by_id: dict[int, Mention], mentions: Sequence[Mention],
                     relations: Sequence[dict[str, Any]], rng: random.Random) -> str | None:
    """"above the green square" for a relation between `mention` and another mentioned object."""
    options = []
    for relation in relations:
        predicate = relation.get("predicate")
        if predicate not in PREDICATE_PHRASES:
            continue
        if relation.get("subject") == mention.id and relation.get("object") in by_id:
            options.append((predicate, by_id[relation["object"]]))
        elif relation.get("object") == mention.id and relation.get("subject") in by_id:
            options.append((INVERSE_PREDICATE[predicate], by_id[relation["subject"]]))
    if not options:
        return None
    predicate, other = rng.choice(options)
    return f"{rng.choice(PREDICATE_PHRASES[predicate])} {_reference(other, mentions)}"


def _capitalised(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def describe(truth: dict[str, Any], key: str, seed: int, config: DemoRecaptionTeacher) -> str:
    """The teacher's long caption of one truth record (pure, deterministic)."""
    mentions = [m for m in (teacher_mention(obj, key, seed, config) for obj in truth["objects"]) if m is not None]
    rng = seeded_random(seed, STAGE, key, "caption")
    backdrop = _backdrop(truth.get("background") or {}, rng)
    if mentions:
        scene = rng.choice(SCENE_TEMPLATES).format(things=_things(len(mentions), rng), backdrop=backdrop)
    else:
        scene = rng.choice(EMPTY_SCENE_TEMPLATES).format(backdrop=backdrop)
    sentences = [_capitalised(scene)]
    by_id = {m.id: m for m in mentions}
    order = list(mentions)
    rng.shuffle(order)
    for mention in order:
        noun_phrase = mention.noun_phrase()
        where = rng.choice(POSITION_PHRASES.get(mention.position, UNKNOWN_POSITION_PHRASES))
        wants_relation = rng.random() < config.relation_rate
        leading = rng.random() < 1 / (len(OBJECT_TEMPLATES) + 1)  # as likely as any one template
        template = rng.choice(OBJECT_TEMPLATES)
        relation = _relation_phrase(mention, by_id, mentions, truth.get("relations") or [], rng) if wants_relation else None
        if relation is not None and leading:
            sentence = LEADING_RELATION_TEMPLATE.format(rel=relation, np=noun_phrase)
        else:
            sentence = template.format(where=where, np=noun_phrase, rel=f", {relation}" if relation else "")
        sentences.append(_capitalised(sentence))
    return " ".join(sentences)


def truth_problem(record: Any) -> str | None:
    """Why a truth record cannot be captioned, or None."""
    if not isinstance(record, dict) or not isinstance(record.get("objects"), list):
        return "truth record has no 'objects' list"
    for index, obj in enumerate(record["objects"]):
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), int):
            return f"object {index} has no integer 'id'"
        for name in ("shape", "position", *ATTRIBUTE_ORDER):
            if not isinstance(obj.get(name), str) or not obj[name]:
                return f"object {index} has no '{name}' word"
    if not isinstance(record.get("relations", []), list):
        return "truth 'relations' is not a list"
    return None


class DemoCaptionTeacher(CaptionBackend):
    """Captions demo-world images from their truth sidecar, with seeded errors."""

    def __init__(self, config: DemoRecaptionTeacher, truth_dir: str | Path) -> None:
        self.config = config
        self.truth_dir = local_path(truth_dir)
        if not self.truth_dir.is_dir():
            raise ValueError(f"the demo caption teacher needs the truth folder; {self.truth_dir} is not a folder")
        # (shard, truth records by key or None, the failure every sample gets when None)
        self._cached: tuple[str, dict[str, Any] | None, CaptionResult | None] | None = None

    def identity(self) -> dict[str, Any]:
        return {"name": "demo", "version": TEACHER_VERSION, "rules_hash": _rules_hash()}

    def truth_file(self, shard: str) -> Path:
        return self.truth_dir / f"{shard}.jsonl"

    def shard_inputs(self, shard: str) -> dict[str, Path]:
        # Only when present: a missing sidecar rejects the shard's samples instead of stopping the run.
        path = self.truth_file(shard)
        return {"truth": path} if path.is_file() else {}

    def _truth(self, shard: str) -> tuple[dict[str, Any] | None, CaptionResult | None]:
        if self._cached is None or self._cached[0] != shard:
            path = self.truth_file(shard)
            try:
                records = {record.get("key"): record for record in read_jsonl(path) if isinstance(record, dict)}
                self._cached = (shard, records, None)
            except FileNotFoundError:
                self._cached = (shard, None, CaptionResult.failed("no_truth", f"truth file {path} does not exist"))
            except (OSError, ValueError) as error:
                self._cached = (shard, None, CaptionResult.failed("bad_truth", f"truth file {path} is unreadable: {error}"))
            if self._cached[2] is not None:
                log.warning("shard %s: %s; its samples are rejected", shard, self._cached[2].detail)
        return self._cached[1], self._cached[2]

    def caption(self, batch: Sequence[RawSample], context: CaptionContext) -> list[CaptionResult]:
        records, failure = self._truth(context.shard)
        if records is None:
            return [failure or CaptionResult.failed("no_truth", "no truth records")] * len(batch)
        return [self._caption_one(sample, records, context) for sample in batch]

    def _caption_one(self, sample: RawSample, records: dict[str, Any], context: CaptionContext) -> CaptionResult:
        record = records.get(sample.key)
        if record is None:
            return CaptionResult.failed("no_truth", f"no truth record for key {sample.key!r} in {self.truth_file(context.shard)}")
        why = truth_problem(record)
        if why is not None:
            return CaptionResult.failed("bad_truth", why)
        if (record.get("width"), record.get("height")) != (sample.width, sample.height):
            return CaptionResult.failed("truth_mismatch", f"truth describes a {record.get('width')}x{record.get('height')} image, "
                                                          f"the image is {sample.width}x{sample.height}")
        return CaptionResult(text=describe(record, sample.key, context.seed, self.config))


@register_backend("demo")
def _demo_backend(config: RecaptionConfig, resources: BackendResources) -> CaptionBackend:
    if resources.truth_dir is None:
        raise ValueError("recaption backend 'demo' reads the demo world's truth: pass the truth folder (--truth)")
    return DemoCaptionTeacher(config.demo, resources.truth_dir)


@register_backend("hf")
def _hf_backend(config: RecaptionConfig, resources: BackendResources) -> CaptionBackend:
    from fgclip.vision.recaption_hf import HFCaptioner  # torch and transformers only when this backend runs

    return HFCaptioner(config)


@register_backend("openai")
def _openai_backend(config: RecaptionConfig, resources: BackendResources) -> CaptionBackend:
    from fgclip.llm.recaption_openai import endpoint_backend  # httpx only when configured

    return endpoint_backend(config)


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="folder of image shards (NNNNN.tar)")
    parser.add_argument("--truth", default=None, help="demo world truth folder (needed by the demo backend)")
    add_stage_arguments(parser, "caption")


def command(args: argparse.Namespace, params: Params) -> int:
    from fgclip.cli import ComponentError
    from fgclip.component import run_tracked_stage, select_shards
    from fgclip.llm.chat import EndpointDown

    shards, every_shard = select_shards(args.images, args.shards)
    try:
        stage = RecaptionStage(args.images, args.truth, params.recaption, params.seed)
    except ValueError as error:
        raise ComponentError(str(error)) from error
    inputs = {"images": args.images, **({"truth": args.truth} if args.truth else {})}
    try:
        summary, _ = run_tracked_stage(stage, params=params, shards=shards, out=args.out, report=args.report,
                                       inputs=inputs, progress=not args.no_progress, prune=every_shard)
    except EndpointDown as error:  # finished shards are on disk; a rerun resumes after them
        raise ComponentError(f"recaption stopped: {error}") from error
    print(json.dumps(summary.as_dict()))
    return 0
