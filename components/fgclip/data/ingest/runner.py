"""img2dataset as a subprocess in its own environment: one call downloads the rows of a
few shards (one img2dataset process per shard) and hands back, per stable key, the raw
bytes of the response or img2dataset's error message.

img2dataset does the fetching (its concurrency, timeouts, user agent and X-Robots-Tag
rule) with re-encoding disabled, so the bytes are exactly what the server sent; checking,
resizing and encoding happen afterwards in `images.py`, where a truncated or non-image
response can be told from a good one.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fgclip.data.ingest.config import IngestConfig
from fgclip.data.ingest.urls import SourceRow

log = logging.getLogger(__name__)

ENTRY = Path(__file__).with_name("img2dataset_entry.py")
ENV_VARIABLE = "FGCLIP_IMG2DATASET_ENV"
KEY_COLUMN = "fgclip_key"
#: Quiet, offline img2dataset dependencies: no update check, no experiment tracker.
QUIET_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}


class IngestError(RuntimeError):
    """img2dataset cannot run (no environment) or failed as a whole."""


@dataclass(frozen=True)
class Fetched:
    """One row's download: the raw bytes, or img2dataset's error message."""

    data: bytes | None
    error: str | None = None
    sha256: str | None = None


def environment(config: IngestConfig) -> Path:
    root = Path(os.environ.get(ENV_VARIABLE) or config.environment)
    python = root / "bin" / "python"
    if not python.is_file():
        raise IngestError(
            f"img2dataset's environment is not at {root} (no {python}): build it with `make env` "
            f"(from requirements-img2dataset.lock), or point ingest.environment / ${ENV_VARIABLE} at one"
        )
    return python


def settings(config: IngestConfig, url_list: Path, output: Path, rows_per_file: int) -> dict[str, object]:
    """img2dataset.download's arguments for one call."""
    return {
        "url_list": str(url_list),
        "input_format": "parquet",
        "url_col": "url",
        "caption_col": "caption",
        "save_additional_columns": [KEY_COLUMN],
        "output_folder": str(output),
        "output_format": "webdataset",
        "processes_count": config.processes,
        "thread_count": config.threads,
        "number_sample_per_shard": max(1, rows_per_file),
        "timeout": config.timeout_s,
        "retries": 0,  # transient failures are retried in later passes, after a backoff
        "disable_all_reencoding": True,  # keep the bytes as sent; images.py checks and resizes
        "extract_exif": False,
        "compute_hash": "sha256",
        "user_agent_token": config.user_agent_token,
        "disallowed_header_directives": list(config.disallowed_header_directives),
        "incremental_mode": "incremental",  # each pass writes into a fresh folder
        "enable_wandb": False,
        "distributor": "multiprocessing",
        "oom_shard_count": 5,
        "max_shard_retry": 1,
    }


def _write_inputs(folder: Path, batches: Mapping[str, Sequence[SourceRow]]) -> int:
    """One parquet file per shard (img2dataset makes one of its shards of each)."""
    folder.mkdir(parents=True)
    largest = 0
    for shard, rows in sorted(batches.items()):
        table = pa.table(
            {
                "url": [row.url for row in rows],
                "caption": [row.caption for row in rows],
                KEY_COLUMN: [row.key for row in rows],
            }
        )
        pq.write_table(table, folder / f"{shard}.parquet")
        largest = max(largest, len(rows))
    return largest


def fetch(config: IngestConfig, batches: Mapping[str, Sequence[SourceRow]], workdir: Path) -> dict[str, Fetched]:
    """Download every row of `batches` once; {key: Fetched} for each row img2dataset reported."""
    python = environment(config)
    inputs, output = workdir / "in", workdir / "out"
    largest = _write_inputs(inputs, batches)
    settings_file = workdir / "settings.json"
    settings_file.write_text(json.dumps(settings(config, inputs, output, largest)), encoding="utf-8")
    log_file = workdir / "img2dataset.log"
    env = {**os.environ, **QUIET_ENV}
    env.pop("PYTHONPATH", None)  # our packages must not shadow img2dataset's pins
    with open(log_file, "wb") as out:
        result = subprocess.run(
            [str(python), str(ENTRY), str(settings_file)], stdout=out, stderr=subprocess.STDOUT, env=env, check=False
        )
    if result.returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise IngestError(f"img2dataset exited with {result.returncode}:\n{tail}")
    return read_output(output)


def read_output(output: Path) -> dict[str, Fetched]:
    """Every row img2dataset wrote: its parquet files say how each went, its tars hold the bytes."""
    fetched: dict[str, Fetched] = {}
    by_i2d_key: dict[str, str] = {}
    for parquet in sorted(output.glob("*.parquet")):
        table = pq.read_table(parquet).to_pylist()
        for row in table:
            key = row.get(KEY_COLUMN)
            if not key:
                continue
            by_i2d_key[str(row["key"])] = key
            if row.get("status") != "success":
                fetched[key] = Fetched(None, row.get("error_message") or str(row.get("status")))
            else:
                fetched[key] = Fetched(None, None, row.get("sha256"))
    for tar in sorted(output.glob("*.tar")):
        with tarfile.open(tar) as archive:
            for member in archive:
                stem, _, ext = member.name.partition(".")
                key = by_i2d_key.get(stem)
                if key is None or ext in ("txt", "json") or not member.isfile():
                    continue
                handle = archive.extractfile(member)
                data = handle.read() if handle is not None else b""
                fetched[key] = Fetched(data, None, fetched[key].sha256 if key in fetched else None)
    lost = [key for key, item in fetched.items() if item.data is None and item.error is None]
    for key in lost:  # reported a success but wrote no file: never drop it silently
        fetched[key] = Fetched(None, "img2dataset reported success but wrote no image")
    log.debug("img2dataset: %d rows reported", len(fetched))
    return fetched
