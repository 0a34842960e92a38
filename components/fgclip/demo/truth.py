"""The demo world's truth sidecar, read one way by every part that consults it.

`fgclip demo-world` writes, next to each image shard, `truth/NNNNN.jsonl`: one record per
image with its size, its objects (id, shape, position words, the attributes below and a
normalised box) and the spatial relations between them. The demo backends of recaption
and detect, the QC truth reviewer and the held-out evaluation read it through
`TruthSidecar`; nothing outside the demo source does.

A truth problem is never fatal to a run: the sidecar raises `TruthUnavailable` with a
reason code of the data contract (`no_truth`, `bad_truth`) and each caller turns it into
its own counted rejection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fgclip.core.boxes import is_box
from fgclip.core.shards import annotation_path, read_jsonl
from fgclip.core.storage import local_path
from fgclip.text.lexicon import ADJECTIVE_ORDER, SHAPES

#: Object attributes the truth records besides its shape, in adjective order (the order
#: captions word them).
TRUTH_ATTRIBUTES = tuple(cls for cls in ADJECTIVE_ORDER if cls in ("size", "colour", "pattern"))
#: Word fields every truth object carries.
OBJECT_WORD_FIELDS = ("shape", "position", *TRUTH_ATTRIBUTES)


class TruthUnavailable(ValueError):
    """The truth of a shard or a sample cannot be used: `reason` is a reject reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def read_truth(path: Path) -> dict[str, dict[str, Any]]:
    """A truth file's records by key; TruthUnavailable when the file is missing or broken."""
    try:
        lines = read_jsonl(path)
    except FileNotFoundError as error:
        raise TruthUnavailable("no_truth", f"truth file {path} does not exist") from error
    except (OSError, ValueError) as error:
        raise TruthUnavailable("bad_truth", f"truth file {path} is unreadable: {error}") from error
    records: dict[str, dict[str, Any]] = {}
    for number, record in enumerate(lines, 1):
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            raise TruthUnavailable("bad_truth", f"truth file {path}: record {number} has no string 'key'")
        records[record["key"]] = record
    return records


class TruthSidecar:
    """The truth folder of one split, read shard by shard (the last shard is kept, since
    stages work through one shard at a time)."""

    def __init__(self, truth_dir: str | Path) -> None:
        self.folder = local_path(truth_dir)
        self._cached: tuple[str, dict[str, dict[str, Any]] | TruthUnavailable] | None = None

    def path(self, shard: str) -> Path:
        return Path(annotation_path(self.folder, shard))  # the demo world is always a local folder

    def records(self, shard: str) -> dict[str, dict[str, Any]]:
        """Every record of `shard` by key; TruthUnavailable when its file cannot be used."""
        if self._cached is None or self._cached[0] != shard:
            try:
                self._cached = (shard, read_truth(self.path(shard)))
            except TruthUnavailable as error:
                self._cached = (shard, error)
        found = self._cached[1]
        if isinstance(found, TruthUnavailable):
            raise found
        return found

    def record(self, shard: str, key: str) -> dict[str, Any]:
        """The record of one sample; TruthUnavailable when it has none."""
        record = self.records(shard).get(key)
        if record is None:
            raise TruthUnavailable("no_truth", f"no truth record for key {key!r} in {self.path(shard)}")
        return record


def object_problem(index: int, obj: Any) -> str | None:
    """Why a truth object cannot be used (described, grounded or scored), or None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), int):
        return f"object {index} has no integer 'id'"
    for name in OBJECT_WORD_FIELDS:
        if not isinstance(obj.get(name), str) or not obj[name]:
            return f"object {index} has no '{name}' word"
    if obj["shape"] not in SHAPES:
        return f"object {obj['id']!r} has unknown shape {obj['shape']!r}"
    box = obj.get("bbox")
    if not isinstance(box, list) or not is_box(box):
        return f"object {obj['id']!r} has no finite [x1, y1, x2, y2] bbox: {box!r}"
    x1, y1, x2, y2 = box
    if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
        return f"object {obj['id']!r} bbox {box!r} is not a normalised box inside the image"
    return None


def record_problem(record: Any) -> str | None:
    """Why a truth record cannot describe its image, or None."""
    if not isinstance(record, dict) or not isinstance(record.get("objects"), list):
        return "truth record has no 'objects' list"
    for index, obj in enumerate(record["objects"]):
        problem = object_problem(index, obj)
        if problem is not None:
            return problem
    if not isinstance(record.get("relations", []), list):
        return "truth 'relations' is not a list"
    return None


def sample_problem(record: Any, width: int, height: int) -> tuple[str, str] | None:
    """(reason, detail) when a truth record cannot label an image of this size, else None."""
    problem = record_problem(record)
    if problem is not None:
        return "bad_truth", problem
    if (record.get("width"), record.get("height")) != (width, height):
        return "truth_mismatch", (
            f"truth describes a {record.get('width')}x{record.get('height')} image, the image is {width}x{height}"
        )
    return None


def checked_record(sidecar: TruthSidecar, shard: str, key: str, width: int, height: int) -> dict[str, Any]:
    """The usable truth of one image: its record, checked; TruthUnavailable otherwise."""
    record = sidecar.record(shard, key)
    problem = sample_problem(record, width, height)
    if problem is not None:
        raise TruthUnavailable(*problem)
    return record
