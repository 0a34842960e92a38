"""`finehard export`: image shards + annotation folders -> one FineHARD file."""


from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from fgclip.core.join import join_shard
from fgclip.core.shards import list_shards
from fgclip.core.storage import atomic_local_file, local_path
from fgclip.data.finehard.records import FORMATS

log = logging.getLogger(__name__)


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


