"""ImageNet-1k zero-shot classification on the 50 000 validation images.

Reads the validation set in its usual folder-per-class layout (``val/<wnid>/<image>.JPEG``,
``n01440764/ILSVRC2012_val_00000293.JPEG``; the official flat tar is sorted into it by the
devkit's labels). Class index = position of the wnid in sorted order, which is the order
of CLIP's 1000 class names (CLIP_benchmark's ``imagenet1k`` list); or names from a JSON
file ``{wnid: name}``. Prompts: CLIP's 80 templates, ensembled.
"""

from __future__ import annotations

from pathlib import Path

from fgclip.core.shards import IMAGE_EXTS
from fgclip.eval.benchmarks.base import (
    BadBenchmarkFile,
    Benchmark,
    ClassSet,
    RejectLog,
    read_json,
    require_file,
    require_folder,
)
from fgclip.eval.benchmarks.config import ImageNetSettings
from fgclip.eval.benchmarks.prompts import CLASSNAMES_FILE, clip_benchmark_entry

NAME = "imagenet_1k"
CLIP_NAMES = "clip_benchmark:imagenet1k"


def class_names_for(wnids: list[str], settings: ImageNetSettings, data_root: Path) -> list[str]:
    if settings.class_names == CLIP_NAMES:
        names = clip_benchmark_entry(CLASSNAMES_FILE, CLIP_NAMES.split(":", 1)[1])
        if len(names) != len(wnids):
            raise BadBenchmarkFile(
                f"{NAME}: {len(wnids)} class folders, but CLIP's ImageNet list has {len(names)} names "
                "(the val folder must hold one folder per class, all 1000)"
            )
        return names
    path = require_file(data_root / settings.class_names, NAME, "class-name file")
    mapping = read_json(path, NAME)
    if not isinstance(mapping, dict):
        raise BadBenchmarkFile(f"{NAME}: {path} must map wnid -> class name")
    unnamed = [wnid for wnid in wnids if not isinstance(mapping.get(wnid), str)]
    if unnamed:
        raise BadBenchmarkFile(f"{NAME}: {path} names no class for folders {unnamed[:5]}")
    return [mapping[wnid] for wnid in wnids]


def load(settings: ImageNetSettings, data_root: Path, allow_missing_images: bool) -> Benchmark:
    root = require_folder(data_root / settings.folder, NAME, "validation folder")
    wnids = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not wnids:
        raise BadBenchmarkFile(f"{NAME}: {root} holds no class folders (expected val/<wnid>/<image>)")
    names = class_names_for(wnids, settings, data_root)
    suffixes = {f".{ext}" for ext in IMAGE_EXTS}
    rejects = RejectLog(NAME)
    images: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        for path in sorted((root / wnid).iterdir()):
            if path.is_file() and path.suffix.lower() in suffixes:
                images.append(path)
                labels.append(label)
            else:
                rejects.add(wnid, path.name, "not_an_image", "not an image file")
    if not images:
        raise BadBenchmarkFile(f"{NAME}: no images under {root}")
    rejects.summary()
    counts = {"classes": len(wnids), "empty_classes": len(wnids) - len(set(labels))}
    data = ClassSet(images=images, labels=labels, class_names=names)
    return Benchmark(
        NAME, "classification", data, {"images": str(root)}, rejects.items, counts, {"names": settings.class_names}
    )
