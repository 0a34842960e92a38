"""Embeddings for the whole suite, computed once.

The suite first collects what it needs (``FeaturePlan``: per image file, which global
views and which boxes), then ``encode_plan`` walks the images in batches: each file is
decoded once, its boxes and its 'whole' global view come from one forward pass, its
'processor' view (resize + centre crop) from a second one if some benchmark asks for it.
COCO val2017 images, for example, serve COCO box classification, FG-OVD, LVIS and the
COCO 5k retrieval split but are decoded and embedded only once. Texts are cached the
same way per text path (``TextCache``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from fgclip.eval.benchmarks.base import Box
from fgclip.eval.embedding import Embedder, embed_texts
from fgclip.eval.metrics import l2_normalise

log = logging.getLogger(__name__)

VIEWS = ("whole", "processor")


class BenchmarkEmbedder(Embedder, Protocol):
    """What the suite needs beyond ``Embedder``: the protocol facts it checks, and a global
    view per call (``fgclip.model.embedder.FGCLIPEmbedder`` implements it)."""

    def input_size(self) -> int:
        """Pixels per side the vision tower runs at."""

    def text_capacity(self, long: bool) -> int:
        """Tokens the long or short text path takes."""

    def token_counts(self, texts: Sequence[str], long: bool) -> list[int]:
        """Untruncated token counts of ``texts`` on that path."""

    def encode_images(
        self,
        images: Sequence[Image.Image],
        boxes: Sequence[np.ndarray],
        with_global: bool = True,
        view: str | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """As ``Embedder.encode_images``; ``view`` picks the global view ('whole' or 'processor')."""


@dataclass
class ImageNeeds:
    views: set[str] = field(default_factory=set)
    boxes: dict[Box, None] = field(default_factory=dict)  # an ordered set


class FeaturePlan:
    """Per image file: the global views and the boxes some benchmark needs."""

    def __init__(self) -> None:
        self.needs: dict[Path, ImageNeeds] = {}

    def want_global(self, path: Path, view: str) -> None:
        if view not in VIEWS:
            raise ValueError(f"unknown image view {view!r}; known: {VIEWS}")
        self.needs.setdefault(path, ImageNeeds()).views.add(view)

    def want_boxes(self, path: Path, boxes: np.ndarray | Sequence[Box]) -> None:
        needs = self.needs.setdefault(path, ImageNeeds())
        for row in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            needs.boxes.setdefault(box_key(row), None)

    @property
    def box_count(self) -> int:
        return sum(len(needs.boxes) for needs in self.needs.values())


def box_key(row: Any) -> Box:
    """A box as a hashable key (rounded, so float noise does not split one box into two)."""
    x1, y1, x2, y2 = (round(float(v), 6) for v in row)
    return x1, y1, x2, y2


@dataclass
class Features:
    globals: dict[tuple[Path, str], np.ndarray] = field(default_factory=dict)  # normalised rows
    regions: dict[tuple[Path, Box], np.ndarray] = field(default_factory=dict)
    unreadable: dict[Path, str] = field(default_factory=dict)
    images_decoded: int = 0
    forward_passes: int = 0
    decode_seconds: float = 0.0
    model_seconds: float = 0.0

    def throughput(self) -> dict[str, float]:
        total = self.decode_seconds + self.model_seconds
        return {
            "images": float(self.images_decoded),
            "regions": float(len(self.regions)),
            "forward_passes": float(self.forward_passes),
            "decode_seconds": round(self.decode_seconds, 3),
            "model_seconds": round(self.model_seconds, 3),
            "images_per_second": round(self.images_decoded / total, 3) if total > 0 else 0.0,
        }


def decode(path: Path) -> Image.Image:
    with Image.open(path) as opened:
        return opened.convert("RGB")


def encode_plan(embedder: BenchmarkEmbedder, plan: FeaturePlan, batch_size: int, progress: bool = False) -> Features:
    """Decode each planned image once and embed it once per needed view (see the module doc)."""
    features = Features()
    paths = sorted(plan.needs)
    for start in tqdm(range(0, len(paths), batch_size), desc="benchmark images", unit="batch", disable=not progress):
        began = time.perf_counter()
        batch: list[tuple[Path, Image.Image]] = []
        for path in paths[start : start + batch_size]:
            try:
                batch.append((path, decode(path)))
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
                log.warning("benchmark image %s is unreadable: %s", path, error)
                features.unreadable[path] = f"{type(error).__name__}: {error}"
        features.images_decoded += len(batch)
        features.decode_seconds += time.perf_counter() - began
        began = time.perf_counter()
        _encode_whole(embedder, plan, batch, features)
        _encode_processor(embedder, plan, batch, features)
        features.model_seconds += time.perf_counter() - began
    return features


def _encode_whole(
    embedder: BenchmarkEmbedder, plan: FeaturePlan, batch: list[tuple[Path, Image.Image]], features: Features
) -> None:
    """One pass for the boxes and the 'whole' global view of the images that need either."""
    chosen = [(path, image) for path, image in batch if "whole" in plan.needs[path].views or plan.needs[path].boxes]
    if not chosen:
        return
    with_global = any("whole" in plan.needs[path].views for path, _ in chosen)
    boxes = [np.asarray(list(plan.needs[path].boxes), dtype=np.float64).reshape(-1, 4) for path, _ in chosen]
    rows, regions = embedder.encode_images([image for _, image in chosen], boxes, with_global=with_global, view="whole")
    features.forward_passes += 1
    for index, (path, _) in enumerate(chosen):
        if "whole" in plan.needs[path].views:
            features.globals[(path, "whole")] = l2_normalise(rows[index]).astype(np.float32)
        for key, region in zip(plan.needs[path].boxes, l2_normalise(regions[index])):
            features.regions[(path, key)] = region.astype(np.float32)


def _encode_processor(
    embedder: BenchmarkEmbedder, plan: FeaturePlan, batch: list[tuple[Path, Image.Image]], features: Features
) -> None:
    chosen = [(path, image) for path, image in batch if "processor" in plan.needs[path].views]
    if not chosen:
        return
    empty = [np.zeros((0, 4))] * len(chosen)
    rows, _ = embedder.encode_images([image for _, image in chosen], empty, with_global=True, view="processor")
    features.forward_passes += 1
    for index, (path, _) in enumerate(chosen):
        features.globals[(path, "processor")] = l2_normalise(rows[index]).astype(np.float32)


class TextCache:
    """Normalised text embeddings per (text, path), each text encoded once for the whole suite."""

    def __init__(self, embedder: BenchmarkEmbedder, batch_size: int, progress: bool = False) -> None:
        self.embedder = embedder
        self.batch_size = batch_size
        self.progress = progress
        self.rows: dict[tuple[str, bool], np.ndarray] = {}
        self.tokens: dict[tuple[str, bool], int] = {}
        self.seconds = 0.0

    def embed(self, texts: Sequence[str], long: bool, desc: str = "texts") -> np.ndarray:
        """(len(texts), D) rows aligned with ``texts``."""
        todo = list(dict.fromkeys(text for text in texts if (text, long) not in self.rows))
        if todo:
            began = time.perf_counter()
            table = embed_texts(
                self.embedder, todo, long=long, batch_size=self.batch_size, progress=self.progress, desc=desc
            )
            for text, row, count in zip(todo, table, self.embedder.token_counts(todo, long)):
                self.rows[(text, long)] = row.astype(np.float32)
                self.tokens[(text, long)] = count
            self.seconds += time.perf_counter() - began
        return np.stack([self.rows[(text, long)] for text in texts])

    def truncated(self, texts: Sequence[str], long: bool) -> int:
        """How many distinct ``texts`` are longer than the path takes (cut at its capacity)."""
        capacity = self.embedder.text_capacity(long)
        return sum(self.tokens[(text, long)] > capacity for text in dict.fromkeys(texts))
