"""The recaption stage: a long, detailed caption for every image of a shard (caption_record).

`RecaptionStage` reads an image shard through `RawShardReader` (whose rejects pass
straight through), hands the valid samples in batches to the configured
`CaptionBackend`, and turns each result into a caption record or a `Reject`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fgclip.core.shards import RawShardReader, Reject, batched
from fgclip.core.stage import ShardResult, ShardStage
from fgclip.core.storage import local_path, path_in
from fgclip.data.recaption.config import RecaptionConfig
from fgclip.data.recaption.interface import BackendResources, CaptionBackend, CaptionContext, make_backend

STAGE = "recaption"


class RecaptionStage(ShardStage):
    name = STAGE
    record_kind = "caption_record"

    def __init__(self, images_dir: str | Path, truth_dir: str | Path | None, config: RecaptionConfig, seed: int,
                 *, backend: CaptionBackend | None = None) -> None:
        self.images_dir = str(images_dir)  # a local folder or an s3:// prefix, read in place
        self.config = config
        self.seed = seed
        resources = BackendResources(truth_dir=local_path(truth_dir) if truth_dir is not None else None)
        self.backend = backend if backend is not None else make_backend(config, resources)

    def shard_inputs(self, shard: str) -> dict[str, str | Path]:
        return {"images": path_in(self.images_dir, f"{shard}.tar"), **self.backend.shard_inputs(shard)}

    def settings(self) -> dict[str, Any]:
        # A model backend's section also says where it runs (URL, device, local path): its
        # identity carries what decides the captions (model and digest, prompt, decoding).
        config = self.config.model_dump(mode="json", exclude={"hf", "openai"})
        return {"config": config, "seed": self.seed, "backend": self.backend.identity()}

    def metrics(self) -> dict[str, float]:
        return self.backend.metrics()

    def process_shard(self, shard: str) -> ShardResult:
        reader = RawShardReader(path_in(self.images_dir, f"{shard}.tar"))
        context = CaptionContext(shard, self.seed)
        records: list[dict[str, Any]] = []
        failures: list[Reject] = []
        read = 0
        for batch in batched(reader, self.config.batch_size):
            read += len(batch)
            # A backend exception (endpoint down, out of memory) stops the run: the shard is
            # not written, and a rerun resumes here. Only per-sample failures become rejects.
            results = self.backend.caption(batch, context)
            if len(results) != len(batch):  # a broken backend must not shift captions onto other images
                raise RuntimeError(f"caption backend returned {len(results)} results for {len(batch)} samples")
            for sample, result in zip(batch, results):
                text = " ".join(result.text.split()) if result.text is not None else ""
                if result.error is not None:
                    failures.append(Reject(shard, sample.key, result.error, result.detail, stage=STAGE))
                elif not text:
                    failures.append(Reject(shard, sample.key, "empty_caption", "the backend returned an empty caption", stage=STAGE))
                else:
                    records.append({"key": sample.key, "long_caption": text})
        rejects = reader.rejects + failures
        dropped_on_read = sum(1 for item in reader.rejects if item.dropped)
        return ShardResult(records, rejects, items_in=read + dropped_on_read)

