"""The QC population: every region item of every shard, read from the stage outputs.

The QC unit is a *region item*: one region of one sample (its box, short and long
expression, hard negatives) together with the image's long caption. Stage outputs were
validated against the contract when written; QC still reads them defensively, so a
damaged field becomes a validator failure, not a crash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fgclip.core.shards import annotation_path, read_jsonl
from fgclip.core.storage import exists

@dataclass(frozen=True)
class RegionItem:
    """One region of one sample with everything QC judges about it."""

    shard: str
    key: str
    region: int
    width: int
    height: int
    bbox: tuple[Any, ...]  # normalised x1, y1, x2, y2 as stored (validated, not trusted)
    short_expr: str
    long_expr: str
    negatives: tuple[str, ...] | None  # None: no negatives entry for this region
    caption: str | None  # None: no caption record for the image

    @property
    def item_id(self) -> str:
        """`<key>#<region>`; unambiguous because keys never contain '#'."""
        return f"{self.key}#{self.region}"


def records_by_key(folder: str | Path, shard: str, what: str) -> dict[str, dict[str, Any]]:
    path = annotation_path(folder, shard)
    if not exists(path):
        raise FileNotFoundError(f"{what} of shard {shard} are missing: {path} (has the {what} stage run?)")
    records = {}
    for number, record in enumerate(read_jsonl(path), 1):
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            raise ValueError(f"{path}: record {number} has no string 'key'; the file breaks the data contract")
        records[record["key"]] = record
    return records


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _size(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def shard_items(shard: str, regions: Mapping[str, dict[str, Any]], negatives: Mapping[str, dict[str, Any]],
                captions: Mapping[str, dict[str, Any]]) -> list[RegionItem]:
    """The region items of one shard, ordered by (key, region index)."""
    items = []
    for key in sorted(regions):
        record = regions[key]
        neg_regions = (negatives.get(key) or {}).get("regions")
        caption = (captions.get(key) or {}).get("long_caption")
        for index, region in enumerate(record.get("regions") or []):
            region = region if isinstance(region, dict) else {}
            negs = None
            if isinstance(neg_regions, list) and index < len(neg_regions) and isinstance(neg_regions[index], dict):
                found = neg_regions[index].get("short_expr_negs")
                negs = tuple(_text(text) for text in found) if isinstance(found, list) else None
            items.append(RegionItem(
                shard=shard, key=key, region=index,
                width=_size(record.get("width")), height=_size(record.get("height")),
                bbox=tuple(region.get("bbox") or ()) if isinstance(region.get("bbox"), list) else (),
                short_expr=_text(region.get("short_expr")), long_expr=_text(region.get("long_expr")),
                negatives=negs, caption=caption if isinstance(caption, str) else None,
            ))
    return items


def load_population(shards: Sequence[str], *, regions_dir: str | Path, negatives_dir: str | Path,
                    captions_dir: str | Path, progress: bool = True) -> dict[str, list[RegionItem]]:
    """Every region item, by shard. A shard missing from a stage folder is an error."""
    population = {}
    for shard in tqdm(shards, desc="qc: load", unit="shard", disable=not progress):
        population[shard] = shard_items(
            shard,
            records_by_key(regions_dir, shard, "regions"),
            records_by_key(negatives_dir, shard, "negatives"),
            records_by_key(captions_dir, shard, "captions"),
        )
    return population

