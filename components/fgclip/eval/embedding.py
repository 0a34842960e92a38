"""The model interface of evaluation: an `Embedder` (one batch per call), so the same task
code runs on the real FG-CLIP adapter (`fgclip.model.embedder`) and on fakes in tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from fgclip.eval.metrics import l2_normalise


class Embedder(Protocol):
    """What the tasks need from a model; one batch per call, any embedding scale."""

    def identity(self) -> dict[str, Any]:
        """Model path, digest or name: logged with the metrics."""

    def encode_images(
        self, images: Sequence[Image.Image], boxes: Sequence[np.ndarray], with_global: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(global (B, D), [region embeddings (k_i, D) of boxes[i] (k_i, 4) normalised xyxy]).

        with_global=False: only the regions are needed; the global rows may be empty."""

    def encode_texts(self, texts: Sequence[str], long: bool) -> np.ndarray:
        """(len(texts), D); long=True: long captions (248 tokens, long projection)."""


def embed_texts(
    embedder: Embedder,
    texts: Sequence[str],
    *,
    long: bool,
    batch_size: int,
    progress: bool = False,
    desc: str = "texts",
) -> np.ndarray:
    """Normalised embeddings of ``texts`` (duplicates are encoded once)."""
    unique = list(dict.fromkeys(texts))
    rows: list[np.ndarray] = []
    for start in tqdm(range(0, len(unique), batch_size), desc=desc, unit="batch", disable=not progress):
        rows.append(np.asarray(embedder.encode_texts(unique[start : start + batch_size], long), dtype=np.float64))
    if not rows:
        raise ValueError(f"no {desc} to embed")
    table = l2_normalise(np.concatenate(rows))
    position = {text: index for index, text in enumerate(unique)}
    return table[[position[text] for text in texts]]


def embed_images(
    embedder: Embedder,
    load: Callable[[int], Image.Image],
    boxes: Sequence[np.ndarray],
    *,
    batch_size: int,
    progress: bool = False,
    desc: str = "images",
) -> tuple[np.ndarray, list[np.ndarray]]:
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
