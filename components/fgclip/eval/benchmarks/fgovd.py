"""FG-OVD (hard, medium, easy, trivial) in the suite: the benchmark's own jsonl files, read
by ``fgclip.eval.fgovd``, with their COCO val2017 images resolved under the data root."""

from __future__ import annotations

from pathlib import Path

from fgclip.eval import fgovd as reader
from fgclip.eval.benchmarks.base import (
    Benchmark,
    BenchmarkMissing,
    Choice,
    ChoiceSet,
    ImageFolder,
    RejectLog,
    check_images,
    index_of,
    require_folder,
)
from fgclip.eval.benchmarks.config import FGOVDSettings

NAME = "fgovd"


def load(settings: FGOVDSettings, data_root: Path, allow_missing_images: bool) -> Benchmark:
    folder = require_folder(data_root / settings.folder, NAME, "FG-OVD folder")
    try:
        splits = reader.load_fgovd(folder, settings.difficulties)
    except FileNotFoundError as error:
        raise BenchmarkMissing(f"{NAME}: {error}") from error
    rejects = RejectLog(NAME)
    for split in splits.values():
        rejects.items.extend(split.rejects)  # each already logged by the reader
    images = ImageFolder(data_root / settings.images, NAME)
    names = sorted({item.image_name for split in splits.values() for item in split.items})
    where = {name: images.find(name) for name in names}
    missing = [name for name, path in where.items() if path is None]
    for name in missing:
        rejects.add("images", name, "image_missing", f"{name} not under {images.root}")
    check_images(NAME, images.root, len(names), missing, allow_missing_images)
    order = index_of(path for path in where.values() if path is not None)
    questions: dict[str, list[Choice]] = {}
    counts: dict[str, int] = {}
    for difficulty, split in splits.items():
        usable = [item for item in split.items if where[item.image_name] is not None]
        questions[difficulty] = [
            Choice(order[where[item.image_name]], item.box, item.candidates)  # type: ignore[index]
            for item in usable
        ]
        counts[f"{difficulty}_lines"] = split.lines
        counts[f"{difficulty}_clipped_boxes"] = split.clipped_boxes
        # Lines that list their positive among the negatives: a tie no model can win.
        counts[f"{difficulty}_positive_among_negatives"] = sum(
            item.positive.casefold() in {text.casefold() for text in item.negatives} for item in usable
        )
    files = {difficulty: str(split.path) for difficulty, split in splits.items()}
    files["images"] = str(images.root)
    return Benchmark(NAME, "choices", ChoiceSet(list(order), questions), files, rejects.items, counts)
