"""detect: box the referring expressions of each image's long caption.

For every sample of an image shard with a caption record: extract expressions
(`fgclip.expressions`), ask a `Detector` backend for candidate boxes per expression,
then apply the paper's selection in the core, the same for every backend: keep scores
>= min_confidence, clip to the image, drop degenerate and tiny boxes, class-agnostic NMS
across all expressions of the image, cap at max_regions. Each dropped candidate is a
Reject with dropped=False (low_confidence, invalid_score, box_degenerate,
box_outside_image, box_too_small, nms_suppressed, over_max_regions), so the stage
report's "ignored" counts show what the threshold and NMS removed. A sample whose
expressions all fail is still written with `regions: []` (it stays usable for global
training) and counted as `no_regions` (`no_expressions` when its caption names no
object); a sample without a caption record is dropped (`no_caption`).

Backends register by name (`params.detect.backend`). `demo` is a teacher that reads
the demo world's truth sidecar; `owlv2` and `grounding_dino` (Hugging Face) and
`yolo_world` (ultralytics) are open-vocabulary detectors in `fgclip.vision`, imported only
when chosen. All return pixel boxes with scores, for a batch of images at once
(`Detector.detect_batch`, `detect.batch_size` images per call).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgclip import boxes, schema
from fgclip.backends import BackendRegistry
from fgclip.component import add_stage_arguments, run_tracked_stage
from fgclip.config import DetectConfig, Params
from fgclip.expressions import (Expression, ExpressionExtractor, build_extractor, head_noun, location_words, noun_lemma,
                                tokenize)
from fgclip.lexicon import attribute_class
from fgclip.seeding import keyed_random
from fgclip.shards import RawSample, RawShardReader, Reject, annotation_path, batched, read_jsonl
from fgclip.stage import ShardResult, ShardStage
from fgclip.storage import local_path

log = logging.getLogger(__name__)

HELP = "extract referring expressions from long captions and box them with a detector backend"
STAGE = "detect"


# ---------------------------------------------------------------- backend interface

@dataclass(frozen=True)
class Candidate:
    """One candidate box for one expression: pixel x1, y1, x2, y2 (may reach outside
    the image; the core clips) and a confidence in [0, 1]."""

    bbox: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class DetectContext:
    """What a backend may need besides the image: where the sample comes from and the
    run's seed (for teachers that inject errors reproducibly)."""

    shard: str
    key: str
    seed: int


class DetectorError(Exception):
    """A backend could not process one sample; the sample becomes a `detector_failed`
    reject and the shard goes on."""


@dataclass(frozen=True)
class DetectItem:
    """One image and its expressions, as a batch hands them to a backend."""

    image: RawSample
    expressions: Sequence[Expression]
    context: DetectContext


