"""Reading FineHARD files and turning one FineHARD record into this project's records
(an image sample, a caption record, a regions record and a negatives record)."""


from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from fgclip.core.join import LAYOUT_KEY, RECORD_FIELDS, REGION_FIELDS, split_layout
from fgclip.core.shards import ShardSample
from fgclip.core.storage import local_path


log = logging.getLogger(__name__)


IMPORTER = {"name": "finehard-import", "version": "1"}
STAGE_NAME = "finehard-import"
KINDS = {"captions": "caption_record", "regions": "regions_record", "negatives": "negatives_record"}
FORMATS = ("json", "jsonl")
KEY_DIGITS = 9
SNIFF_CHARS = 4096  # enough of a file's start to see whether it opens a JSON array


class RecordError(ValueError):
    """Why one FineHARD record cannot be imported: a reason code and a readable detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def read_finehard(path: str | Path) -> tuple[str, Iterator[Any]]:
    """(format, records): 'json' for a file holding one JSON array, else 'jsonl' (one
    JSON value per line). A line that does not parse yields a RecordError in its place,
    so record numbering (and thus keys) stays stable."""
    with open(local_path(path), encoding="utf-8-sig", errors="surrogateescape") as handle:
        head = handle.read(SNIFF_CHARS).lstrip()
    if head.startswith("["):
        with open(local_path(path), encoding="utf-8-sig") as handle:
            try:
                records = json.load(handle)
            except json.JSONDecodeError as error:
                if error.msg != "Extra data":
                    raise ValueError(f"{path}: not a valid JSON array: {error}") from error
                records = None  # several values: JSON lines whose first line is an array
        if isinstance(records, list):
            return "json", iter(records)
    return "jsonl", _read_lines(path)


def _read_lines(path: str | Path) -> Iterator[Any]:
    # undecodable bytes become lone surrogates, which convert_record rejects as bad_text
    with open(local_path(path), encoding="utf-8-sig", errors="surrogateescape") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                yield RecordError("bad_json", f"{Path(path).name}:{number}: not valid JSON: {error}")


def _text(item: dict[str, Any], name: str, where: str) -> str:
    if name not in item:
        raise RecordError("missing_field", f"{where}has no {name!r}")
    value = item[name]
    if not isinstance(value, str):
        raise RecordError("bad_field", f"{where}{name!r} is {type(value).__name__}, not a string")
    if not value.strip():
        raise RecordError("empty_text", f"{where}{name!r} is empty")
    return value


def _is_number(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)  # a huge int fails the range check later


def _region(item: Any, number: int, missing_score: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(regions-record region, negatives-record region) of one bbox_info entry."""
    where = f"bbox_info[{number}]: "
    if not isinstance(item, dict):
        raise RecordError("bad_field", f"{where}is {type(item).__name__}, not an object")
    if "bbox" not in item:
        raise RecordError("missing_field", f"{where}has no 'bbox'")
    bbox = item["bbox"]
    if not isinstance(bbox, list) or len(bbox) not in (4, 5) or not all(_is_number(v) for v in bbox):
        raise RecordError("bad_bbox", f"{where}bbox {bbox!r} is not 4 or 5 finite numbers")
    x1, y1, x2, y2 = bbox[:4]
    if not all(0 <= v <= 1 for v in bbox[:4]):
        raise RecordError("bbox_out_of_range", f"{where}bbox {bbox!r} is not normalised to [0, 1]")
    if not (x1 < x2 and y1 < y2):
        raise RecordError("bbox_degenerate", f"{where}bbox {bbox!r} has no area (needs x1 < x2 and y1 < y2)")
    extra = split_layout(item, REGION_FIELDS)
    if len(bbox) == 5 and 0 <= bbox[4] <= 1:
        score = bbox[4]
    else:
        # no usable detector score: the contract needs one, the export needs the bbox as given
        score = missing_score
        extra["bbox"] = bbox
    region = {"bbox": bbox[:4], "score": score,
              "short_expr": _text(item, "short_expr", where), "long_expr": _text(item, "long_expr", where)}
    if extra:
        region["extra"] = extra
    return region, _negatives(item, where)


