"""Annotations a source brings along (FineHARD's captions, regions and negatives): the
stage that would make them passes them through instead, through the same loop (so they
are validated against the contract, fingerprinted and counted like any stage's output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fgclip.core import schema
from fgclip.core.shards import Reject, annotation_path, read_jsonl
from fgclip.core.stage import ShardResult, ShardStage


class GivenRecords(ShardStage):
    """Copies `folder`'s records of each shard; a record that breaks the contract is a reject."""

    def __init__(self, name: str, record_kind: str, folder: str | Path) -> None:
        self.name = name
        self.record_kind = record_kind
        self.folder = str(folder)

    def shard_inputs(self, shard: str) -> dict[str, str | Path]:
        return {"given": annotation_path(self.folder, shard)}

    def settings(self) -> dict[str, Any]:
        return {"given": True}

    def process_shard(self, shard: str) -> ShardResult:
        records, rejects = [], []
        lines = read_jsonl(annotation_path(self.folder, shard))
        for number, record in enumerate(lines, 1):
            found = schema.problems(self.record_kind, record)
            if found:
                key = record.get("key") if isinstance(record, dict) and isinstance(record.get("key"), str) else None
                detail = f"given record {number}: {'; '.join(found)}"
                rejects.append(Reject(shard, key, "bad_given_record", detail, stage=self.name))
                continue
            records.append(record)
        return ShardResult(records, rejects, items_in=len(lines))
