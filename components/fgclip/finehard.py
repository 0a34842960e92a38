"""FineHARD import and export: the published FG-CLIP stage-2 annotations <-> this
project's image shards and per-stage annotation records.

    fgclip finehard import --annotations FILE [FILE ...] --image-root DIR --out DIR --shard-size N
        -> DIR/images/NNNNN.{tar,parquet}   (KEY.jpg as read, KEY.txt = short_caption,
                                             KEY.json = size, f_path, layout)
           DIR/captions|regions|negatives/NNNNN.{jsonl,rejects.jsonl,manifest.json}
    fgclip finehard export --images DIR --captions DIR --regions DIR --negatives DIR --out FILE

A FineHARD file is a JSON array or JSON lines (told apart by content). Record i of the
input (counting across files, rejected records included) becomes key `<prefix><i:09d>`
in shard i // shard_size, so keys and shards do not move when one record goes bad.

Import then export gives back records equal to the input, key order included: fields the
contract does not name are kept in a layout (see fgclip.join). A bad record (not an
object, a missing or mistyped field, empty text, a bbox outside [0, 1] or degenerate,
an image missing, unsafe, corrupt or not a JPEG) becomes a Reject in the captions
rejects file and is counted; the import goes on.

The annotation folders are written by stage.run_stage, so their manifests and
fingerprints are the ones every other stage writes. Images are copied byte for byte,
never re-encoded: non-JPEG images are rejected rather than silently recompressed.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image
from tqdm import tqdm

from fgclip.join import LAYOUT_KEY, RECORD_FIELDS, REGION_FIELDS, join_shard, split_layout
from fgclip.shards import KEY_PATTERN, SHARD_PATTERN, Reject, ShardSample, batched, list_shards, write_image_shard
from fgclip.stage import ShardResult, ShardStage, run_stage
from fgclip.storage import atomic_local_file, local_path, sha256_file, write_text_atomic

log = logging.getLogger(__name__)

HELP = "import the published FineHARD annotations into shards, or export shards as FineHARD"
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


# ---------------------------------------------------------------- reading FineHARD files

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


# ---------------------------------------------------------------- one record -> contract records

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


# ---------------------------------------------------------------- import

@dataclass
class ImportSummary:
    formats: list[str] = field(default_factory=list)
    records: int = 0
    imported: int = 0
    shards: list[str] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"formats": self.formats, "records": self.records, "imported": self.imported,
                "shards": len(self.shards), "rejected_total": sum(self.rejected.values()),
                "rejected": dict(sorted(self.rejected.items())), "stages": self.stages}


class ImportedAnnotations(ShardStage):
    """Hands one kind of converted annotations of each shard to run_stage, which writes,
    validates and fingerprints them like any stage's output. The image shard is the input."""

    def __init__(self, kind: str, images_dir: Path, spill_dir: Path, settings: dict[str, Any]) -> None:
        self.kind = kind
        self.name = f"{STAGE_NAME}-{kind}"
        self.record_kind = KINDS[kind]
        self.images_dir = images_dir
        self.spill_dir = spill_dir
        self._settings = settings

    def shard_inputs(self, shard: str) -> dict[str, Path]:
        return {"images": self.images_dir / f"{shard}.tar"}

    def settings(self) -> dict[str, Any]:
        return self._settings

    def process_shard(self, shard: str) -> ShardResult:
        spilled = json.loads((self.spill_dir / f"{shard}.json").read_text(encoding="utf-8"))
        # the import rejects a record as a whole: the captions folder carries the rejects
        rejects = [Reject(**item) for item in spilled["rejects"]] if self.kind == "captions" else []
        items_in = spilled["records"] if self.kind == "captions" else len(spilled[self.kind])
        return ShardResult(spilled[self.kind], rejects, items_in)


def _remove_stale_image_shards(images_dir: Path, keep: set[str]) -> None:
    for path in images_dir.iterdir():
        shard, _, suffix = path.name.partition(".")
        if suffix in ("tar", "parquet") and SHARD_PATTERN.match(shard) and shard not in keep:
            log.info("finehard import: removing image shard %s left by an earlier import", path.name)
            path.unlink()


