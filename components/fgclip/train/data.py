"""Streaming training data: image shards joined with their annotations, as padded batches.

Images are written once; the trainer joins each sample with what later stages added
(captions, regions, negatives: one jsonl per shard, keyed by sample key) while streaming.
Per rank and DataLoader worker the stream is:

    tar shards -> split by node, then by worker -> shard order shuffled (seed, epoch)
    -> samples joined with their shard's annotations (loaded when its first sample arrives)
    -> shuffle buffer (seed, epoch, rank, worker) -> cursor (counts items; skips on resume)
    -> decode, crop, tokenise (missing annotations: counted, logged, skipped)
    -> batches of `batch_size`, exactly `batches_per_epoch / workers` per worker

so an epoch has a fixed length on every rank, and the whole stream is a pure function
of (seed, epoch, rank, worker). Every random choice about a sample (which boxes, short or
long expression) is seeded by (seed, epoch, sample key), never by a stream position, so a
resumed run that skips the consumed items sees exactly the batches the first run would.

Batches are dicts of tensors (see `fgclip.train.collate.collate`); texts are padded to
the longest sequence in the batch, which is exact for EOS-pooled causal text encoders.
Images travel as uint8 with the batch's `pixel_normalisation`, which the step applies on
its device (`fgclip.train.step.model_pixels`).
"""

from __future__ import annotations

import logging
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from fgclip.core.shards import IMAGE_EXTS, list_shards
from fgclip.core.storage import local_path
from fgclip.train.collate import collate
from fgclip.train.examples import (
    AnnotationDirs,
    Example,
    ExampleBuilder,
    ShardAnnotations,
    SkipSample,
    StreamSettings,
    TextTokenizer,
    derive_seed,
    shard_of,
)
from fgclip.train.images import ImageTransform

log = logging.getLogger(__name__)

#: A batch the trainer drops: lines a resumed loader's worker cycle up with the first run.
PLACEHOLDER_KEY = "placeholder"

__all__ = [
    "AnnotationDirs",
    "DataPosition",
    "EpochPlan",
    "StreamSettings",
    "TrainingStream",
    "count_samples",
    "list_shard_urls",
    "make_loader",
    "plan_epoch",
    "real_batches",
    "sample_tools",
]


# ------------------------------------------------------------ the stream stages


class SkipCounter:
    """Per-worker counts of dropped samples, handed out with each batch."""

    def __init__(self, log_limit: int) -> None:
        self.pending: Counter[str] = Counter()
        self.logged = 0
        self.log_limit = log_limit

    def skip(self, key: str | None, reason: str, detail: str) -> None:
        self.pending[reason] += 1
        if self.logged < self.log_limit:
            self.logged += 1
            log.warning("skipping sample %s: %s (%s)", key, reason, detail)
            if self.logged == self.log_limit:
                log.warning("further skipped samples of this worker are only counted")

    def take(self) -> dict[str, int]:
        counts, self.pending = dict(self.pending), Counter()
        return counts


