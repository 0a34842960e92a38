"""Writing stage outputs for tests: records with real manifests, as a finished upstream
stage would leave them, so a downstream component reads them through its real code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fgclip.core.stage import ShardResult, ShardStage, run_stage


class RecordsStage(ShardStage):
    """A stage that writes the given records (e.g. regions records, as detect does)."""

    def __init__(
        self, records: list[dict[str, Any]], name: str = "detect", record_kind: str = "regions_record"
    ) -> None:
        self.records = records
        self.name = name
        self.record_kind = record_kind

    def shard_inputs(self, shard: str) -> dict[str, Path]:
        return {}

    def settings(self) -> dict[str, Any]:
        return {}

    def process_shard(self, shard: str) -> ShardResult:
        return ShardResult(self.records, [], len(self.records))


def write_records(records: list[dict[str, Any]], out: Path, shard: str = "00000", **stage: str) -> Path:
    """Write `records` as shard `shard` of a finished stage into `out`; returns `out`."""
    run_stage(RecordsStage(records, **stage), [shard], out, progress=False)
    return out
