"""Join an image shard with its stage annotations into FineHARD-shaped records.

Images are written once and every stage adds only its own per-shard records, keyed
by sample key; this module puts them back together, one record per image:

    {"key", "f_path", "caption", "short_caption",
     "bbox_info": [{"bbox": [x1, y1, x2, y2, score], "short_expr", "long_expr",
                    "flag_short_neg", "short_expr_negs": {"0": ..., "9": ...}}]}

The trainer reads its samples through `join_shard`; `fgclip finehard export` writes the
same records (without "key") as a FineHARD file.

Imported FineHARD records come back exactly as they were read. What the contract has
no field for travels in a *layout* beside the data (written by fgclip.data.finehard.core):
- image shard `KEY.json` -> meta["finehard"]: {"fields": unknown top-level fields,
  "order": top-level key order, "short_caption": the alt text when it has surrounding
  whitespace (the shard reader strips it)};
- regions record -> region["extra"]: {"fields": unknown region fields, "order": region
  key order, "bbox": the bbox as given when it is not [x1, y1, x2, y2, score]};
- negatives record -> "neg_keys" (dict keys other than "0".."K-1") and "flag_short_neg"
  (an imported flag that disagrees with the negatives).
Each entry is present only when needed, so pipeline-built records carry none of it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fgclip.core.shards import RawSample, RawShardReader, annotation_path, read_annotations
from fgclip.core.storage import exists, join

log = logging.getLogger(__name__)

RECORD_FIELDS = ("f_path", "caption", "short_caption", "bbox_info")
REGION_FIELDS = ("bbox", "short_expr", "long_expr", "flag_short_neg", "short_expr_negs")
LAYOUT_KEY = "finehard"  # the meta entry of an image shard sample that holds its layout


# ---------------------------------------------------------------- layout (both directions)


def split_layout(item: Mapping[str, Any], standard: tuple[str, ...]) -> dict[str, Any]:
    """The layout of a FineHARD object: its unknown fields, and its key order when that is
    not the standard fields followed by the unknown ones (so absent fields are recorded)."""
    layout: dict[str, Any] = {}
    fields = {name: value for name, value in item.items() if name not in standard}
    if fields:
        layout["fields"] = fields
    if list(item) != [*standard, *fields]:
        layout["order"] = list(item)
    return layout


def apply_layout(values: dict[str, Any], layout: Mapping[str, Any] | None) -> dict[str, Any]:
    """Inverse of split_layout: the standard `values` plus unknown fields, in stored order."""
    if not layout:
        return values
    merged = {**values, **layout.get("fields", {})}
    order = layout.get("order")
    return merged if order is None else {name: merged[name] for name in order if name in merged}


# ---------------------------------------------------------------- one record


def finehard_region(region: Mapping[str, Any], negatives: Mapping[str, Any] | None) -> dict[str, Any]:
    """One `bbox_info` entry from a regions-record region and its negatives (or None)."""
    extra = region.get("extra") or {}
    negs = list(negatives.get("short_expr_negs", [])) if negatives else []
    names = negatives.get("neg_keys") if negatives else None
    if names is None or len(names) != len(negs):
        names = [str(index) for index in range(len(negs))]
    flag = negatives["flag_short_neg"] if negatives and "flag_short_neg" in negatives else int(bool(negs))
    values = {
        "bbox": extra["bbox"] if "bbox" in extra else [*region["bbox"], region["score"]],
        "short_expr": region["short_expr"],
        "long_expr": region["long_expr"],
        "flag_short_neg": flag,
        "short_expr_negs": dict(zip(names, negs)),
    }
    return apply_layout(values, extra)


def finehard_record(
    sample: RawSample,
    shard: str,
    caption: Mapping[str, Any],
    regions: Mapping[str, Any] | None,
    negatives: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The FineHARD record of one sample. `negatives` must be aligned with `regions`."""
    layout = sample.meta.get(LAYOUT_KEY) or {}
    region_list = regions["regions"] if regions else []
    negative_list = negatives["regions"] if negatives else [None] * len(region_list)
    values = {
        # a pipeline-built sample has no image file of its own: name its shard member
        "f_path": sample.meta.get("f_path", f"{shard}/{sample.key}.{sample.image_ext}"),
        "caption": caption["long_caption"],
        "short_caption": layout.get("short_caption", sample.caption),
        "bbox_info": [finehard_region(region, negs) for region, negs in zip(region_list, negative_list)],
    }
    return apply_layout(values, layout)


# ---------------------------------------------------------------- one shard


def _load_stage(folder: str | Path | None, shard: str, stage: str) -> dict[str, dict[str, Any]] | None:
    """A stage's records of one shard by key; None when the stage is not joined."""
    if folder is None:
        return None
    if not exists(annotation_path(folder, shard)):
        log.warning("join: %s has no %s records for shard %s; its samples count as missing", folder, stage, shard)
        return {}
    return read_annotations(folder, shard)


def join_shard(
    images_dir: str | Path,
    captions_dir: str | Path,
    regions_dir: str | Path | None,
    negatives_dir: str | Path | None,
    shard: str,
    *,
    counts: Counter | None = None,
    decode_images: bool = True,
    with_key: bool = True,
) -> Iterator[tuple[RawSample, dict[str, Any]]]:
    """(sample, FineHARD record) for each image of `shard` that has a long caption.

    regions_dir / negatives_dir may be None (stage 1 needs captions only). Samples that a
    later stage does not cover are kept with what there is and counted in `counts`:
    missing_captions (sample skipped: the caption is the one thing every record needs),
    missing_regions, missing_negatives, misaligned_negatives (region count differs: the
    negatives are left out), orphan_<stage> (records for keys the image shard lacks),
    read_rejects (samples the shard reader rejected), joined.
    """
    counts = Counter() if counts is None else counts
    captions = _load_stage(captions_dir, shard, "captions") or {}
    regions = _load_stage(regions_dir, shard, "regions")
    negatives = _load_stage(negatives_dir, shard, "negatives")
    reader = RawShardReader(join(images_dir, f"{shard}.tar"), decode_images=decode_images)
    seen: set[str] = set()
    for sample in reader:
        seen.add(sample.key)
        caption = captions.get(sample.key)
        if caption is None:
            counts["missing_captions"] += 1
            continue
        sample_regions = regions.get(sample.key) if regions is not None else None
        if regions is not None and sample_regions is None:
            counts["missing_regions"] += 1
        region_count = len(sample_regions["regions"]) if sample_regions else 0
        sample_negatives = negatives.get(sample.key) if negatives is not None and region_count else None
        if region_count and negatives is not None:
            if sample_negatives is None:
                counts["missing_negatives"] += 1
            elif len(sample_negatives["regions"]) != region_count:
                counts["misaligned_negatives"] += 1
                log.warning(
                    "join: shard %s key %s: %d negative entries for %d regions; negatives left out",
                    shard,
                    sample.key,
                    len(sample_negatives["regions"]),
                    region_count,
                )
                sample_negatives = None
        record = finehard_record(sample, shard, caption, sample_regions, sample_negatives)
        if with_key:
            record = {"key": sample.key, **record}
            record["key"] = sample.key  # the sample key wins over an imported field named "key"
        counts["joined"] += 1
        yield sample, record
    counts["read_rejects"] += sum(1 for reject in reader.rejects if reject.dropped)
    for stage, records in (("captions", captions), ("regions", regions), ("negatives", negatives)):
        orphans = len(set(records or {}) - seen)
        if orphans:
            counts[f"orphan_{stage}"] += orphans