class StreamCursor:
    """Counts the items passing through (the stream position); drops the first `skip`.

    It keeps its count across the repetitions `with_epoch` makes of the pipeline.
    """

    def __init__(self, skip: int) -> None:
        self.skip = skip
        self.position = 0

    def __call__(self, source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in source:
            self.position += 1
            if self.position > self.skip:
                yield item


def join_annotations(annotations: ShardAnnotations) -> Callable[[Iterator[dict[str, Any]]], Iterator[dict[str, Any]]]:
    def stage(source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for sample in source:
            records = annotations.for_shard(shard_of(sample["__url__"]))
            key = sample["__key__"]
            sample["__records__"] = {name: by_key.get(key) for name, by_key in records.items()}
            yield sample

    return stage


class Batcher:
    """Examples -> collated batches of exactly `batch_size`; a partial batch carries over
    to the next repetition of the pipeline instead of being dropped."""

    def __init__(
        self, settings: StreamSettings, builder: ExampleBuilder, skips: SkipCounter, cursor: StreamCursor, worker: int
    ) -> None:
        self.settings, self.builder, self.skips, self.cursor, self.worker = settings, builder, skips, cursor, worker
        self.pending: list[Example] = []

    def __call__(self, source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        settings = self.settings
        for sample in source:
            try:
                self.pending.append(self.builder(sample, sample["__records__"]))
            except SkipSample as skipped:
                self.skips.skip(sample.get("__key__"), skipped.reason, str(skipped))
                continue
            if len(self.pending) < settings.batch_size:
                continue
            batch = collate(
                self.pending,
                self.builder.tokenizer.pad_token_id,
                settings.stage,
                settings.max_boxes,
                settings.max_negatives,
            )
            batch.update(
                worker=self.worker,
                position=self.cursor.position,
                skipped=self.skips.take(),
                pixel_normalisation=self.builder.transform.normalisation,
            )
            self.pending = []
            yield batch


# ------------------------------------------------------------- epochs and loader


@dataclass(frozen=True)
class EpochPlan:
    """Fixed epoch length per rank: `batches_per_epoch` = `workers` x `worker_batches`."""

    urls: tuple[str, ...]
    workers: int  # DataLoader workers (0: the main process)
    worker_batches: int

    @property
    def streams(self) -> int:
        return max(1, self.workers)

    @property
    def batches_per_epoch(self) -> int:
        return self.streams * self.worker_batches


def list_shard_urls(images: str | Path) -> list[str]:
    root = local_path(images)
    return [str(root / f"{shard}.tar") for shard in list_shards(root)]


def count_samples(urls: Sequence[str]) -> int:
    """Images in the shards: the parquet row counts, else the tar's image members."""
    import pyarrow.parquet as pq

    total = 0
    for url in urls:
        parquet = Path(url).with_suffix(".parquet")
        if parquet.is_file():
            total += pq.ParquetFile(parquet).metadata.num_rows
            continue
        with tarfile.open(url) as archive:
            total += sum(1 for name in archive.getnames() if name.rsplit(".", 1)[-1].lower() in IMAGE_EXTS)
    return total


def plan_epoch(
    urls: Sequence[str], *, world_size: int, workers: int, batch_size: int, samples_per_epoch: int | None
) -> EpochPlan:
    streams = max(1, workers)
    if len(urls) < world_size * streams:
        raise ValueError(
            f"{len(urls)} shards cannot feed {world_size} ranks x {streams} loader workers "
            "(each needs at least one shard): lower train.workers or write more shards"
        )
    total = samples_per_epoch or count_samples(urls)
    worker_batches = total // world_size // batch_size // streams
    if worker_batches < 1:
        raise ValueError(
            f"an epoch of {total} samples gives no full batch of {batch_size} to each of "
            f"{world_size} ranks x {streams} workers: lower the batch size or add data"
        )
    return EpochPlan(tuple(urls), workers, worker_batches)


@dataclass
class DataPosition:
    """Where a rank is in an epoch: batches taken and each worker's stream position."""

    epoch: int = 0
    batches: int = 0
    worker_positions: dict[int, int] = field(default_factory=dict)

    def advance(self, batch: dict[str, Any]) -> None:
        self.batches += 1
        self.worker_positions[int(batch["worker"])] = int(batch["position"])

    def to_dict(self, batch_size: int) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batches": self.batches,
            "samples": self.batches * batch_size,
            "worker_positions": {str(k): v for k, v in self.worker_positions.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataPosition:
        return cls(
            int(data["epoch"]),
            int(data["batches"]),
            {int(k): int(v) for k, v in (data.get("worker_positions") or {}).items()},
        )


def sample_tools(model_dir: str) -> tuple[ImageTransform, TextTokenizer]:
    """The model's image transform and its tokenizer, loaded.

    Loaded in the process that makes the loader, before its workers fork, so each
    epoch's workers inherit them instead of loading the tokenizer again (about a second
    of CPU per worker and epoch on the demo). Where workers are spawned, each loads its own.
    """
    tokenizer = TextTokenizer(model_dir)
    tokenizer.pad_token_id  # noqa: B018  (loads it)
    return ImageTransform.from_pretrained(model_dir), tokenizer


class TrainingStream(IterableDataset):
    """One epoch of one rank's batches; each DataLoader worker streams its own shards."""

    def __init__(
        self,
        settings: StreamSettings,
        plan: EpochPlan,
        position: DataPosition,
        tools: tuple[ImageTransform, TextTokenizer] | None = None,
    ) -> None:
        super().__init__()
        self.settings, self.plan, self.position = settings, plan, position
        self.tools = tools or sample_tools(settings.model_dir)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        streams = self.plan.streams
        done = self.position.batches
        # DataLoader hands out batch i from worker i % streams; a resumed epoch starts at
        # worker 0, so the workers before `done % streams` first yield one placeholder
        # each, and batch `done` comes from the same worker as in an uninterrupted run.
        produced = (done - worker + streams - 1) // streams if done > worker else 0
        if worker < done % streams:
            yield {PLACEHOLDER_KEY: True, "worker": worker}
        remaining = self.plan.worker_batches - produced
        if remaining <= 0:
            return
        rank, _, _, _ = wds.utils.pytorch_worker_info()
        settings, epoch = self.settings, self.position.epoch
        skips = SkipCounter(settings.log_skipped_samples)
        cursor = StreamCursor(self.position.worker_positions.get(worker, 0))
        transform, tokenizer = self.tools
        builder = ExampleBuilder(settings, transform, tokenizer, epoch)

        def unreadable(error: Exception) -> bool:
            skips.skip(None, "unreadable_shard_member", repr(error))
            return True  # keep going with the next member / shard

        pipeline = (
            wds.WebDataset(
                list(self.plan.urls),
                shardshuffle=len(self.plan.urls),
                detshuffle=True,
                seed=derive_seed(settings.seed, epoch, "shards"),
                nodesplitter=wds.split_by_node,
                workersplitter=wds.split_by_worker,
                handler=unreadable,
                empty_check=False,
            )
            .compose(
                join_annotations(ShardAnnotations(settings.dirs)),
                wds.filters.detshuffle(
                    settings.shuffle_buffer,
                    settings.shuffle_buffer,
                    seed=derive_seed(settings.seed, epoch, rank, worker, "samples"),
                ),
                cursor,
                Batcher(settings, builder, skips, cursor, worker),
            )
            .with_epoch(nbatches=remaining)
        )
        yielded = 0
        for batch in pipeline:
            yielded += 1
            yield batch
        if yielded < remaining:
            raise RuntimeError(
                f"rank {rank} worker {worker}: its shards ran dry after {yielded} of {remaining} "
                "batches (too few usable samples for a batch)"
            )


def make_loader(
    settings: StreamSettings,
    plan: EpochPlan,
    position: DataPosition,
    prefetch_factor: int = 2,
    pin_memory: bool = False,
    tools: tuple[ImageTransform, TextTokenizer] | None = None,
) -> DataLoader:
    """The DataLoader of one epoch (from `position` on). Drop batches with PLACEHOLDER_KEY.

    `tools`: `sample_tools(settings.model_dir)`, loaded once for a run's epochs."""
    import webdataset  # noqa: F401  (imported before the workers fork: they inherit it)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # workers are forked
    return DataLoader(
        TrainingStream(settings, plan, position, tools),
        batch_size=None,
        num_workers=plan.workers,
        prefetch_factor=prefetch_factor if plan.workers else None,
        persistent_workers=False,  # a fresh stream per epoch: workers start at its position
        pin_memory=pin_memory,
    )


def real_batches(loader: DataLoader) -> Iterator[dict[str, Any]]:
    """The loader's batches without the placeholders of a resumed epoch."""
    for batch in loader:
        if not batch.get(PLACEHOLDER_KEY):
            yield batch
