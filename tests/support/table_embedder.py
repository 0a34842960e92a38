"""An embedder whose similarities the test fixes: a table of vectors per image (recognised
by its decoded pixels), per box and per text, so every metric has a known answer.

Texts the table does not hold get a pseudo-random vector in dimensions no image, box or
tabled text uses: their cosine with everything tabled is exactly 0. ``oracle_for`` fills
the table so that every benchmark of ``tests.support.benchmark_files`` scores exactly 1.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fgclip.eval.benchmarks.config import BenchmarkSuiteConfig
from fgclip.eval.benchmarks.imagenet import class_names_for
from fgclip.eval.benchmarks.prompts import prompts_for
from fgclip.eval.suite.features import box_key
from tests.support.benchmark_files import Truth, file_fingerprint, fingerprint

AXES = 256  # dimensions for tabled items; the rest hold untabled texts
JUNK = 64


class TableEmbedder:
    def __init__(self, size: int = 224, long_capacity: int = 248, short_capacity: int = 77) -> None:
        self.size, self.long_capacity, self.short_capacity = size, long_capacity, short_capacity
        self.images: dict[str, np.ndarray] = {}
        self.regions: dict[tuple[str, tuple[float, ...]], np.ndarray] = {}
        self.texts: dict[tuple[str, bool | None], np.ndarray] = {}
        self.image_calls: Counter = Counter()  # (fingerprint, view) -> times embedded
        self.region_calls: Counter = Counter()
        self.text_calls: list[tuple[str, bool]] = []
        self.pixels: dict[str, np.ndarray] = {}  # fingerprint -> the pixels the suite passed
        self.next_axis = 0

    # ---------------------------------------------------------------- filling the table

    def axis(self) -> np.ndarray:
        vector = np.zeros(AXES + JUNK)
        vector[self.next_axis] = 1.0
        self.next_axis += 1
        return vector

    def set_image(self, path: Path, vector: np.ndarray) -> None:
        self.images[file_fingerprint(path)] = vector

    def set_region(self, path: Path, box: Sequence[float], vector: np.ndarray) -> None:
        self.regions[(file_fingerprint(path), box_key(box))] = vector

    def set_text(self, text: str, vector: np.ndarray, long: bool | None = None) -> None:
        self.texts[(text, long)] = vector

    # ---------------------------------------------------------------- the embedder interface

    def identity(self) -> dict:
        return {"name": "table", "image_size": self.size}

    def input_size(self) -> int:
        return self.size

    def text_capacity(self, long: bool) -> int:
        return self.long_capacity if long else self.short_capacity

    def token_counts(self, texts: Sequence[str], long: bool) -> list[int]:
        return [len(text.split()) + 2 for text in texts]

    def encode_images(self, images, boxes, with_global=True, view=None):
        globals_, regions = [], []
        for image, image_boxes in zip(images, boxes):
            assert isinstance(image, Image.Image)
            key = fingerprint(image)
            self.pixels[key] = np.asarray(image)
            if with_global:
                self.image_calls[(key, view)] += 1
            globals_.append(self.images.get(key, np.zeros(AXES + JUNK)))
            rows = []
            for box in np.asarray(image_boxes).reshape(-1, 4):
                self.region_calls[(key, box_key(box))] += 1
                rows.append(self.regions[(key, box_key(box))])
            regions.append(np.array(rows).reshape(len(rows), AXES + JUNK))
        return np.array(globals_), regions

    def encode_texts(self, texts, long):
        rows = []
        for text in texts:
            self.text_calls.append((text, long))
            vector = self.texts.get((text, long), self.texts.get((text, None)))
            rows.append(vector if vector is not None else untabled(text))
        return np.array(rows)


def untabled(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.zeros(AXES + JUNK)
    vector[AXES:] = np.random.default_rng(seed).normal(size=JUNK)
    return vector


def oracle_for(truth: Truth, config: BenchmarkSuiteConfig, data_root: Path) -> tuple[TableEmbedder, dict[str, dict]]:
    """A table embedder right on every benchmark; also the axes it gave out (for perturbing)."""
    embedder = TableEmbedder()
    axes: dict[str, dict] = {}
    for name, images in truth.images.items():
        if name == "imagenet_1k":
            continue
        axes[name] = {}
        long = config.settings(name).text_path == "long"
        for index, (path, captions) in enumerate(zip(images, truth.captions[name])):
            vector = embedder.axis()
            axes[name][index] = vector
            embedder.set_image(path, vector)
            for caption in captions:
                embedder.set_text(caption, vector, long)
    for name in ("coco_boxes", "lvis_boxes"):
        settings = config.settings(name)
        class_axes = [embedder.axis() for _ in truth.classes[name]]
        prompts, templates, _ = prompts_for(truth.classes[name], settings)  # type: ignore[arg-type]
        for index, prompt in enumerate(prompts):
            embedder.set_text(prompt, class_axes[index // templates], False)
        for path, box, label in truth.boxes[name]:
            embedder.set_region(path, box, class_axes[label])
        axes[name] = {"classes": class_axes}
    settings = config.imagenet_1k
    wnids = sorted(p.name for p in (data_root / settings.folder).iterdir() if p.is_dir())
    names = class_names_for(wnids, settings, data_root)
    used = sorted(set(truth.labels["imagenet_1k"]))
    class_axes = {label: embedder.axis() for label in used}
    prompts, templates, _ = prompts_for([names[label] for label in used], settings)
    for index, prompt in enumerate(prompts):
        embedder.set_text(prompt, class_axes[used[index // templates]], False)
    for path, label in zip(truth.images["imagenet_1k"], truth.labels["imagenet_1k"]):
        embedder.set_image(path, class_axes[label])
    axes["imagenet_1k"] = class_axes
    for line in truth.fgovd:
        path = data_root / "coco" / line["img_path"]
        x, y, w, h = line["bbox"]
        box = (x / line["width"], y / line["height"], (x + w) / line["width"], (y + h) / line["height"])
        vector = embedder.axis()
        embedder.set_region(path, box, vector)
        for positive in line["pos_expression"]:
            for difficulty in ("hard", "medium", "easy", "trivial"):
                embedder.set_text(positive.replace(" hard ", f" {difficulty} "), vector, False)
    return embedder, axes
