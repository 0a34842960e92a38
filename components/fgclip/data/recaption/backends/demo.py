"""recaption backend `demo`: the demo world's caption teacher (`fgclip.demo.captions`)
behind the caption interface. It reads the truth sidecar, which only the demo source has."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fgclip.core.shards import RawSample
from fgclip.data.recaption.config import RecaptionConfig
from fgclip.data.recaption.interface import BackendResources, CaptionBackend, CaptionContext, CaptionResult
from fgclip.demo.captions import TEACHER_VERSION, describe, rules_hash
from fgclip.demo.config import DemoRecaptionTeacher
from fgclip.demo.truth import TruthSidecar, TruthUnavailable, checked_record

log = logging.getLogger(__name__)


class DemoCaptionTeacher(CaptionBackend):
    """Captions demo-world images from their truth sidecar, with seeded errors."""

    def __init__(self, config: DemoRecaptionTeacher, truth_dir: str | Path) -> None:
        self.config = config
        self.truth = TruthSidecar(truth_dir)
        if not self.truth.folder.is_dir():
            raise ValueError(f"the demo caption teacher needs the truth folder; {self.truth.folder} is not a folder")
        self._warned_shard: str | None = None

    def identity(self) -> dict[str, Any]:
        return {"name": "demo", "version": TEACHER_VERSION, "rules_hash": rules_hash()}

    def shard_inputs(self, shard: str) -> dict[str, Path]:
        # Only when present: a missing sidecar rejects the shard's samples instead of stopping the run.
        path = self.truth.path(shard)
        return {"truth": path} if path.is_file() else {}

    def caption(self, batch: Sequence[RawSample], context: CaptionContext) -> list[CaptionResult]:
        try:
            self.truth.records(context.shard)
        except TruthUnavailable as error:
            if self._warned_shard != context.shard:
                log.warning("shard %s: %s; its samples are rejected", context.shard, error.detail)
                self._warned_shard = context.shard
            return [CaptionResult.failed(error.reason, error.detail)] * len(batch)
        return [self._caption_one(sample, context) for sample in batch]

    def _caption_one(self, sample: RawSample, context: CaptionContext) -> CaptionResult:
        try:
            record = checked_record(self.truth, context.shard, sample.key, sample.width, sample.height)
        except TruthUnavailable as error:
            return CaptionResult.failed(error.reason, error.detail)
        return CaptionResult(text=describe(record, sample.key, context.seed, self.config))


def build(config: RecaptionConfig, resources: BackendResources) -> CaptionBackend:
    if resources.truth_dir is None:
        raise ValueError(
            "recaption backend 'demo' reads the demo world's truth, which only dataset.source demo has: "
            "choose recaption.backend hf or openai for other data (or pass --truth with --images)"
        )
    return DemoCaptionTeacher(config.demo, resources.truth_dir)