class Detector(ABC):
    """Boxes referring expressions in one image, or in a batch of images."""

    needs_truth: bool = False  # True for teachers that read the demo world's truth sidecar

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Name, version, model/prompt hash: part of the stage fingerprint."""

    @abstractmethod
    def detect(self, image: RawSample, expressions: Sequence[Expression], context: DetectContext) -> list[list[Candidate]]:
        """Candidates per expression: one list (possibly empty) for each expression, in order."""

    def detect_batch(self, items: Sequence[DetectItem]) -> list[list[list[Candidate]] | DetectorError]:
        """`detect` for several images: per item, its candidate lists or the DetectorError
        that failed it alone. Model backends override this to run the images together."""
        results: list[list[list[Candidate]] | DetectorError] = []
        for item in items:
            try:
                results.append(self.detect(item.image, item.expressions, item.context))
            except DetectorError as error:
                results.append(error)
        return results

    def metrics(self) -> dict[str, float]:
        """Throughput of a model backend (images/s, expressions/s), logged to MLflow by the stage."""
        return {}


DetectorFactory = Callable[[DetectConfig, Path | None], Detector]
DETECTORS: BackendRegistry[DetectorFactory] = BackendRegistry("detector backend")
register_detector = DETECTORS.register


def build_detector(config: DetectConfig, truth_dir: str | Path | None = None) -> Detector:
    """The configured detector; factories take `(config, truth_dir)`."""
    return DETECTORS.factory(config.backend)(config, local_path(truth_dir) if truth_dir is not None else None)


# ---------------------------------------------------------------- the demo teacher

# Weak preference for a solid object when an expression names no pattern: captions
# usually leave "solid" out, but it is not proof.
ABSENT_PATTERN_PRIOR = 0.25
# Position words as directions from the image centre: (x sign, y sign); y grows down.
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "upper": (0, -1), "bottom": (0, 1), "lower": (0, 1)}
CENTRE_WORDS = frozenset({"center", "centre", "middle"})
TRUTH_ATTRIBUTES = ("colour", "pattern", "size")


def _attribute_score(words: list[str], obj: dict[str, Any]) -> float:
    named = {}
    for word in words:
        cls = attribute_class(word)
        if cls in TRUTH_ATTRIBUTES and cls not in named:
            named[cls] = word
    score = 0.0
    for cls in TRUTH_ATTRIBUTES:
        if cls in named:
            score += 1.0 if named[cls] == obj.get(cls) else -1.0
    if "pattern" not in named and obj.get("pattern") == "solid":
        score += ABSENT_PATTERN_PRIOR
    return score


def _position_score(words: list[str], bbox: Sequence[float]) -> float:
    cx, cy = (bbox[0] + bbox[2]) / 2 - 0.5, (bbox[1] + bbox[3]) / 2 - 0.5
    score = 0.0
    for word in words:
        if word in DIRECTIONS:
            sx, sy = DIRECTIONS[word]
            score += sx * cx + sy * cy
        elif word in CENTRE_WORDS:
            score -= abs(cx) + abs(cy)
    return score


def ground(expression: Expression, objects: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The truth object an expression most likely means: same shape noun, best matching
    attribute words, then best matching position words, then the first listed."""
    head = head_noun(expression.short_expr)
    lemma = noun_lemma(head) if head else None
    same = [(i, o) for i, o in enumerate(objects) if lemma is not None and o.get("shape") == lemma]
    if not same:
        return None
    words = tokenize(expression.short_expr)
    place = location_words(expression)
    best = max(same, key=lambda item: (_attribute_score(words, item[1]), _position_score(place, item[1]["bbox"]), -item[0]))
    return best[1]


def _valid_truth_object(obj: Any) -> bool:
    bbox = obj.get("bbox") if isinstance(obj, dict) else None
    return (isinstance(obj, dict) and isinstance(obj.get("shape"), str) and isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox))