@dataclass
class ImportJob:
    """What converting one shard needs; the summary collects the counts."""

    image_root: Path
    images_dir: Path
    spill_dir: Path
    key_prefix: str
    missing_score: float
    summary: ImportSummary

    def key(self, number: int) -> str:
        return f"{self.key_prefix}{number:0{KEY_DIGITS}d}"

    def convert_shard(self, shard: str, first: int, chunk: list[Any]) -> None:
        """Write the image shard of records first.. and spill their annotations."""
        converted: list[Converted] = []
        rejects: list[Reject] = []
        for number, raw in enumerate(chunk, first):
            key = self.key(number)
            try:
                converted.append(convert_record(raw, key, self.image_root, self.missing_score))
            except RecordError as error:
                log.warning("finehard import: record %d (%s): %s: %s", number, key, error.reason, error.detail)
                rejects.append(Reject(shard, key, error.reason, f"record {number}: {error.detail}", stage=STAGE_NAME))
                self.summary.rejected[error.reason] += 1
        write_image_shard(self.images_dir, shard, (item.sample for item in converted))
        spilled = {"records": len(chunk), "rejects": [r.to_dict() for r in rejects],
                   "captions": [c.caption for c in converted], "regions": [c.regions for c in converted],
                   "negatives": [c.negatives for c in converted]}
        (self.spill_dir / f"{shard}.json").write_text(json.dumps(spilled, ensure_ascii=False), encoding="utf-8")
        self.summary.records += len(chunk)
        self.summary.imported += len(converted)
        self.summary.shards.append(shard)


def _all_records(paths: Sequence[str | Path], formats: list[str]) -> Iterator[Any]:
    """The records of several files in order, each file opened only when reached."""
    for path in paths:
        fmt, records = read_finehard(path)
        formats.append(fmt)
        yield from records


