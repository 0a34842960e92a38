"""The resumable, fingerprinted shard loop every data-building component runs in.

A component supplies three things per shard: its input files, its settings (config
section + backend identity) and a pure `process_shard`. This module does the rest once:
it fingerprints inputs + settings + contract version, skips shards whose manifest
carries the same fingerprint and whose outputs are intact, validates every record
against the data contract, writes records, rejects and manifest atomically (the
manifest last, so a shard counts as done only when all of it is on disk), removes
outputs of shards that no longer exist, and counts everything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fgclip.core import schema
from fgclip.core.shards import Reject, annotation_path, dumps_jsonl, read_jsonl, write_jsonl_atomic
from fgclip.core.storage import (
    exists,
    is_s3,
    list_files,
    local_path,
    read_text,
    remove,
    sha256_bytes,
    sha256_file,
    write_bytes_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)


@dataclass
class ShardResult:
    records: list[dict[str, Any]]
    rejects: list[Reject] = field(default_factory=list)
    items_in: int = 0


class ShardStage(ABC):
    """One data-building component over shards."""

    name: str
    record_kind: str  # the contract definition every output record must satisfy

    @abstractmethod
    def shard_inputs(self, shard: str) -> dict[str, str | Path]:
        """Named input files of one shard (local paths or s3:// URLs); their contents go
        into the fingerprint."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Config section and backend identity (name, version, prompt hash)."""

    @abstractmethod
    def process_shard(self, shard: str) -> ShardResult:
        """Pure work for one shard: no writes, deterministic for the same inputs."""

    def metrics(self) -> dict[str, float]:
        """Run metrics beyond the counts (a model backend's throughput), logged to MLflow."""
        return {}


@dataclass
class StageSummary:
    stage: str
    shards: int = 0
    shards_skipped: int = 0
    items_in: int = 0
    items_out: int = 0
    rejected: Counter = field(default_factory=Counter)
    ignored: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    processed_items: int = 0  # items of the shards actually run (not skipped)
    input_digests: dict[str, dict[str, str]] = field(default_factory=dict)  # shard -> input -> sha256

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "shards": self.shards,
            "shards_skipped": self.shards_skipped,
            "items_in": self.items_in,
            "items_out": self.items_out,
            "rejected_total": sum(self.rejected.values()),
            "rejected": dict(sorted(self.rejected.items())),
            "ignored": dict(sorted(self.ignored.items())),
            "seconds": round(self.seconds, 3),
            "items_per_second": round(self.processed_items / self.seconds, 2) if self.seconds > 0 else 0.0,
        }


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(stage: str, input_digests: dict[str, str], settings: dict[str, Any]) -> str:
    payload = canonical_json(
        {"stage": stage, "schema": schema.SCHEMA_VERSION, "inputs": input_digests, "settings": settings}
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _digest_inputs(stage: ShardStage, shard: str) -> dict[str, str]:
    digests = {}
    for name, path in sorted(stage.shard_inputs(shard).items()):
        if not exists(path):
            raise FileNotFoundError(f"{stage.name}: input {name!r} of shard {shard} is missing: {path}")
        digests[name] = sha256_file(path)
    return digests


def _is_current(out_dir: str, shard: str, expected: str) -> dict[str, Any] | None:
    """The manifest of a finished shard with this fingerprint and intact outputs, else None."""
    manifest_file = annotation_path(out_dir, shard, "manifest")
    if not exists(manifest_file):
        return None
    try:
        manifest = json.loads(read_text(manifest_file))
    except (OSError, ValueError):
        log.warning("%s: manifest unreadable, redoing the shard", manifest_file)
        return None
    if manifest.get("fingerprint") != expected:
        return None
    for kind, digest in manifest.get("outputs", {}).items():
        path = annotation_path(out_dir, shard, "" if kind == "records" else kind)
        if not exists(path) or sha256_file(path) != digest:
            log.warning("%s: output %s changed or missing, redoing the shard", out_dir, path)
            return None
    return manifest


def _remove_stale(out_dir: str, keep: set[str]) -> None:
    for name in list_files(out_dir, ".manifest.json"):
        shard = name.split(".")[0]
        if "/" not in name and shard not in keep:
            log.info("%s: shard %s is no longer an input; removing its outputs", out_dir, shard)
            for kind in ("", "rejects", "manifest"):
                remove(annotation_path(out_dir, shard, kind))


def _count(summary: StageSummary, rejects: list[dict[str, Any]]) -> None:
    for item in rejects:
        (summary.rejected if item["dropped"] else summary.ignored)[item["reason"]] += 1


def run_stage(
    stage: ShardStage, shards: list[str], out_dir: str | Path, *, progress: bool = True, prune: bool = True
) -> StageSummary:
    """Run `stage` over `shards`, writing into `out_dir`; returns the counts.

    `prune` removes outputs of shards that are not in `shards`: right when `shards` is the
    whole input, wrong when it is one group of a fan-out (the other groups' work).
    """
    out = str(out_dir)  # a local folder or an s3:// prefix
    if not is_s3(out):
        local_path(out).mkdir(parents=True, exist_ok=True)
    if prune:
        _remove_stale(out, set(shards))
    settings = stage.settings()
    summary = StageSummary(stage.name)
    started = time.perf_counter()
    for shard in tqdm(shards, desc=stage.name, unit="shard", disable=not progress):
        digests = _digest_inputs(stage, shard)
        summary.input_digests[shard] = digests
        expected = fingerprint(stage.name, digests, settings)
        summary.shards += 1
        manifest = _is_current(out, shard, expected)
        if manifest is not None:
            summary.shards_skipped += 1
            _count(summary, read_jsonl(annotation_path(out, shard, "rejects")))
        else:
            manifest = _run_shard(stage, shard, out, expected, digests, settings, summary)
        summary.items_in += manifest["counts"]["in"]
        summary.items_out += manifest["counts"]["out"]
    summary.seconds = time.perf_counter() - started
    log.info("%s: %s", stage.name, summary.as_dict())
    return summary


def _run_shard(
    stage: ShardStage,
    shard: str,
    out: str,
    expected: str,
    digests: dict[str, str],
    settings: dict[str, Any],
    summary: StageSummary,
) -> dict[str, Any]:
    result = stage.process_shard(shard)
    for record in result.records:
        schema.validate(stage.record_kind, record)  # a violation here is a bug in the component
    keys = [record["key"] for record in result.records]
    if len(keys) != len(set(keys)):
        raise RuntimeError(f"{stage.name}: shard {shard} produced duplicate keys")
    rejects = [r.to_dict() for r in result.rejects]
    records_bytes = write_jsonl_atomic(annotation_path(out, shard), result.records)
    rejects_bytes = dumps_jsonl(rejects).encode("utf-8")
    write_bytes_atomic(annotation_path(out, shard, "rejects"), rejects_bytes)
    dropped = Counter(r["reason"] for r in rejects if r["dropped"])
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        "stage": stage.name,
        "shard": shard,
        "fingerprint": expected,
        "inputs": digests,
        "settings": settings,
        "counts": {"in": result.items_in, "out": len(result.records), "rejected": dict(sorted(dropped.items()))},
        "outputs": {"records": sha256_bytes(records_bytes), "rejects": sha256_bytes(rejects_bytes)},
    }
    schema.validate("manifest", manifest)
    write_text_atomic(
        annotation_path(out, shard, "manifest"), json.dumps(manifest, indent=1, ensure_ascii=False) + "\n"
    )
    _count(summary, rejects)
    summary.processed_items += result.items_in
    return manifest
