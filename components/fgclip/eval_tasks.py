"""Evaluation tasks and their metrics, independent of any particular model.

Held-out demo-world tasks, built from the held-out image shards and their truth
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

Model access goes through the small :class:`Embedder` protocol (one batch per call), so
the same task code runs on the real FG-CLIP adapter (``fgclip.evaluate``) and on fakes
in tests. The metric functions are pure numpy.

The FG-OVD benchmark itself (``evaluate_fgovd``) is scored the same way as ``fgovd_demo``
over the COCO images its items point to.

Ties never count as correct: a candidate set where the target merely ties another
candidate scores 0, so a collapsed model (all embeddings equal) gets 0, not 100%. (The
reference FG-OVD script credits a tie to the positive; with real embeddings exact ties
only arise where a benchmark line repeats its positive among the negatives, which is
counted separately.)
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from fgclip import negatives as negatives_module
from fgclip import recaption
from fgclip.config import Params
from fgclip.lexicon import SHAPES, attribute_class
from fgclip.seeding import keyed_random
from fgclip.shards import RawShardReader, Reject, list_shards, read_jsonl
from fgclip.storage import local_path

log = logging.getLogger(__name__)

STAGE = "eval"
Box = tuple[float, float, float, float]


# ================================================================ metrics (pure)

def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero instead of becoming NaN)."""
    array = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return array / np.where(norms > 0, norms, 1.0)


