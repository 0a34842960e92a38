"""Running the evaluation tasks: the held-out demo world's tasks and the FG-OVD benchmark,
over any `Embedder`.

The FG-OVD benchmark itself (``evaluate_fgovd``) is scored the same way as ``fgovd_demo``
over the COCO images its items point to.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from fgclip.eval.embedding import Embedder, embed_images, embed_texts
from fgclip.eval.heldout import (
    HeldoutWorld,
    RegionChoice,
    box_classification_choices,
    fgovd_demo_choices,
    largest_object,
    long_caption,
    short_caption,
)
from fgclip.eval.metrics import (
    candidate_scores,
    ensemble_templates,
    l2_normalise,
    pairwise_win_rates,
    retrieval_metrics,
    strict_top1,
)
from fgclip.text.lexicon import SHAPES

if TYPE_CHECKING:
    from fgclip.config import Params

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]


@dataclass
class WorldFeatures:
    images: np.ndarray  # (N, D) normalised
    regions: list[np.ndarray]  # per image: (objects, D) normalised, truth order


def encode_world(world: HeldoutWorld, embedder: Embedder, batch_size: int, progress: bool = False) -> WorldFeatures:
    images, regions = embed_images(
        embedder,
        lambda i: world.samples[i].open_image(),
        [sample.boxes() for sample in world.samples],
        batch_size=batch_size,
        progress=progress,
        desc="held-out images",
    )
    return WorldFeatures(images, regions)


def score_choices(
    choices: Sequence[RegionChoice],
    region_of: Callable[[RegionChoice], np.ndarray],
    embedder: Embedder,
    batch_size: int,
    progress: bool = False,
    desc: str = "texts",
) -> list[np.ndarray]:
    texts = list(dict.fromkeys(text for choice in choices for text in choice.candidates))
    table = embed_texts(embedder, texts, long=False, batch_size=batch_size, progress=progress, desc=desc)
    row = {text: index for index, text in enumerate(texts)}
    queries = np.stack([region_of(choice) for choice in choices])
    return candidate_scores(queries, table, [[row[text] for text in choice.candidates] for choice in choices])


def evaluate_world(
    world: HeldoutWorld, embedder: Embedder, params: Params, progress: bool = False
) -> tuple[dict[str, float], dict[str, int]]:
    """All held-out demo tasks: (metrics in [0, 1], counts)."""
    config = params.eval
    if not world.samples:
        raise ValueError("the held-out world has no usable samples")
    features = encode_world(world, embedder, config.batch_size, progress)
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {
        "heldout_images": len(world.samples),
        "heldout_objects": sum(len(s.objects) for s in world.samples),
    }

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
        table = embed_texts(
            embedder, unique, long=long, batch_size=config.batch_size, progress=progress, desc=f"{name} captions"
        )
        row = {text: index for index, text in enumerate(unique)}
        metrics.update(retrieval_metrics(features.images, table, [row[c] for c in captions], config.retrieval_ks, name))
        counts[f"{name}_unique_captions"] = len(unique)

    labelled = [
        (index, obj) for index, sample in enumerate(world.samples) if (obj := largest_object(sample)) is not None
    ]
    if labelled:
        prompts = [template.format(shape) for shape in SHAPES for template in config.zero_shot_templates]
        flat = embed_texts(
            embedder, prompts, long=False, batch_size=config.batch_size, progress=progress, desc="zero-shot prompts"
        )
        classes = ensemble_templates(flat.reshape(len(SHAPES), len(config.zero_shot_templates), -1))
        images = features.images[[index for index, _ in labelled]]
        scores = list(l2_normalise(images) @ classes.T)
        metrics["zero_shot_top1"] = strict_top1(scores, [SHAPES.index(obj["shape"]) for _, obj in labelled])
        counts["zero_shot_images"] = len(labelled)
    return metrics, counts


def evaluate_fgovd(
    splits: Mapping[str, Any],
    image_paths: Mapping[str, Path],
    embedder: Embedder,
    params: Params,
    progress: bool = False,
) -> tuple[dict[str, float], dict[str, int]]:
    """Top-1 accuracy per difficulty over the items whose image is in ``image_paths``.

    ``splits``: difficulty -> ``fgclip.eval.fgovd.FGOVDSplit``. Region embeddings are computed
    once per distinct (image, box): the difficulty files share most of their boxes.
    """
    config = params.eval
    selected = {
        name: split.items[: config.fgovd_max_items] if config.fgovd_max_items else split.items
        for name, split in splits.items()
    }
    boxes_of: dict[str, dict[Box, int]] = defaultdict(dict)
    for items in selected.values():
        for item in items:
            if item.image_name in image_paths:
                boxes_of[item.image_name].setdefault(item.box, len(boxes_of[item.image_name]))
    names = sorted(boxes_of)
    regions: dict[str, np.ndarray] = {}
    unreadable: list[str] = []
    for start in tqdm(
        range(0, len(names), config.batch_size), desc="FG-OVD images", unit="batch", disable=not progress
    ):
        batch, pictures = [], []
        for name in names[start : start + config.batch_size]:
            try:
                with Image.open(image_paths[name]) as opened:
                    pictures.append(opened.convert("RGB"))
                batch.append(name)
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
                log.warning("FG-OVD image %s is unreadable: %s", image_paths[name], error)
                unreadable.append(name)
        if not batch:
            continue
        _, rows = embedder.encode_images(
            pictures, [np.asarray(list(boxes_of[name]), dtype=np.float64) for name in batch], with_global=False
        )
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
            item.positive.casefold() in {text.casefold() for text in item.negatives} for item in usable
        )
        if not usable:
            log.warning("FG-OVD %s: no item has a readable image; no metric", name)
            continue
        choices = [
            RegionChoice(order[item.image_name], boxes_of[item.image_name][item.box], item.candidates, 0)
            for item in usable
        ]
        scores = score_choices(
            choices,
            lambda c: regions[names[c.image]][c.region],
            embedder,
            config.batch_size,
            progress,
            f"FG-OVD {name} texts",
        )
        metrics[f"fgovd_{name}_top1"] = strict_top1(scores, [c.target for c in choices])
    return metrics, counts