def _negatives(item: dict[str, Any], where: str) -> dict[str, Any]:
    given = item.get("short_expr_negs", {})
    if not isinstance(given, dict):
        raise RecordError("bad_negatives", f"{where}short_expr_negs is {type(given).__name__}, not an object")
    for name, value in given.items():
        if not isinstance(value, str) or not value.strip():
            raise RecordError("bad_negatives", f"{where}short_expr_negs[{name!r}] is not a non-empty string: {value!r}")
    negs = list(given.values())
    entry: dict[str, Any] = {"short_expr_negs": negs}
    if list(given) != [str(index) for index in range(len(negs))]:
        entry["neg_keys"] = list(given)
    if "flag_short_neg" in item:
        flag = item["flag_short_neg"]
        if type(flag) is not int or flag != int(bool(negs)):  # bool is an int too: keep true/false as given
            entry["flag_short_neg"] = flag
    return entry


@dataclass(frozen=True)
class Converted:
    sample: ShardSample
    caption: dict[str, Any]
    regions: dict[str, Any]
    negatives: dict[str, Any]


def _safe_relative(f_path: str) -> bool:
    path = PurePosixPath(f_path.replace("\\", "/"))
    return not path.is_absolute() and ".." not in path.parts


def _read_jpeg(image_root: Path, f_path: str) -> tuple[bytes, int, int]:
    if not _safe_relative(f_path):
        raise RecordError("unsafe_path", f"f_path {f_path!r} is absolute or climbs out of the image root with '..'")
    path = image_root / f_path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecordError("missing_image", f"image {f_path!r} not found under {image_root}") from None
    except OSError as error:
        raise RecordError("unreadable_image", f"image {f_path!r} cannot be read: {error}") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a truncated file fails here, not at training time
            width, height, fmt = image.width, image.height, image.format
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise RecordError("corrupt_image", f"image {f_path!r} cannot be decoded: {error}") from None
    if fmt != "JPEG":
        raise RecordError("unsupported_image_format", f"image {f_path!r} is {fmt}; shards store JPEG bytes as read, never re-encoded")
    return data, width, height


def convert_record(raw: Any, key: str, image_root: Path, missing_score: float) -> Converted:
    """The image shard sample and the three annotation records of one FineHARD record."""
    if isinstance(raw, RecordError):
        raise raw
    if not isinstance(raw, dict):
        raise RecordError("not_an_object", f"record is {type(raw).__name__}, not a JSON object")
    try:
        json.dumps(raw, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        raise RecordError("bad_text", f"record holds text that is not valid Unicode: {error}") from None
    f_path = _text(raw, "f_path", "")
    long_caption = _text(raw, "caption", "")
    short_caption = _text(raw, "short_caption", "")
    if "bbox_info" not in raw:
        raise RecordError("missing_field", "has no 'bbox_info'")
    if not isinstance(raw["bbox_info"], list):
        raise RecordError("bad_field", f"'bbox_info' is {type(raw['bbox_info']).__name__}, not a list")
    pairs = [_region(item, number, missing_score) for number, item in enumerate(raw["bbox_info"])]
    jpeg, width, height = _read_jpeg(image_root, f_path)
    layout = split_layout(raw, RECORD_FIELDS)
    if short_caption != short_caption.strip():
        layout["short_caption"] = short_caption  # the shard reader strips the alt text
    meta: dict[str, Any] = {"width": width, "height": height, "f_path": f_path}
    if layout:
        meta[LAYOUT_KEY] = layout
    return Converted(
        sample=ShardSample(key, jpeg, short_caption, meta),
        caption={"key": key, "long_caption": long_caption},
        regions={"key": key, "width": width, "height": height, "regions": [region for region, _ in pairs]},
        negatives={"key": key, "regions": [negs for _, negs in pairs]},
    )