class DemoTeacherDetector(Detector):
    """A stand-in for an open-vocabulary detector on the demo world: it grounds each
    expression to a truth object and returns that box, with the failure modes of a real
    detector injected at configured rates (jitter, misses, false positives) and the
    background noise a real one produces (sub-threshold boxes, near-duplicates)."""

    name = "demo-teacher"
    version = "1"
    needs_truth = True

    def __init__(self, config: DetectConfig, truth_dir: Path) -> None:
        self.config = config
        self.teacher = config.demo
        self.truth_dir = truth_dir
        self._cached: tuple[str, dict[str, dict[str, Any]]] | None = None

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "teacher": self.teacher.model_dump(mode="json")}

    def _truth(self, shard: str) -> dict[str, dict[str, Any]]:
        if self._cached is None or self._cached[0] != shard:
            path = annotation_path(self.truth_dir, shard)
            try:
                records = read_jsonl(path)
            except (OSError, ValueError) as error:
                raise DetectorError(f"truth sidecar {path} unreadable: {error}") from error
            self._cached = (shard, {r["key"]: r for r in records if isinstance(r, dict) and "key" in r})
        return self._cached[1]

    def detect(self, image: RawSample, expressions: Sequence[Expression], context: DetectContext) -> list[list[Candidate]]:
        truth = self._truth(context.shard).get(context.key)
        if truth is None:
            raise DetectorError(f"no truth record for key {context.key!r} in shard {context.shard}")
        objects = truth.get("objects")
        if not isinstance(objects, list) or not all(_valid_truth_object(o) for o in objects):
            raise DetectorError(f"truth record of {context.key!r} has malformed objects (each needs a shape and a 4-number bbox)")
        return [self._candidates(expression, objects, image.width, image.height, keyed_random(context.seed, context.key, index))
                for index, expression in enumerate(expressions)]

    def _low_score(self, rng: random.Random) -> float:
        return self.config.min_confidence * self.teacher.sub_threshold_max_fraction * rng.random()

    def _passing_score(self, rng: random.Random) -> float:
        return rng.uniform(self.teacher.score_min, self.teacher.score_max)

    def _random_box(self, width: int, height: int, rng: random.Random) -> tuple[float, float, float, float]:
        low, high = self.teacher.false_positive_size
        w, h = rng.uniform(low, high) * width, rng.uniform(low, high) * height
        x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        return x1, y1, x1 + w, y1 + h

    def _candidates(self, expression: Expression, objects: Sequence[dict[str, Any]], width: int, height: int,
                    rng: random.Random) -> list[Candidate]:
        teacher = self.teacher
        # Every draw is made, used or not, in a fixed order: changing one rate (or
        # grounding to another object) never reshuffles the rest of the stream.
        missed = rng.random() < teacher.miss_rate
        false_positive = rng.random() < teacher.false_positive_rate
        duplicate = rng.random() < teacher.duplicate_rate
        score, low = self._passing_score(rng), self._low_score(rng)
        offsets = [rng.gauss(0, 1) for _ in range(4)]
        duplicate_offsets = [rng.gauss(0, 1) for _ in range(4)]
        false_box, false_score = self._random_box(width, height, rng), self._passing_score(rng)
        noise = [Candidate(self._random_box(width, height, rng), self._low_score(rng))
                 for _ in range(teacher.sub_threshold_candidates)]
        out: list[Candidate] = []
        target = ground(expression, objects)
        if target is not None:
            box = _offset(boxes.to_pixels(target["bbox"], width, height), offsets, teacher.jitter)
            if missed:
                out.append(Candidate(box, low))
            else:
                out.append(Candidate(box, score))
                if duplicate:
                    out.append(Candidate(_offset(box, duplicate_offsets, teacher.duplicate_jitter), score * teacher.duplicate_score_factor))
        if false_positive:
            out.append(Candidate(false_box, false_score))
        return out + noise


def _offset(box: Sequence[float], unit_offsets: Sequence[float], amount: float) -> tuple[float, float, float, float]:
    """Move each coordinate by a standard-normal offset times `amount` of the box size."""
    w, h = box[2] - box[0], box[3] - box[1]
    scale = (w, h, w, h)
    x1, y1, x2, y2 = (v + o * amount * s for v, o, s in zip(box, unit_offsets, scale))
    return x1, y1, x2, y2


@register_detector("demo")
def _demo_factory(config: DetectConfig, truth_dir: Path | None) -> Detector:
    if truth_dir is None:
        raise ValueError("the demo detector teacher needs the truth sidecar folder (--truth)")
    return DemoTeacherDetector(config, truth_dir)


@register_detector("owlv2")
@register_detector("grounding_dino")
def _hf_factory(config: DetectConfig, truth_dir: Path | None) -> Detector:
    from fgclip.vision.detect_hf import build  # torch and transformers only when this backend runs

    return build(config)


@register_detector("yolo_world")
def _yolo_world_factory(config: DetectConfig, truth_dir: Path | None) -> Detector:
    from fgclip.vision.detect_yolo import YoloWorldDetector  # ultralytics only when this backend runs

    return YoloWorldDetector(config.yolo_world)


# ---------------------------------------------------------------- the core selection

