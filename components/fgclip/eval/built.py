"""Evaluation on data the pipeline built (any source but the demo world): the shards a
dataset holds out of training, with the annotations the build made for them.

- ``long`` / ``short`` retrieval: image<->text recall@k with each image's long caption
  (recaption) and its alt text (the source caption);
- ``fgovd_built``: FG-OVD-style region questions: a region's embedding against its short
  expression and that region's hard negatives (top-1), over the regions that pass the QC
  validators (box geometry and area, expressions, K valid negatives, caption length), so
  what the gate would reject is never a question.

Nothing here reads the demo world's truth: the labels are the build's own annotations,
which is why this measures agreement with the data pipeline, not ground truth; benchmark
files (FG-OVD) remain the external measure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fgclip.core.shards import RawSample, RawShardReader, read_annotations
from fgclip.core.storage import exists, join
from fgclip.data.qc.population import RegionItem, shard_items
from fgclip.data.qc.validators import ValidationRules, validate_item
from fgclip.eval.embedding import Embedder, embed_images, embed_texts
from fgclip.eval.metrics import candidate_scores, retrieval_metrics, strict_top1

if TYPE_CHECKING:
    from fgclip.config import Params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltSample:
    sample: RawSample
    long_caption: str
    regions: tuple[RegionItem, ...]  # the QC-passed regions with negatives


def load_built(
    images: str, shards: Sequence[str], captions: str, regions: str, negatives: str, rules: ValidationRules
) -> tuple[list[BuiltSample], dict[str, int]]:
    """Held-out samples that have a long caption, each with its QC-passed regions."""
    samples: list[BuiltSample] = []
    counts = {"heldout_read_rejects": 0, "heldout_no_caption": 0, "regions_total": 0, "regions_failing_checks": 0}
    for shard in shards:
        caption_records = read_annotations(captions, shard) if exists(join(captions, f"{shard}.jsonl")) else {}
        region_records = read_annotations(regions, shard) if exists(join(regions, f"{shard}.jsonl")) else {}
        negative_records = read_annotations(negatives, shard) if exists(join(negatives, f"{shard}.jsonl")) else {}
        items: dict[str, list[RegionItem]] = {}
        for item in shard_items(shard, region_records, negative_records, caption_records):
            counts["regions_total"] += 1
            if validate_item(item, rules):
                counts["regions_failing_checks"] += 1
                continue
            items.setdefault(item.key, []).append(item)
        reader = RawShardReader(join(images, f"{shard}.tar"))
        for sample in reader:
            caption = caption_records.get(sample.key, {}).get("long_caption")
            if not caption:
                counts["heldout_no_caption"] += 1
                continue
            samples.append(BuiltSample(sample, caption, tuple(items.get(sample.key, ()))))
        counts["heldout_read_rejects"] += sum(1 for reject in reader.rejects if reject.dropped)
    return samples, counts


def evaluate_built(
    embedder: Embedder,
    params: Params,
    *,
    images: str,
    shards: Sequence[str],
    captions: str,
    regions: str,
    negatives: str,
    progress: bool = False,
) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics in [0, 1], counts) on the held-out shards of a built dataset."""
    config = params.eval
    samples, counts = load_built(images, shards, captions, regions, negatives, ValidationRules.from_params(params))
    if not samples:
        raise ValueError(f"no held-out sample with a long caption in shards {list(shards)} of {images}")
    boxes = [np.asarray([item.bbox for item in s.regions], dtype=np.float64).reshape(-1, 4) for s in samples]
    image_rows, region_rows = embed_images(
        embedder,
        lambda i: samples[i].sample.open_image(),
        boxes,
        batch_size=config.batch_size,
        progress=progress,
        desc="held-out images",
    )
    metrics: dict[str, float] = {}
    counts["heldout_images"] = len(samples)
    for name, texts, long in (
        ("long", [s.long_caption for s in samples], True),
        ("short", [s.sample.caption for s in samples], False),
    ):
        unique = list(dict.fromkeys(texts))
        table = embed_texts(
            embedder, unique, long=long, batch_size=config.batch_size, progress=progress, desc=f"{name} captions"
        )
        row = {text: index for index, text in enumerate(unique)}
        metrics.update(retrieval_metrics(image_rows, table, [row[t] for t in texts], config.retrieval_ks, name))
        counts[f"{name}_unique_captions"] = len(unique)
    questions = [(i, j, item) for i, s in enumerate(samples) for j, item in enumerate(s.regions)]
    counts["fgovd_built_questions"] = len(questions)
    if questions:
        candidates = [[item.short_expr, *(item.negatives or ())] for _, _, item in questions]
        texts = list(dict.fromkeys(text for choice in candidates for text in choice))
        table = embed_texts(
            embedder, texts, long=False, batch_size=config.batch_size, progress=progress, desc="region texts"
        )
        row = {text: index for index, text in enumerate(texts)}
        queries = np.stack([region_rows[i][j] for i, j, _ in questions])
        scores = candidate_scores(queries, table, [[row[t] for t in choice] for choice in candidates])
        metrics["fgovd_built_top1"] = strict_top1(scores, [0] * len(scores))
    else:
        log.warning("held-out shards have no QC-passed region with negatives: fgovd_built is not scored")
    return dict(sorted(metrics.items())), counts
