"""Each task's metrics from the suite's embeddings (pure numpy; all values in [0, 1]).

Ranks count ties against the right answer (``fgclip.eval.metrics``): a collapsed model
scores 0, never chance or 100%. Images that could not be decoded are left out with their
texts and boxes, and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fgclip.eval.benchmarks.base import BoxSet, ChoiceSet, ClassSet, RetrievalSet
from fgclip.eval.metrics import candidate_scores, ensemble_templates, recall_at_k, strict_top1
from fgclip.eval.suite.features import Features, box_key

Metrics = dict[str, float]
Counts = dict[str, int]
#: texts (prompts, captions) -> normalised rows aligned with them
EmbedTexts = Callable[[Sequence[str]], np.ndarray]


def retrieval(
    data: RetrievalSet, features: Features, view: str, embed: EmbedTexts, ks: Sequence[int]
) -> tuple[Metrics, Counts]:
    """Image->text recall@k over the distinct captions (an image is right when any of its own
    captions ranks within k) and text->image recall@k over every caption instance."""
    usable = [i for i, path in enumerate(data.images) if (path, view) in features.globals]
    position = {image: row for row, image in enumerate(usable)}
    pairs = [(text, position[image]) for text, image in zip(data.texts, data.text_image) if image in position]
    if not usable or not pairs:
        raise ValueError("no readable image with a caption")
    images = np.stack([features.globals[(data.images[i], view)] for i in usable]).astype(np.float64)
    distinct = list(dict.fromkeys(text for text, _ in pairs))
    column = {text: index for index, text in enumerate(distinct)}
    similarity = images @ embed(distinct).astype(np.float64).T  # (images, distinct texts)
    own: list[set[int]] = [set() for _ in usable]
    for text, image in pairs:
        own[image].add(column[text])
    metrics: Metrics = {}
    for k, value in recall_at_k(similarity, [sorted(texts) for texts in own], ks).items():
        metrics[f"i2t_r{k}"] = value
    queries = similarity[:, [column[text] for text, _ in pairs]].T  # (caption instances, images)
    for k, value in recall_at_k(queries, [[image] for _, image in pairs], ks).items():
        metrics[f"t2i_r{k}"] = value
    counts = {
        "images": len(usable),
        "captions": len(pairs),
        "distinct_captions": len(distinct),
        "images_unreadable": len(data.images) - len(usable),
    }
    return metrics, counts


def class_embeddings(prompts: np.ndarray, classes: int, templates: int) -> np.ndarray:
    """(classes * templates, D) prompt rows, class-major -> (classes, D) ensembled."""
    return ensemble_templates(prompts.astype(np.float64).reshape(classes, templates, -1))


def top_k(scores: np.ndarray, labels: Sequence[int], ks: Sequence[int], prefix: str = "top") -> Metrics:
    return {f"{prefix}{k}": value for k, value in recall_at_k(scores, [[label] for label in labels], ks).items()}


def box_classification(
    data: BoxSet, features: Features, classes: np.ndarray, ks: Sequence[int]
) -> tuple[Metrics, Counts]:
    rows, labels = [], []
    unreadable = 0
    for path, boxes, image_labels in zip(data.images, data.boxes, data.labels):
        if path in features.unreadable:
            unreadable += 1
            continue
        for box, label in zip(boxes, image_labels):
            rows.append(features.regions[(path, box_key(box))])
            labels.append(label)
    if not rows:
        raise ValueError("no readable image with a box")
    scores = np.stack(rows).astype(np.float64) @ classes.T
    return top_k(scores, labels, ks), {"boxes": len(rows), "images": len(data.images) - unreadable}


def zero_shot(
    data: ClassSet, features: Features, view: str, classes: np.ndarray, ks: Sequence[int]
) -> tuple[Metrics, Counts]:
    kept = [(path, label) for path, label in zip(data.images, data.labels) if (path, view) in features.globals]
    if not kept:
        raise ValueError("no readable image")
    images = np.stack([features.globals[(path, view)] for path, _ in kept]).astype(np.float64)
    metrics = top_k(images @ classes.T, [label for _, label in kept], ks)
    return metrics, {"images": len(kept), "images_unreadable": len(data.images) - len(kept)}


def choices(data: ChoiceSet, features: Features, embed: EmbedTexts) -> tuple[Metrics, Counts]:
    """Strict top-1 of the positive (always candidate 0) per difficulty."""
    metrics: Metrics = {}
    counts: Counts = {}
    for difficulty, questions in data.questions.items():
        usable = [q for q in questions if data.images[q.image] not in features.unreadable]
        counts[f"{difficulty}_questions"] = len(usable)
        if not usable:
            continue
        texts = list(dict.fromkeys(text for q in usable for text in q.candidates))
        row = {text: index for index, text in enumerate(texts)}
        queries = np.stack([features.regions[(data.images[q.image], box_key(q.box))] for q in usable])
        scores = candidate_scores(queries, embed(texts), [[row[text] for text in q.candidates] for q in usable])
        metrics[f"{difficulty}_top1"] = strict_top1(scores, [0] * len(usable))
    return metrics, counts
