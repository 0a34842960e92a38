"""Evaluation metrics, pure numpy: recall@k, strict top-1, pairwise win rates, template
ensembles, and the order metrics are reported in.

Ties never count as correct: a candidate set where the target merely ties another
candidate scores 0, so a collapsed model (all embeddings equal) gets 0, not 100%. (The
reference FG-OVD script credits a tie to the positive; with real embeddings exact ties
only arise where a benchmark line repeats its positive among the negatives, which is
counted separately.)
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np


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


def pairwise_win_rates(
    scores: Sequence[np.ndarray], targets: Sequence[int], groups: Sequence[Sequence[int]]
) -> dict[int, float]:
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


def retrieval_metrics(
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    text_of_image: Sequence[int],
    ks: Sequence[int],
    prefix: str,
) -> dict[str, float]:
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
TASK_ORDER = (
    "fgovd_demo",
    "box_cls",
    "long",
    "short",
    "zero_shot",
    "fgovd_hard",
    "fgovd_medium",
    "fgovd_easy",
    "fgovd_trivial",
)


def metric_order(metric: str) -> tuple[int, bool, list[tuple[int, int, str]]]:
    """Sort key: task order, then a task's top-1 headline, then natural order (r1, r5, r10)."""
    task = next((index for index, name in enumerate(TASK_ORDER) if metric.startswith(f"{name}_")), len(TASK_ORDER))
    parts = [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", metric) if part]
    return task, not metric.endswith("_top1"), parts