def select_regions(expressions: Sequence[Expression], candidates: Sequence[Sequence[Candidate]], width: int, height: int,
                   config: DetectConfig) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The paper's box selection, the same for every backend.

    Returns the regions (contract form, best score first) and `(reason, detail)` for
    every candidate left out.
    """
    if len(candidates) != len(expressions):
        raise DetectorError(f"backend returned {len(candidates)} candidate lists for {len(expressions)} expressions")
    ignored: list[tuple[str, str]] = []
    pool: list[tuple[tuple[float, float, float, float], float, int]] = []
    for index, (expression, found) in enumerate(zip(expressions, candidates)):
        for candidate in found:
            label = f"{expression.short_expr!r} box {[round(v, 1) for v in candidate.bbox]}"
            score = float(candidate.score)
            if not (math.isfinite(score) and 0.0 <= score <= 1.0):
                ignored.append(("invalid_score", f"{label}: score {score!r} is not in [0, 1]"))
                continue
            if score < config.min_confidence:
                ignored.append(("low_confidence", f"{label}: score {score:.3f} < min_confidence {config.min_confidence}"))
                continue
            problem, clipped = boxes.box_problem(candidate.bbox, width, height, min_side_px=config.min_box_side_px,
                                                 min_area_fraction=config.min_box_area_fraction)
            if problem is not None:
                ignored.append((problem, f"{label} in a {width}x{height} image: clipped to {[round(v, 1) for v in clipped]}"))
                continue
            pool.append((clipped, score, index))
    kept = boxes.nms([p[0] for p in pool], [p[1] for p in pool], config.nms_iou)
    kept_set = set(kept)
    for position, (box, score, index) in enumerate(pool):
        if position not in kept_set:
            ignored.append(("nms_suppressed", f"{expressions[index].short_expr!r} score {score:.3f}: "
                                              f"overlaps a higher-scoring box above nms_iou {config.nms_iou}"))
    regions = []
    for rank, position in enumerate(kept):
        box, score, index = pool[position]
        expression = expressions[index]
        if rank >= config.max_regions:
            ignored.append(("over_max_regions", f"{expression.short_expr!r} score {score:.3f}: beyond max_regions {config.max_regions}"))
            continue
        bbox = [round(v, config.bbox_decimals) for v in boxes.to_normalised(box, width, height)]
        if boxes.is_degenerate(bbox):  # only possible with min_box_side_px 0 and a sub-rounding box
            ignored.append((boxes.TOO_SMALL, f"{expression.short_expr!r}: empty after rounding to {config.bbox_decimals} decimals"))
            continue
        regions.append({"bbox": bbox, "score": round(score, config.bbox_decimals),
                        "short_expr": expression.short_expr, "long_expr": expression.long_expr})
    return regions, ignored


# ---------------------------------------------------------------- the stage

class DetectStage(ShardStage):
    name = STAGE
    record_kind = "regions_record"

    def __init__(self, images_dir: str | Path, captions_dir: str | Path, truth_dir: str | Path | None,
                 config: DetectConfig, seed: int, *, extractor: ExpressionExtractor | None = None,
                 detector: Detector | None = None) -> None:
        self.images_dir = local_path(images_dir)
        self.captions_dir = local_path(captions_dir)
        self.truth_dir = local_path(truth_dir) if truth_dir is not None else None
        self.config = config
        self.seed = seed
        self.extractor = extractor or build_extractor(config)
        self.detector = detector or build_detector(config, self.truth_dir)
        if self.detector.needs_truth and self.truth_dir is None:
            raise ValueError("this detector backend reads the truth sidecar; give the truth folder")

    def shard_inputs(self, shard: str) -> dict[str, Path]:
        inputs = {"images": self.images_dir / f"{shard}.tar", "captions": annotation_path(self.captions_dir, shard)}
        if self.detector.needs_truth and self.truth_dir is not None:
            inputs["truth"] = annotation_path(self.truth_dir, shard)
        return inputs

    def settings(self) -> dict[str, Any]:
        # Model backend sections also say where a model runs (device, local path); the
        # extractor's and detector's identities carry what decides the output.
        config = self.config.model_dump(mode="json", exclude={"spacy", "owlv2", "grounding_dino", "yolo_world"})
        return {"config": config, "seed": self.seed,
                "extractor": self.extractor.identity(), "detector": self.detector.identity()}

    def _captions(self, shard: str, rejects: list[Reject]) -> dict[str, str]:
        captions: dict[str, str] = {}
        for number, record in enumerate(read_jsonl(annotation_path(self.captions_dir, shard)), 1):
            found = schema.problems("caption_record", record)
            if found:
                key = record.get("key") if isinstance(record, dict) and isinstance(record.get("key"), str) else None
                rejects.append(Reject(shard, key, "bad_caption_record", f"caption line {number}: {'; '.join(found)}",
                                      stage=STAGE, dropped=False))
                continue
            captions[record["key"]] = record["long_caption"]
        return captions

    def metrics(self) -> dict[str, float]:
        return self.detector.metrics()

    def process_shard(self, shard: str) -> ShardResult:
        rejects: list[Reject] = []
        captions = self._captions(shard, rejects)
        reader = RawShardReader(self.images_dir / f"{shard}.tar")
        records: list[dict[str, Any]] = []
        seen: set[str] = set()
        for batch in batched(reader, self.config.batch_size):
            seen.update(sample.key for sample in batch)
            records.extend(self._process_batch(shard, batch, captions, rejects))
        for key in sorted(set(captions) - seen - {r.key for r in reader.rejects}):
            rejects.append(Reject(shard, key, "orphan_caption", "caption record has no sample in the image shard; ignored",
                                  stage=STAGE, dropped=False))
        read_dropped = [r for r in reader.rejects if r.dropped and r.key is not None]
        return ShardResult(records, reader.rejects + rejects, items_in=len(seen) + len(read_dropped))

    def _process_batch(self, shard: str, batch: Sequence[RawSample], captions: dict[str, str],
                       rejects: list[Reject]) -> list[dict[str, Any]]:
        """Records of a batch's samples, in order: expressions of all its captions at once,
        then one detector call for the samples that have expressions."""
        def reject(key: str, reason: str, detail: str, dropped: bool) -> None:
            rejects.append(Reject(shard, key, reason, detail, stage=STAGE, dropped=dropped))

        captioned = [sample for sample in batch if sample.key in captions]
        expressions = dict(zip((s.key for s in captioned),
                               self.extractor.extract_many([captions[s.key] for s in captioned])))
        items = [DetectItem(s, expressions[s.key], DetectContext(shard, s.key, self.seed)) for s in captioned
                 if expressions[s.key]]
        found = dict(zip((item.image.key for item in items), self.detector.detect_batch(items) if items else []))
        if len(found) != len(items):  # a broken backend must not shift boxes onto other images
            raise RuntimeError(f"detector backend returned {len(found)} results for {len(items)} images")
        records = []
        for sample in batch:  # rejects in sample order, as one sample at a time would write them
            if sample.key not in captions:
                reject(sample.key, "no_caption", "no caption record for this sample (run recaption first)", True)
                continue
            record = {"key": sample.key, "width": sample.width, "height": sample.height, "regions": []}
            if not expressions[sample.key]:
                reject(sample.key, "no_expressions",
                       "the long caption names no object the extractor knows; written with no regions", False)
                records.append(record)
                continue
            candidates = found[sample.key]
            try:
                if isinstance(candidates, DetectorError):
                    raise candidates
                regions, ignored = select_regions(expressions[sample.key], candidates, sample.width, sample.height,
                                                  self.config)
            except DetectorError as error:
                reject(sample.key, "detector_failed", str(error), True)
                continue
            for reason, detail in ignored:
                reject(sample.key, reason, detail, False)
            if not regions:
                reject(sample.key, "no_regions", f"none of {len(expressions[sample.key])} expressions got a box that "
                                                 "passed; written with no regions", False)
            record["regions"] = regions
            records.append(record)
        return records


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="image shard folder (NNNNN.tar)")
    parser.add_argument("--captions", required=True, help="caption records folder (recaption output)")
    parser.add_argument("--truth", default=None, help="demo world truth sidecars (only the demo teacher reads them)")
    add_stage_arguments(parser, "regions")


def command(args: argparse.Namespace, params: Params) -> int:
    from fgclip.cli import ComponentError
    from fgclip.component import select_shards

    shards, every_shard = select_shards(args.images, args.shards)
    try:
        stage = DetectStage(args.images, args.captions, args.truth, params.detect, params.seed)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise ComponentError(str(error)) from error
    missing = sorted(str(path) for shard in shards for path in stage.shard_inputs(shard).values() if not path.is_file())
    if missing:
        raise ComponentError(f"{len(missing)} input file(s) missing, e.g. {', '.join(missing[:3])}")
    inputs = {"images": args.images, "captions": args.captions}
    if "truth" in stage.shard_inputs(shards[0]):
        inputs["truth"] = args.truth
    summary, _ = run_tracked_stage(stage, params=params, shards=shards, out=args.out, report=args.report,
                                   inputs=inputs, progress=not args.no_progress, prune=every_shard)
    log.info("detect: %d samples in, %d written, ignored %s", summary.items_in, summary.items_out, dict(summary.ignored))
    return 0
