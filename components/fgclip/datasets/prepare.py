"""Preparing each kind of source and pinning it in the manifest."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fgclip.core.dataset import (
    HELDOUT_IMAGES,
    HELDOUT_TRUTH,
    MANIFEST_NAME,
    TRUTH,
    DatasetManifest,
    pin_shards,
    write_manifest,
)
from fgclip.core.storage import is_s3, join
from fgclip.core.tracking import Tracker
from fgclip.data.finehard.importer import import_finehard
from fgclip.data.ingest.cli import log_report
from fgclip.data.ingest.stage import run_ingest
from fgclip.datasets.config import DatasetConfig
from fgclip.demo.world import generate_split, split_dirs

if TYPE_CHECKING:
    from fgclip.config import Params

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """The dataset cannot be prepared as configured."""


@dataclass
class Prepared:
    images: str
    sidecars: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def _demo(params: Params, root: str, progress: bool, tracker: Tracker) -> Prepared:
    if is_s3(root):
        raise DatasetError("the demo world is written to a local folder; leave dataset.location empty or local")
    for split in ("train", "heldout"):
        summary = generate_split(params.demo, root, split, progress=progress)
        counts = summary.as_dict()
        counts.pop("split")
        tracker.log_metrics({f"demo.{split}.{name}": value for name, value in counts.items()})
    (images, truth), (heldout_images, heldout_truth) = split_dirs(root, "train"), split_dirs(root, "heldout")
    return Prepared(
        str(images),
        sidecars={TRUTH: str(truth), HELDOUT_IMAGES: str(heldout_images), HELDOUT_TRUTH: str(heldout_truth)},
    )


def _urls(params: Params, images: str, tracker: Tracker) -> Prepared:
    report = run_ingest(params.dataset.urls, params.ingest, images)
    log_report(tracker, report)
    counts = report.as_dict()
    return Prepared(images, details={"ingest": {k: v for k, v in counts.items() if k != "per_shard"}})


def _finehard(config: DatasetConfig, root: str, progress: bool) -> Prepared:
    if is_s3(root):
        raise DatasetError("FineHARD is imported into a local folder; leave dataset.location empty or local")
    source = config.finehard
    summary = import_finehard(
        list(source.annotations), str(source.image_root), root, shard_size=source.shard_size, progress=progress
    )
    annotations: dict[str, str] = {str(kind): join(root, kind) for kind in source.keep}
    counts = summary.as_dict()
    return Prepared(join(root, "images"), annotations=annotations, details={"finehard": counts})


def prepare_dataset(params: Params, out: str, *, progress: bool, tracker: Tracker) -> DatasetManifest:
    """Prepare params' dataset, write `out`/manifest.json and return the manifest."""
    config = params.dataset
    location = config.location
    if config.source == "demo":
        prepared = _demo(params, location or out, progress, tracker)
    elif config.source == "urls":
        prepared = _urls(params, location or join(out, "images"), tracker)
    elif config.source == "finehard":
        prepared = _finehard(config, location or join(out, "finehard"), progress)
    else:
        assert location is not None  # the config requires it
        prepared = Prepared(location)
    try:
        pins = pin_shards(prepared.images)
    except FileNotFoundError as error:
        raise DatasetError(f"dataset {config.name}: {error}") from error
    if not pins:
        raise DatasetError(f"dataset {config.name}: no image shards (NNNNN.tar) in {prepared.images}")
    shards = sorted(pins)
    if config.heldout_shards >= len(shards):
        raise DatasetError(
            f"dataset.heldout_shards={config.heldout_shards} leaves no shard to train on ({len(shards)} shards)"
        )
    heldout = tuple(shards[len(shards) - config.heldout_shards :]) if config.heldout_shards else ()
    manifest = DatasetManifest(
        name=config.name,
        source=config.source,
        images=prepared.images,
        shards=pins,
        heldout=heldout,
        sidecars=prepared.sidecars,
        annotations=prepared.annotations,
        details=prepared.details,
    )
    write_manifest(manifest, join(out, MANIFEST_NAME))
    log.info(
        "dataset %s (%s): %d shards (%d held out) in %s, version %s",
        manifest.name,
        manifest.source,
        len(shards),
        len(heldout),
        manifest.images,
        manifest.version,
    )
    return manifest
