"""Reading a URL list and planning the shards: every source row gets a stable key (a hash
of its URL and caption, so annotations never depend on download order or file position)
or a rejection reason; valid rows go to shards of `shard_size` in source order.

The plan is written as `mapping.parquet` beside the shards (source file, row, key, shard,
url, and why a row was left out), so any annotation made against the source list can be
joined to the images by row, and any image traced back to its row.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from fgclip.core.storage import is_s3, join, list_files, local_path, name_of, open_read, write_bytes_atomic
from fgclip.data.ingest.config import UrlListConfig

log = logging.getLogger(__name__)

SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json"}
MAPPING_FILE = "mapping.parquet"
URL_SCHEMES = ("http", "https")


class UrlListError(ValueError):
    """The URL list cannot be read as configured (missing file, column, unknown format)."""


@dataclass(frozen=True)
class SourceRow:
    file: str  # the list file's name (a folder of lists keeps its files apart)
    row: int  # 0-based row number within that file
    url: str
    caption: str
    extra: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    shard: str | None = None
    rejected: str | None = None  # reason when the row gets no key


@dataclass
class Plan:
    rows: list[SourceRow]
    shards: dict[str, list[SourceRow]]
    rejected: Counter = field(default_factory=Counter)

    def mapping_table(self) -> pa.Table:
        return pa.table(
            {
                "source_file": [r.file for r in self.rows],
                "source_row": pa.array([r.row for r in self.rows], pa.int64()),
                "key": pa.array([r.key for r in self.rows], pa.string()),
                "shard": pa.array([r.shard for r in self.rows], pa.string()),
                "url": [r.url for r in self.rows],
                "rejected": pa.array([r.rejected for r in self.rows], pa.string()),
            }
        )


def list_files_of(config: UrlListConfig) -> list[str]:
    """The list file(s) `config.path` names: itself, or the files of its format in a folder."""
    if not config.path:
        raise UrlListError("no URL list: set dataset.urls.path (a parquet, CSV/TSV or JSON lines file, or a folder)")
    path = config.path
    if is_s3(path):
        names = [name for name in list_files(path) if "/" not in name]
        files = [join(path, name) for name in names if _format_of(name, config.format, strict=False)]
        if files:
            return files
        return [path]  # an object, not a prefix
    local = local_path(path)
    if local.is_dir():
        files = sorted(
            str(p) for p in local.iterdir() if p.is_file() and _format_of(p.name, config.format, strict=False)
        )
        if not files:
            raise UrlListError(f"{path}: no URL list files in this folder")
        return files
    if not local.is_file():
        raise UrlListError(f"URL list {path} does not exist")
    return [str(local)]


def _format_of(name: str, configured: str, *, strict: bool = True) -> str | None:
    """The list format of a file: as configured, else from its suffix (None when unknown
    and not `strict`, so a folder's other files are passed over)."""
    if configured != "auto":
        return configured if strict or name.lower().endswith(f".{configured}") else None
    for suffix, fmt in SUFFIXES.items():
        if name.lower().endswith(suffix):
            return fmt
    if strict:
        raise UrlListError(f"{name}: cannot tell the URL list format from the suffix; set dataset.urls.format")
    return None


def read_table(path: str, config: UrlListConfig) -> pa.Table:
    """One list file as an Arrow table with the configured columns."""
    fmt = _format_of(name_of(path), config.format)
    with open_read(path) as handle:
        data = handle.read()
    try:
        if fmt == "parquet":
            table = pq.read_table(io.BytesIO(data))
        elif fmt in ("csv", "tsv"):
            read = pa_csv.ReadOptions(column_names=list(config.column_names) if config.column_names else None)
            parse = pa_csv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True)
            convert = pa_csv.ConvertOptions(strings_can_be_null=False)
            table = pa_csv.read_csv(io.BytesIO(data), read_options=read, parse_options=parse, convert_options=convert)
        elif fmt == "jsonl":
            table = pa_json.read_json(io.BytesIO(data))
        else:  # a JSON array of objects
            items = json.loads(data.decode("utf-8"))
            if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
                raise UrlListError(f"{path}: a .json URL list must be an array of objects")
            table = pa.Table.from_pylist(items)
    except (pa.ArrowInvalid, ValueError) as error:
        if isinstance(error, UrlListError):
            raise
        raise UrlListError(f"{path}: cannot be read as {fmt}: {error}") from error
    wanted = [config.url_column, config.caption_column, *config.keep_columns]
    missing = [name for name in wanted if name not in table.column_names]
    if missing:
        raise UrlListError(f"{path}: no column(s) {missing}; it has {table.column_names} (see dataset.urls.*_column)")
    return table


def stable_key(url: str, caption: str, length: int) -> str:
    """The sample key: a hash of the URL and the caption, the same wherever the row sits."""
    return hashlib.sha256(f"{url}\n{caption}".encode()).hexdigest()[:length]


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def check_row(url: str, caption: str) -> str | None:
    """Why a row cannot be downloaded, or None."""
    if not url:
        return "missing_url"
    parsed = urlparse(url)
    if parsed.scheme.lower() not in URL_SCHEMES or not parsed.netloc:
        return "invalid_url"
    if not caption:
        return "missing_caption"
    return None


def plan_shards(config: UrlListConfig, shard_size: int, key_length: int) -> Plan:
    """Read every list file, key every row, and cut the valid rows into shards."""
    rows: list[SourceRow] = []
    rejected: Counter = Counter()
    seen: set[str] = set()
    valid: list[SourceRow] = []
    for path in list_files_of(config):
        table = read_table(path, config)
        columns = {name: table.column(name).to_pylist() for name in (config.url_column, config.caption_column)}
        extras = {name: table.column(name).to_pylist() for name in config.keep_columns}
        file = name_of(path)
        for index in range(table.num_rows):
            url, caption = _text(columns[config.url_column][index]), _text(columns[config.caption_column][index])
            extra = {name: values[index] for name, values in extras.items()}
            reason = check_row(url, caption)
            key = None if reason else stable_key(url, caption, key_length)
            if key is not None and key in seen:
                reason, key = "duplicate_row", None
            if reason:
                rejected[reason] += 1
                rows.append(SourceRow(file, index, url, caption, extra, rejected=reason))
                continue
            assert key is not None
            seen.add(key)
            row = SourceRow(file, index, url, caption, extra, key=key)
            rows.append(row)
            valid.append(row)
    shards: dict[str, list[SourceRow]] = {}
    planned: list[SourceRow] = []
    keyed = {id(row): number for number, row in enumerate(valid)}
    for row in rows:
        if row.key is None:
            planned.append(row)
            continue
        shard = f"{keyed[id(row)] // shard_size:05d}"
        placed = SourceRow(row.file, row.row, row.url, row.caption, row.extra, key=row.key, shard=shard)
        planned.append(placed)
        shards.setdefault(shard, []).append(placed)
    if rejected:
        log.warning("ingest: %d rows left out before download: %s", sum(rejected.values()), dict(rejected))
    return Plan(planned, shards, rejected)


def write_mapping(plan: Plan, out: str) -> str:
    """`out/mapping.parquet`: every source row with its key and shard, or why it has none."""
    sink = pa.BufferOutputStream()
    pq.write_table(plan.mapping_table(), sink)
    target = join(out, MAPPING_FILE)
    write_bytes_atomic(target, sink.getvalue().to_pybytes())
    return target