def import_finehard(annotations: Sequence[str | Path], image_root: str | Path, out: str | Path, *,
                    shard_size: int, key_prefix: str = "fh", missing_score: float = 1.0,
                    progress: bool = True) -> ImportSummary:
    """Import FineHARD files (records numbered across them in order) into `out`.

    Converted annotations wait in a temporary spill folder (one file per shard) until
    the image shards they are fingerprinted against exist, so memory holds one shard
    (plus the whole file for a JSON array; JSON lines are streamed)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if not KEY_PATTERN.match(f"{key_prefix}0"):
        raise ValueError(f"key prefix {key_prefix!r} would make keys outside {KEY_PATTERN.pattern}")
    if not 0 <= missing_score <= 1:
        raise ValueError(f"missing_score must be in [0, 1], got {missing_score}")
    target = local_path(out)
    images_dir = target / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    summary = ImportSummary()
    settings = {"importer": IMPORTER, "key_prefix": key_prefix, "shard_size": shard_size, "missing_score": missing_score,
                "annotations": [{"name": Path(p).name, "sha256": sha256_file(p)} for p in annotations]}
    with tempfile.TemporaryDirectory(prefix="fgclip-finehard-") as spill:
        job = ImportJob(local_path(image_root), images_dir, Path(spill), key_prefix, missing_score, summary)
        chunks = batched(_all_records(annotations, summary.formats), shard_size)
        for number, chunk in enumerate(tqdm(chunks, desc="finehard import", unit="shard", disable=not progress)):
            job.convert_shard(f"{number:05d}", number * shard_size, chunk)
        _remove_stale_image_shards(images_dir, set(summary.shards))
        for kind in KINDS:
            stage = ImportedAnnotations(kind, images_dir, job.spill_dir, settings)
            summary.stages[kind] = run_stage(stage, summary.shards, target / kind, progress=progress).as_dict()
    log.info("finehard import: %s", summary.as_dict())
    return summary


# ---------------------------------------------------------------- export

def format_for(path: str | Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown FineHARD format {fmt!r}; use one of {FORMATS}")
        return fmt
    return "json" if str(path).endswith(".json") else "jsonl"


def export_finehard(images: str | Path, captions: str | Path, regions: str | Path | None,
                    negatives: str | Path | None, out: str | Path, *, fmt: str | None = None,
                    progress: bool = True) -> Counter:
    """Write every joined sample of every image shard as one FineHARD record; returns the
    join counts (joined, missing_*, ...)."""
    fmt = format_for(out, fmt)
    counts: Counter = Counter()
    with atomic_local_file(local_path(out), "w", encoding="utf-8") as handle:
        if fmt == "json":
            handle.write("[")
        first = True
        for shard in tqdm(list_shards(images), desc="finehard export", unit="shard", disable=not progress):
            for _, record in join_shard(images, captions, regions, negatives, shard, counts=counts,
                                        decode_images=False, with_key=False):
                line = json.dumps(record, ensure_ascii=False)
                if fmt == "json":
                    handle.write(("\n" if first else ",\n") + line)
                else:
                    handle.write(line + "\n")
                first = False
        if fmt == "json":
            handle.write("\n]\n")
    log.info("finehard export: %s", dict(counts))
    return counts


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="action")
    load = actions.add_parser("import", help="FineHARD file(s) + image folder -> image shards and annotation folders")
    load.add_argument("--annotations", nargs="+", required=True, help="FineHARD JSON or JSON-lines file(s); records are numbered across them in order")
    load.add_argument("--image-root", required=True, help="folder the records' f_path values are relative to")
    load.add_argument("--out", required=True, help="writes OUT/images, OUT/captions, OUT/regions, OUT/negatives")
    load.add_argument("--shard-size", type=int, default=10000, help="records per shard (default: 10000, as img2dataset)")
    load.add_argument("--key-prefix", default="fh", help="sample keys are PREFIX + 9-digit record number (default: fh)")
    load.add_argument("--missing-score", type=float, default=1.0,
                      help="region score when a bbox has no usable 5th value (default: 1.0, the box was published)")
    load.add_argument("--report", help="write the import counts as JSON here")
    save = actions.add_parser("export", help="image shards + annotation folders -> one FineHARD file")
    save.add_argument("--images", required=True)
    save.add_argument("--captions", required=True)
    save.add_argument("--regions", help="regions folder (left out: no bbox_info)")
    save.add_argument("--negatives", help="negatives folder (left out: no negatives)")
    save.add_argument("--out", required=True, help="FineHARD file to write")
    save.add_argument("--format", choices=FORMATS, help="json (one array) or jsonl; default: by the --out suffix")
    save.add_argument("--report", help="write the export counts as JSON here")


def command(args: argparse.Namespace, params: Any) -> int:
    from fgclip.cli import ComponentError
    from fgclip.tracking import tracked_run

    progress = not getattr(args, "no_progress", False)
    with tracked_run(params.tracking, f"finehard-{args.action}", tags={"component": "finehard"}) as tracker:
        try:
            if args.action == "import":
                summary = import_finehard(args.annotations, args.image_root, args.out, shard_size=args.shard_size,
                                          key_prefix=args.key_prefix, missing_score=args.missing_score, progress=progress)
                counts = summary.as_dict()
                tracker.log_params({"shard_size": args.shard_size, "key_prefix": args.key_prefix, "missing_score": args.missing_score})
                for path in args.annotations:
                    tracker.log_dataset(path, f"finehard:{Path(path).name}")
            else:
                counts = dict(export_finehard(args.images, args.captions, args.regions, args.negatives, args.out,
                                              fmt=args.format, progress=progress))
        except (OSError, ValueError) as error:
            raise ComponentError(str(error)) from error
        tracker.log_metrics({k: v for k, v in counts.items() if k != "stages"})
        if args.report:
            write_text_atomic(args.report, json.dumps(counts, indent=2) + "\n")
            tracker.log_artifact(args.report)
    print(json.dumps(counts, indent=2))
    return 0
