"""`finehard import`: FineHARD files + an image folder -> image shards and annotation folders."""


from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fgclip.core.shards import KEY_PATTERN, SHARD_PATTERN, Reject, batched, write_image_shard
from fgclip.core.stage import ShardResult, ShardStage, run_stage
from fgclip.core.storage import local_path, sha256_file
from fgclip.data.finehard.records import IMPORTER, KEY_DIGITS, KINDS, STAGE_NAME, Converted, RecordError, convert_record, read_finehard

log = logging.getLogger(__name__)


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

    def shard_inputs(self, shard: str) -> dict[str, str | Path]:
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