def positive_ranks(similarity: np.ndarray, positives: Sequence[Iterable[int]]) -> np.ndarray:
    """0-based rank of each query's best positive among the gallery, ties counted against it.

    ``similarity`` (Q, G); ``positives[q]`` are the gallery indices that are correct for
    query q (several when, e.g., two images share one alt-text). The rank is the number
    of non-positive gallery items scoring at least as high as the best positive.
    """
    scores = np.asarray(similarity, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(positives):
        raise ValueError(f"similarity {scores.shape} does not match {len(positives)} queries")
    ranks = np.empty(scores.shape[0], dtype=np.int64)
    for query, correct in enumerate(positives):
        index = np.fromiter(correct, dtype=np.int64)
        if index.size == 0:
            raise ValueError(f"query {query} has no positive in the gallery")
        best = scores[query, index].max()
        mask = np.ones(scores.shape[1], dtype=bool)
        mask[index] = False
        ranks[query] = int(np.count_nonzero(scores[query, mask] >= best))
    return ranks


def recall_at_k(similarity: np.ndarray, positives: Sequence[Iterable[int]], ks: Sequence[int]) -> dict[int, float]:
    """{k: share of queries whose best positive ranks within the top k}."""
    ranks = positive_ranks(similarity, positives)
    return {k: float(np.mean(ranks < k)) for k in ks}


def strict_top1(scores: Sequence[np.ndarray], targets: Sequence[int]) -> float:
    """Share of candidate sets (of any sizes) whose target scores strictly highest."""
    if len(scores) != len(targets):
        raise ValueError(f"{len(scores)} score vectors for {len(targets)} targets")
    if not scores:
        raise ValueError("no candidate sets to score")
    return float(np.mean([strict_win(row, target) for row, target in zip(scores, targets)]))


def strict_win(row: np.ndarray, target: int) -> bool:
    values = np.asarray(row, dtype=np.float64)
    others = np.delete(values, target)
    return bool(others.size == 0 or values[target] > others.max())


def pairwise_win_rates(scores: Sequence[np.ndarray], targets: Sequence[int],
                       groups: Sequence[Sequence[int]]) -> dict[int, float]:
    """{group: share of (target, other candidate) pairs the target wins strictly}.

    ``groups[i][j]`` labels candidate j of set i (e.g. how many attributes it changes);
    the target's own label is ignored.
    """
    wins: Counter = Counter()
    totals: Counter = Counter()
    for row, target, labels in zip(scores, targets, groups):
        for index, label in enumerate(labels):
            if index == target:
                continue
            totals[label] += 1
            wins[label] += bool(row[target] > row[index])
    return {label: wins[label] / totals[label] for label in sorted(totals)}


def ensemble_templates(per_template: np.ndarray) -> np.ndarray:
    """(classes, templates, D) text embeddings -> (classes, D): each normalised, averaged,
    normalised again (CLIP's prompt ensembling)."""
    array = np.asarray(per_template, dtype=np.float64)
    if array.ndim != 3:
        raise ValueError(f"expected (classes, templates, dim), got shape {array.shape}")
    return l2_normalise(l2_normalise(array).mean(axis=1))


def candidate_scores(queries: np.ndarray, texts: np.ndarray, candidates: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Cosine scores of query i against its own candidate rows of ``texts``."""
    query_rows, text_rows = l2_normalise(queries), l2_normalise(texts)
    return [text_rows[list(index)] @ query_rows[row] for row, index in enumerate(candidates)]


def retrieval_metrics(image_embeddings: np.ndarray, text_embeddings: np.ndarray, text_of_image: Sequence[int],
                      ks: Sequence[int], prefix: str) -> dict[str, float]:
    """Image->text and text->image recall@k; ``text_of_image[i]`` is image i's text row.

    Texts are expected to be unique rows: images sharing one text all count as correct
    for it, and it counts as correct for each of them.
    """
    similarity = l2_normalise(image_embeddings) @ l2_normalise(text_embeddings).T
    images_of_text: dict[int, list[int]] = defaultdict(list)
    for image, text in enumerate(text_of_image):
        images_of_text[text].append(image)
    texts = sorted(images_of_text)
    i2t = recall_at_k(similarity, [[text] for text in text_of_image], ks)
    t2i = recall_at_k(similarity[:, texts].T, [images_of_text[text] for text in texts], ks)
    metrics = {f"{prefix}_i2t_r{k}": value for k, value in i2t.items()}
    metrics.update({f"{prefix}_t2i_r{k}": value for k, value in t2i.items()})
    return metrics


# Metrics in the order a reader follows the tasks (tables, plots); others come last.
TASK_ORDER = ("fgovd_demo", "box_cls", "long", "short", "zero_shot", "fgovd_hard", "fgovd_medium", "fgovd_easy",
              "fgovd_trivial")


def metric_order(metric: str) -> tuple[int, bool, list[tuple[int, int, str]]]:
    """Sort key: task order, then a task's top-1 headline, then natural order (r1, r5, r10)."""
    task = next((index for index, name in enumerate(TASK_ORDER) if metric.startswith(f"{name}_")), len(TASK_ORDER))
    parts = [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", metric) if part]
    return task, not metric.endswith("_top1"), parts


# ================================================================ the model interface

class Embedder(Protocol):
    """What the tasks need from a model; one batch per call, any embedding scale."""

    def identity(self) -> dict[str, Any]:
        """Model path, digest or name: logged with the metrics."""

    def encode_images(self, images: Sequence[Image.Image], boxes: Sequence[np.ndarray],
                      with_global: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
        """(global (B, D), [region embeddings (k_i, D) of boxes[i] (k_i, 4) normalised xyxy]).

        with_global=False: only the regions are needed; the global rows may be empty."""

    def encode_texts(self, texts: Sequence[str], long: bool) -> np.ndarray:
        """(len(texts), D); long=True: long captions (248 tokens, long projection)."""


def embed_texts(embedder: Embedder, texts: Sequence[str], *, long: bool, batch_size: int,
                progress: bool = False, desc: str = "texts") -> np.ndarray:
    """Normalised embeddings of ``texts`` (duplicates are encoded once)."""
    unique = list(dict.fromkeys(texts))
    rows: list[np.ndarray] = []
    for start in tqdm(range(0, len(unique), batch_size), desc=desc, unit="batch", disable=not progress):
        rows.append(np.asarray(embedder.encode_texts(unique[start:start + batch_size], long), dtype=np.float64))
    if not rows:
        raise ValueError(f"no {desc} to embed")
    table = l2_normalise(np.concatenate(rows))
    position = {text: index for index, text in enumerate(unique)}
    return table[[position[text] for text in texts]]


def embed_images(embedder: Embedder, load: Callable[[int], Image.Image], boxes: Sequence[np.ndarray], *,
                 batch_size: int, progress: bool = False, desc: str = "images") -> tuple[np.ndarray, list[np.ndarray]]:
    """Normalised global and region embeddings of images 0..len(boxes)-1, loaded lazily."""
    globals_: list[np.ndarray] = []
    regions: list[np.ndarray] = []
    for start in tqdm(range(0, len(boxes), batch_size), desc=desc, unit="batch", disable=not progress):
        index = range(start, min(start + batch_size, len(boxes)))
        image_rows, region_rows = embedder.encode_images([load(i) for i in index], [boxes[i] for i in index])
        globals_.append(l2_normalise(image_rows))
        regions.extend(l2_normalise(rows) for rows in region_rows)
    if not globals_:
        raise ValueError(f"no {desc} to embed")
    return np.concatenate(globals_), regions


# ================================================================ the held-out world

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


def truth_object_problem(obj: Any) -> str | None:
    """Why a truth object cannot be a labelled test item, or None."""
    if obj.get("shape") not in SHAPES:
        return f"object {obj.get('id')!r} has unknown shape {obj.get('shape')!r}"
    box = obj.get("bbox")
    if not isinstance(box, list) or len(box) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
        return f"object {obj.get('id')!r} has no finite [x1, y1, x2, y2] bbox: {box!r}"
    x1, y1, x2, y2 = box
    if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
        return f"object {obj.get('id')!r} bbox {box!r} is not a normalised box inside the image"
    return None


def sample_truth_problem(truth: Any, width: int, height: int) -> tuple[str, str] | None:
    """(reason, detail) when a truth record cannot label its image, else None."""
    problem = recaption.truth_problem(truth)
    if problem is not None:
        return "bad_truth", problem
    for obj in truth["objects"]:
        problem = truth_object_problem(obj)
        if problem is not None:
            return "bad_truth", problem
    if (truth.get("width"), truth.get("height")) != (width, height):
        return "truth_mismatch", f"truth is for a {truth.get('width')}x{truth.get('height')} image, the image is {width}x{height}"
    return None


def load_heldout(images_dir: str | Path, truth_dir: str | Path) -> HeldoutWorld:
    """Held-out samples joined with their truth; everything unusable is a counted Reject."""
    world = HeldoutWorld()
    truth_root = local_path(truth_dir)
    for shard in list_shards(images_dir):
        truth_file = truth_root / f"{shard}.jsonl"
        try:
            truths = {r.get("key"): r for r in read_jsonl(truth_file) if isinstance(r, dict)}
            truth_error = None
        except FileNotFoundError:
            truths, truth_error = {}, f"truth file {truth_file} does not exist"
        except (OSError, ValueError) as error:
            truths, truth_error = {}, f"truth file {truth_file} is unreadable: {error}"
        reader = RawShardReader(local_path(images_dir) / f"{shard}.tar")
        for raw in reader:
            truth = truths.get(raw.key)
            problem = (("no_truth", truth_error or f"no truth record for key {raw.key!r} in {truth_file}")
                       if truth is None else sample_truth_problem(truth, raw.width, raw.height))
            if problem is not None:
                world.rejects.append(Reject(shard, raw.key, problem[0], problem[1], stage=STAGE))
                log.warning("eval: %s [%s] %s", problem[0], raw.key, problem[1])
                continue
            world.samples.append(HeldoutSample(shard, raw.key, raw.image_bytes, raw.caption, truth))
        world.rejects.extend(reader.rejects)
    return world


# ================================================================ task builders

def attribute_phrase(obj: Mapping[str, Any]) -> str:
    """A truth object's full short expression, in the caption teacher's word order:
    "large red striped circle" (the pattern always written, "solid" included)."""
    return " ".join([*(str(obj[name]) for name in recaption.ATTRIBUTE_ORDER), str(obj["shape"])])


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
    return recaption.describe(sample.truth, sample.key, params.eval.seed, exact)


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
    generator = negatives_module.build_generator(params.negatives)
    count = params.eval.negatives_per_region
    choices, short_sets = [], 0
    for image, sample in enumerate(world.samples):
        for region, obj in enumerate(sample.objects):
            positive = attribute_phrase(obj)
            rng = keyed_random(params.eval.seed, sample.key, obj["id"])
            negatives = negatives_module.select_valid(positive, generator.generate(positive, count, rng), count)
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
    return [RegionChoice(image, region, prompts, SHAPES.index(obj["shape"]))
            for image, sample in enumerate(world.samples) for region, obj in enumerate(sample.objects)]


# ================================================================ running the tasks

@dataclass
class WorldFeatures:
    images: np.ndarray  # (N, D) normalised
    regions: list[np.ndarray]  # per image: (objects, D) normalised, truth order


def encode_world(world: HeldoutWorld, embedder: Embedder, batch_size: int, progress: bool = False) -> WorldFeatures:
    images, regions = embed_images(embedder, lambda i: world.samples[i].open_image(),
                                   [sample.boxes() for sample in world.samples],
                                   batch_size=batch_size, progress=progress, desc="held-out images")
    return WorldFeatures(images, regions)


def score_choices(choices: Sequence[RegionChoice], region_of: Callable[[RegionChoice], np.ndarray],
                  embedder: Embedder, batch_size: int, progress: bool = False, desc: str = "texts") -> list[np.ndarray]:
    texts = list(dict.fromkeys(text for choice in choices for text in choice.candidates))
    table = embed_texts(embedder, texts, long=False, batch_size=batch_size, progress=progress, desc=desc)
    row = {text: index for index, text in enumerate(texts)}
    queries = np.stack([region_of(choice) for choice in choices])
    return candidate_scores(queries, table, [[row[text] for text in choice.candidates] for choice in choices])


def evaluate_world(world: HeldoutWorld, embedder: Embedder, params: Params,
                   progress: bool = False) -> tuple[dict[str, float], dict[str, int]]:
    """All held-out demo tasks: (metrics in [0, 1], counts)."""
    config = params.eval
    if not world.samples:
        raise ValueError("the held-out world has no usable samples")
    features = encode_world(world, embedder, config.batch_size, progress)
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {"heldout_images": len(world.samples),
                              "heldout_objects": sum(len(s.objects) for s in world.samples)}

    def region_of(choice: RegionChoice) -> np.ndarray:
        return features.regions[choice.image][choice.region]

    if counts["heldout_objects"]:
        choices, short_sets = fgovd_demo_choices(world, params)
        counts.update(fgovd_demo_questions=len(choices), fgovd_demo_short_negative_sets=short_sets)
        if choices:
            scores = score_choices(choices, region_of, embedder, config.batch_size, progress, "fgovd_demo texts")
            targets = [c.target for c in choices]
            metrics["fgovd_demo_top1"] = strict_top1(scores, targets)
            for changed, rate in pairwise_win_rates(scores, targets, [c.changed for c in choices]).items():
                metrics[f"fgovd_demo_pairwin_{changed}attr"] = rate

        boxes = box_classification_choices(world, params)
        scores = score_choices(boxes, region_of, embedder, config.batch_size, progress, "class prompts")
        metrics["box_cls_top1"] = strict_top1(scores, [c.target for c in boxes])
        counts["box_cls_regions"] = len(boxes)

    for name, caption_of, long in (("long", long_caption, True), ("short", short_caption, False)):
        captions = [caption_of(sample, params) for sample in world.samples]
        unique = list(dict.fromkeys(captions))
        table = embed_texts(embedder, unique, long=long, batch_size=config.batch_size, progress=progress,
                            desc=f"{name} captions")
        row = {text: index for index, text in enumerate(unique)}
        metrics.update(retrieval_metrics(features.images, table, [row[c] for c in captions], config.retrieval_ks, name))
        counts[f"{name}_unique_captions"] = len(unique)

    labelled = [(index, largest_object(sample)) for index, sample in enumerate(world.samples)]
    labelled = [(index, obj) for index, obj in labelled if obj is not None]
    if labelled:
        prompts = [template.format(shape) for shape in SHAPES for template in config.zero_shot_templates]
        flat = embed_texts(embedder, prompts, long=False, batch_size=config.batch_size, progress=progress,
                           desc="zero-shot prompts")
        classes = ensemble_templates(flat.reshape(len(SHAPES), len(config.zero_shot_templates), -1))
        images = features.images[[index for index, _ in labelled]]
        scores = list(l2_normalise(images) @ classes.T)
        metrics["zero_shot_top1"] = strict_top1(scores, [SHAPES.index(obj["shape"]) for _, obj in labelled])
        counts["zero_shot_images"] = len(labelled)
    return metrics, counts


# ================================================================ the FG-OVD benchmark

def evaluate_fgovd(splits: Mapping[str, Any], image_paths: Mapping[str, Path], embedder: Embedder, params: Params,
                   progress: bool = False) -> tuple[dict[str, float], dict[str, int]]:
    """Top-1 accuracy per difficulty over the items whose image is in ``image_paths``.

    ``splits``: difficulty -> ``fgclip.fgovd.FGOVDSplit``. Region embeddings are computed
    once per distinct (image, box): the difficulty files share most of their boxes.
    """
    config = params.eval
    selected = {name: split.items[:config.fgovd_max_items] if config.fgovd_max_items else split.items
                for name, split in splits.items()}
    boxes_of: dict[str, dict[Box, int]] = defaultdict(dict)
    for items in selected.values():
        for item in items:
            if item.image_name in image_paths:
                boxes_of[item.image_name].setdefault(item.box, len(boxes_of[item.image_name]))
    names = sorted(boxes_of)
    regions: dict[str, np.ndarray] = {}
    unreadable: list[str] = []
    for start in tqdm(range(0, len(names), config.batch_size), desc="FG-OVD images", unit="batch", disable=not progress):
        batch, pictures = [], []
        for name in names[start:start + config.batch_size]:
            try:
                with Image.open(image_paths[name]) as opened:
                    pictures.append(opened.convert("RGB"))
                batch.append(name)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
                log.warning("FG-OVD image %s is unreadable: %s", image_paths[name], error)
                unreadable.append(name)
        if not batch:
            continue
        _, rows = embedder.encode_images(pictures, [np.asarray(list(boxes_of[name]), dtype=np.float64) for name in batch],
                                         with_global=False)
        regions.update((name, l2_normalise(row)) for name, row in zip(batch, rows))
    if unreadable:
        log.warning("FG-OVD: %d images could not be read", len(unreadable))

    metrics: dict[str, float] = {}
    counts: dict[str, int] = {"fgovd_unreadable_images": len(unreadable)}
    order = {image_name: index for index, image_name in enumerate(names)}
    for name, items in selected.items():
        usable = [item for item in items if item.image_name in regions]
        counts[f"fgovd_{name}_lines"] = splits[name].lines
        counts[f"fgovd_{name}_rejected"] = len(splits[name].rejects)
        counts[f"fgovd_{name}_evaluated"] = len(usable)
        # A few published lines list the positive among their negatives: a tie no model
        # can win under strict top-1. Counted so the number can be read against it.
        counts[f"fgovd_{name}_positive_among_negatives"] = sum(
            item.positive.casefold() in {text.casefold() for text in item.negatives} for item in usable)
        if not usable:
            log.warning("FG-OVD %s: no item has a readable image; no metric", name)
            continue
        choices = [RegionChoice(order[item.image_name], boxes_of[item.image_name][item.box], item.candidates, 0)
                   for item in usable]
        scores = score_choices(choices, lambda c: regions[names[c.image]][c.region], embedder, config.batch_size,
                               progress, f"FG-OVD {name} texts")
        metrics[f"fgovd_{name}_top1"] = strict_top1(scores, [c.target for c in choices])
    return metrics, counts
