"""One ingest run: plan the shards, download what is missing, store it, report.

For each group of `ingest.processes` unfinished shards: img2dataset fetches every row
(pass 1), then the transient failures again after an exponential backoff (`ingest.retries`
passes); each response is checked and resized (`images.py`) and the shard is written in
the img2dataset layout, keyed by stable keys, in source-row order:

    NNNNN.tar         KEY.jpg, KEY.txt (caption), KEY.json (url, source row, sizes, sha256, kept columns)
    NNNNN.parquet     one row per planned source row: key, url, status, error_kind, error_message, ...
    NNNNN_stats.json  img2dataset's stats (count, successes, failed_to_download, failed_to_resize,
                      status_dict) plus failures_by_kind and the plan digest

The stats file is written last: a shard whose stats carry the same plan digest (its rows
and the settings that shape the images) is finished, and a rerun skips it, so an
interrupted ingest resumes with the shards still missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fgclip.core.shards import SHARD_PATTERN, batched
from fgclip.core.storage import copy_file, exists, join, list_files, read_text, remove, write_bytes_atomic
from fgclip.data.ingest.config import IngestConfig, UrlListConfig
from fgclip.data.ingest.failures import classify, is_transient
from fgclip.data.ingest.images import Prepared, prepare_image
from fgclip.data.ingest.runner import Fetched, fetch
from fgclip.data.ingest.urls import Plan, SourceRow, plan_shards, write_mapping

log = logging.getLogger(__name__)

STATS_SUFFIX = "_stats.json"
INGEST_VERSION = 1
#: Settings that shape the stored images: changing one redoes the shards.
IMAGE_SETTINGS = ("resolution", "margin", "min_side", "max_megapixels", "jpeg_quality", "key_length")


@dataclass
class Outcome:
    """How one planned row ended."""

    row: SourceRow
    attempts: int = 0
    prepared: Prepared | None = None
    kind: str | None = None  # failure kind; None for a success
    message: str = ""
    sha256: str | None = None

    @property
    def status(self) -> str:
        if self.kind is None:
            return "success"
        return "failed_to_resize" if self.prepared is not None else "failed_to_download"


@dataclass
class IngestReport:
    rows: int = 0
    rejected_rows: Counter = field(default_factory=Counter)
    planned: int = 0
    successes: int = 0
    failures: Counter = field(default_factory=Counter)
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    shards_skipped: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "rejected_rows": dict(sorted(self.rejected_rows.items())),
            "planned": self.planned,
            "successes": self.successes,
            "failed": sum(self.failures.values()),
            "success_rate": round(self.successes / self.planned, 6) if self.planned else 0.0,
            "failures_by_kind": dict(sorted(self.failures.items())),
            "shards": len(self.shards),
            "shards_skipped": self.shards_skipped,
            "seconds": round(self.seconds, 3),
            "per_shard": self.shards,
        }


def plan_digest(rows: Sequence[SourceRow], config: IngestConfig) -> str:
    payload = {
        "version": INGEST_VERSION,
        "rows": [[row.key, row.url, row.caption, row.file, row.row] for row in rows],
        "settings": {name: getattr(config, name) for name in IMAGE_SETTINGS},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def finished_stats(out: str, shard: str, digest: str) -> dict[str, Any] | None:
    """The stats of a shard finished with this plan, else None."""
    stats_file = join(out, f"{shard}{STATS_SUFFIX}")
    if not exists(stats_file) or not exists(join(out, f"{shard}.tar")) or not exists(join(out, f"{shard}.parquet")):
        return None
    try:
        stats = json.loads(read_text(stats_file))
    except ValueError:
        return None
    return stats if stats.get("plan") == digest else None


# ---------------------------------------------------------------- download passes


def download(
    config: IngestConfig,
    batches: dict[str, list[SourceRow]],
    workdir: Path,
    *,
    fetcher: Callable[[IngestConfig, dict[str, list[SourceRow]], Path], dict[str, Fetched]] = fetch,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, tuple[Fetched, int]]:
    """{key: (last result, attempts)}: pass 1 over every row, then the transient failures
    again after a backoff (doubling up to backoff_max_s) for `retries` passes."""
    results: dict[str, tuple[Fetched, int]] = {}
    pending = batches
    for attempt in range(config.retries + 1):
        if attempt:
            wait = min(config.backoff_s * 2 ** (attempt - 1), config.backoff_max_s)
            count = sum(len(rows) for rows in pending.values())
            log.info("ingest: retrying %d transient failures in %.1f s (pass %d)", count, wait, attempt + 1)
            sleep(wait)
        fetched = fetcher(config, pending, workdir / f"pass{attempt}")
        for rows in pending.values():
            for row in rows:
                assert row.key is not None
                found = fetched.get(row.key, Fetched(None, "img2dataset did not report this row"))
                results[row.key] = (found, attempt + 1)
        retry = {
            shard: [row for row in rows if _retryable(results[row.key or ""][0])] for shard, rows in pending.items()
        }
        pending = {shard: rows for shard, rows in retry.items() if rows}
        if not pending:
            break
    return results


def _retryable(item: Fetched) -> bool:
    return item.data is None and is_transient(classify(item.error or ""))


# ---------------------------------------------------------------- one shard


def _prepare_all(config: IngestConfig, items: list[bytes]) -> list[Prepared]:
    if config.processes == 1 or len(items) < 2:
        return [prepare_image(data, config) for data in items]
    with ProcessPoolExecutor(max_workers=config.processes) as pool:
        return list(pool.map(prepare_image, items, [config] * len(items), chunksize=16))


def outcomes_of(
    rows: Sequence[SourceRow], results: dict[str, tuple[Fetched, int]], config: IngestConfig
) -> list[Outcome]:
    outcomes = []
    downloaded: list[tuple[Outcome, bytes]] = []
    for row in rows:
        fetched, attempts = results[row.key or ""]
        outcome = Outcome(row, attempts, sha256=fetched.sha256)
        if fetched.data is None:
            outcome.kind, outcome.message = classify(fetched.error or ""), fetched.error or ""
        else:
            downloaded.append((outcome, fetched.data))
        outcomes.append(outcome)
    for (outcome, _), prepared in zip(downloaded, _prepare_all(config, [data for _, data in downloaded])):
        outcome.prepared = prepared
        if prepared.failure is not None:
            outcome.kind, outcome.message = prepared.failure, prepared.detail
    return outcomes


def _meta(outcome: Outcome) -> dict[str, Any]:
    row, prepared = outcome.row, outcome.prepared
    meta: dict[str, Any] = {
        "key": row.key,
        "url": row.url,
        "caption": row.caption,
        "source_file": row.file,
        "source_row": row.row,
        "status": outcome.status,
    }
    if prepared is not None:
        meta.update(
            width=prepared.width or None,
            height=prepared.height or None,
            original_width=prepared.original_width or None,
            original_height=prepared.original_height or None,
        )
    if outcome.sha256:
        meta["sha256"] = outcome.sha256
    return {**meta, **{name: value for name, value in row.extra.items() if name not in meta}}


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed: the same images give the same bytes
    archive.addfile(info, fileobj=io.BytesIO(data))


def write_shard(out: str, shard: str, outcomes: Sequence[Outcome], digest: str, seconds: float) -> dict[str, Any]:
    """NNNNN.tar, NNNNN.parquet, then NNNNN_stats.json (last: it marks the shard finished)."""
    with tempfile.TemporaryDirectory(prefix="fgclip-ingest-shard-") as scratch:
        tar_path = Path(scratch) / f"{shard}.tar"
        with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as archive:
            for outcome in outcomes:
                if outcome.kind is None and outcome.prepared is not None and outcome.prepared.jpeg is not None:
                    key = outcome.row.key
                    _add(archive, f"{key}.jpg", outcome.prepared.jpeg)
                    _add(archive, f"{key}.txt", outcome.row.caption.encode("utf-8"))
                    _add(archive, f"{key}.json", json.dumps(_meta(outcome), ensure_ascii=False).encode("utf-8"))
        copy_file(tar_path, join(out, f"{shard}.tar"))  # whole or not at all, local or S3
    table = pa.Table.from_pylist(
        [
            {
                **{k: v for k, v in _meta(o).items() if k in ("key", "url", "caption", "source_file", "source_row")},
                "status": o.status,
                "error_kind": o.kind,
                "error_message": o.message or None,
                "width": o.prepared.width if o.prepared and o.kind is None else None,
                "height": o.prepared.height if o.prepared and o.kind is None else None,
                "attempts": o.attempts,
                "sha256": o.sha256,
            }
            for o in outcomes
        ],
        schema=pa.schema(
            [
                ("key", pa.string()),
                ("url", pa.string()),
                ("caption", pa.string()),
                ("source_file", pa.string()),
                ("source_row", pa.int64()),
                ("status", pa.string()),
                ("error_kind", pa.string()),
                ("error_message", pa.string()),
                ("width", pa.int64()),
                ("height", pa.int64()),
                ("attempts", pa.int64()),
                ("sha256", pa.string()),
            ]
        ),
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(join(out, f"{shard}.parquet"), sink.getvalue().to_pybytes())
    stats = shard_stats(outcomes, digest, seconds)
    write_bytes_atomic(join(out, f"{shard}{STATS_SUFFIX}"), (json.dumps(stats, indent=2) + "\n").encode())
    return stats


def shard_stats(outcomes: Sequence[Outcome], digest: str, seconds: float) -> dict[str, Any]:
    kinds = Counter(o.kind for o in outcomes if o.kind is not None)
    messages = Counter(o.message or o.kind for o in outcomes if o.kind is not None)
    successes = sum(1 for o in outcomes if o.kind is None)
    return {
        "count": len(outcomes),
        "successes": successes,
        "failed_to_download": sum(1 for o in outcomes if o.status == "failed_to_download"),
        "failed_to_resize": sum(1 for o in outcomes if o.status == "failed_to_resize"),
        "duration": round(seconds, 3),
        "status_dict": {"success": successes, **dict(messages.most_common(50))},
        "success_rate": round(successes / len(outcomes), 6) if outcomes else 0.0,
        "failures_by_kind": dict(sorted(kinds.items())),
        "retried": sum(1 for o in outcomes if o.attempts > 1),
        "plan": digest,
        "ingest_version": INGEST_VERSION,
    }


# ---------------------------------------------------------------- the run


def remove_stale_shards(out: str, keep: Iterable[str]) -> list[str]:
    """Shard files (tar, parquet, stats) of shards the plan no longer has."""
    wanted, removed = set(keep), []
    for name in list_files(out):
        shard = name.split(".")[0].removesuffix(STATS_SUFFIX.removesuffix(".json"))
        if "/" not in name and SHARD_PATTERN.match(shard) and shard not in wanted:
            remove(join(out, name))
            removed.append(name)
    return removed


def run_ingest(
    urls: UrlListConfig,
    config: IngestConfig,
    out: str,
    *,
    fetcher: Callable[[IngestConfig, dict[str, list[SourceRow]], Path], dict[str, Fetched]] = fetch,
    sleep: Callable[[float], None] = time.sleep,
    on_shard: Callable[[str, dict[str, Any]], None] | None = None,
) -> IngestReport:
    """Plan, download the unfinished shards, write them; the report covers every shard."""
    started = time.perf_counter()
    plan: Plan = plan_shards(urls, config.shard_size, config.key_length)
    write_mapping(plan, out)
    stale = remove_stale_shards(out, plan.shards)
    if stale:
        log.info("ingest: removed %d files of shards no longer planned", len(stale))
    report = IngestReport(rows=len(plan.rows), rejected_rows=plan.rejected)
    digests = {shard: plan_digest(rows, config) for shard, rows in plan.shards.items()}
    pending = []
    for shard in sorted(plan.shards):
        stats = finished_stats(out, shard, digests[shard])
        if stats is None:
            pending.append(shard)
        else:
            report.shards_skipped += 1
            report.shards[shard] = stats
    for group in batched(pending, config.processes):
        group_started = time.perf_counter()
        batches = {shard: plan.shards[shard] for shard in group}
        with tempfile.TemporaryDirectory(prefix="fgclip-ingest-") as workdir:
            results = download(config, batches, Path(workdir), fetcher=fetcher, sleep=sleep)
        for shard in group:
            outcomes = outcomes_of(plan.shards[shard], results, config)
            stats = write_shard(out, shard, outcomes, digests[shard], time.perf_counter() - group_started)
            report.shards[shard] = stats
            log.info(
                "ingest: shard %s: %d/%d stored, failures %s",
                shard,
                stats["successes"],
                stats["count"],
                stats["failures_by_kind"],
            )
            if on_shard is not None:
                on_shard(shard, stats)
    for shard in sorted(report.shards):
        stats = report.shards[shard]
        report.planned += stats["count"]
        report.successes += stats["successes"]
        report.failures.update(stats["failures_by_kind"])
    report.shards = {
        shard: {k: report.shards[shard][k] for k in ("count", "successes", "success_rate", "failures_by_kind")}
        for shard in sorted(report.shards)
    }
    report.seconds = time.perf_counter() - started
    return report
