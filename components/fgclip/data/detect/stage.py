"""The detect stage: box the referring expressions of each image's long caption.

For every sample of an image shard with a caption record: extract expressions
(`fgclip.data.detect.expressions`), ask a `Detector` backend for candidate boxes per expression,
then apply the paper's selection in the core, the same for every backend: keep scores
>= min_confidence, clip to the image, drop degenerate and tiny boxes, class-agnostic NMS
across all expressions of the image, cap at max_regions. Each dropped candidate is a
Reject with dropped=False (low_confidence, invalid_score, box_degenerate,
box_outside_image, box_too_small, nms_suppressed, over_max_regions), so the stage
report's "ignored" counts show what the threshold and NMS removed. A sample whose
expressions all fail is still written with `regions: []` (it stays usable for global
training) and counted as `no_regions` (`no_expressions` when its caption names no
object); a sample without a caption record is dropped (`no_caption`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fgclip.core import schema
from fgclip.core.shards import RawSample, RawShardReader, Reject, annotation_path, batched, read_jsonl
from fgclip.core.stage import ShardResult, ShardStage
from fgclip.core.storage import local_path, path_in
from fgclip.data.detect.config import DetectConfig
from fgclip.data.detect.expressions import ExpressionExtractor, build_extractor
from fgclip.data.detect.interface import DetectContext, Detector, DetectorError, DetectItem, build_detector
from fgclip.data.detect.selection import select_regions

STAGE = "detect"


class DetectStage(ShardStage):
    name = STAGE
    record_kind = "regions_record"

    def __init__(self, images_dir: str | Path, captions_dir: str | Path, truth_dir: str | Path | None,
                 config: DetectConfig, seed: int, *, extractor: ExpressionExtractor | None = None,
                 detector: Detector | None = None) -> None:
        self.images_dir = str(images_dir)  # local folders or s3:// prefixes
        self.captions_dir = str(captions_dir)
        self.truth_dir = local_path(truth_dir) if truth_dir is not None else None
        self.config = config
        self.seed = seed
        self.extractor = extractor or build_extractor(config)
        self.detector = detector or build_detector(config, self.truth_dir)
        if self.detector.needs_truth and self.truth_dir is None:
            raise ValueError("this detector backend reads the truth sidecar; give the truth folder")

    def shard_inputs(self, shard: str) -> dict[str, str | Path]:
        inputs: dict[str, str | Path] = {
            "images": path_in(self.images_dir, f"{shard}.tar"),
            "captions": annotation_path(self.captions_dir, shard),
        }
        if self.detector.needs_truth and self.truth_dir is not None:
            inputs["truth"] = annotation_path(self.truth_dir, shard)
        return inputs

    def settings(self) -> dict[str, Any]:
        # Model backend sections also say where a model runs (device, local path); the
        # extractor's and detector's identities carry what decides the output.
        config = self.config.model_dump(mode="json", exclude={"spacy", "owlv2", "grounding_dino", "yolo_world"})
        return {"config": config, "seed": self.seed,
                "extractor": self.extractor.identity(), "detector": self.detector.identity()}

    def _captions(self, shard: str, rejects: list[Reject]) -> dict[str, str]:
        captions: dict[str, str] = {}
        for number, record in enumerate(read_jsonl(annotation_path(self.captions_dir, shard)), 1):
            found = schema.problems("caption_record", record)
            if found:
                key = record.get("key") if isinstance(record, dict) and isinstance(record.get("key"), str) else None
                rejects.append(Reject(shard, key, "bad_caption_record", f"caption line {number}: {'; '.join(found)}",
                                      stage=STAGE, dropped=False))
                continue
            captions[record["key"]] = record["long_caption"]
        return captions

    def metrics(self) -> dict[str, float]:
        return self.detector.metrics()

    def process_shard(self, shard: str) -> ShardResult:
        rejects: list[Reject] = []
        captions = self._captions(shard, rejects)
        reader = RawShardReader(path_in(self.images_dir, f"{shard}.tar"))
        records: list[dict[str, Any]] = []
        seen: set[str] = set()
        for batch in batched(reader, self.config.batch_size):
            seen.update(sample.key for sample in batch)
            records.extend(self._process_batch(shard, batch, captions, rejects))
        for key in sorted(set(captions) - seen - {r.key for r in reader.rejects}):
            rejects.append(Reject(shard, key, "orphan_caption", "caption record has no sample in the image shard; ignored",
                                  stage=STAGE, dropped=False))
        read_dropped = [r for r in reader.rejects if r.dropped and r.key is not None]
        return ShardResult(records, reader.rejects + rejects, items_in=len(seen) + len(read_dropped))

    def _process_batch(self, shard: str, batch: Sequence[RawSample], captions: dict[str, str],
                       rejects: list[Reject]) -> list[dict[str, Any]]:
        """Records of a batch's samples, in order: expressions of all its captions at once,
        then one detector call for the samples that have expressions."""
        def reject(key: str, reason: str, detail: str, dropped: bool) -> None:
            rejects.append(Reject(shard, key, reason, detail, stage=STAGE, dropped=dropped))

        captioned = [sample for sample in batch if sample.key in captions]
        expressions = dict(zip((s.key for s in captioned),
                               self.extractor.extract_many([captions[s.key] for s in captioned])))
        items = [DetectItem(s, expressions[s.key], DetectContext(shard, s.key, self.seed)) for s in captioned
                 if expressions[s.key]]
        found = dict(zip((item.image.key for item in items), self.detector.detect_batch(items) if items else []))
        if len(found) != len(items):  # a broken backend must not shift boxes onto other images
            raise RuntimeError(f"detector backend returned {len(found)} results for {len(items)} images")
        records = []
        for sample in batch:  # rejects in sample order, as one sample at a time would write them
            if sample.key not in captions:
                reject(sample.key, "no_caption", "no caption record for this sample (run recaption first)", True)
                continue
            record = {"key": sample.key, "width": sample.width, "height": sample.height, "regions": []}
            if not expressions[sample.key]:
                reject(sample.key, "no_expressions",
                       "the long caption names no object the extractor knows; written with no regions", False)
                records.append(record)
                continue
            candidates = found[sample.key]
            try:
                if isinstance(candidates, DetectorError):
                    raise candidates
                regions, ignored = select_regions(expressions[sample.key], candidates, sample.width, sample.height,
                                                  self.config)
            except DetectorError as error:
                reject(sample.key, "detector_failed", str(error), True)
                continue
            for reason, detail in ignored:
                reject(sample.key, reason, detail, False)
            if not regions:
                reject(sample.key, "no_regions", f"none of {len(expressions[sample.key])} expressions got a box that "
                                                 "passed; written with no regions", False)
            record["regions"] = regions
            records.append(record)
        return records
