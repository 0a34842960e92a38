"""What a QC run leaves behind: report.json, metrics.json, gate.json, noise_by_shard.csv,
sample.jsonl and the review gallery, and the numbers logged to MLflow."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from fgclip.core.shards import RawShardReader, dumps_jsonl
from fgclip.core.storage import exists, join, path_in, write_text_atomic
from fgclip.data.qc.config import QCConfig
from fgclip.data.qc.estimate import Assessment
from fgclip.data.qc.gallery import GalleryCard, boxed_image_uri, write_gallery
from fgclip.data.qc.reviewers import BAD, OK
from fgclip.data.qc.run import QCResult

log = logging.getLogger(__name__)

def gallery_cards(assessments: Sequence[Assessment], images_dir: str | Path, config: QCConfig, *,
                  human_labels: bool, progress: bool = True) -> list[GalleryCard]:
    """Cards for up to qc.gallery_items assessments, noisy first; images read from the shards."""
    chosen = sorted(assessments, key=lambda a: (not a.noisy, a.item.item_id))[: config.gallery_items]
    wanted: dict[str, set[str]] = {}
    for a in chosen:
        wanted.setdefault(a.item.shard, set()).add(a.item.key)
    images: dict[tuple[str, str], bytes] = {}
    for shard in tqdm(sorted(wanted), desc="qc: gallery images", unit="shard", disable=not progress):
        path = join(images_dir, f"{shard}.tar")
        if not exists(path):
            log.warning("gallery: image shard %s is missing", path)
            continue
        reader = RawShardReader(path, decode_images=False)
        for sample in reader:
            if sample.key in wanted[shard]:
                images[(shard, sample.key)] = sample.image_bytes
    cards = []
    for a in chosen:
        item = a.item
        data = images.get((item.shard, item.key))
        uri, note = None, "" if data is not None else "no readable image for this key in its image shard"
        if data is not None:
            try:
                uri = boxed_image_uri(data, item.bbox, noisy=a.noisy, max_side=config.gallery_image_max_side,
                                      quality=config.gallery_jpeg_quality)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                note = f"image cannot be decoded: {error}"
        cards.append(GalleryCard(
            item_id=item.item_id, shard=item.shard, short_expr=item.short_expr, long_expr=item.long_expr,
            negatives=list(item.negatives or ()), caption=item.caption or "", noisy=a.noisy,
            verdict=a.verdict.label, verdict_reason=a.verdict.reason,
            failures=[(f.check, f.reason) for f in a.failures], image_uri=uri, image_note=note,
            label=a.verdict.label if human_labels and a.verdict.label in (OK, BAD) else None,
        ))
    return cards


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: "" if row.get(column) is None else row[column] for column in columns})
    return buffer.getvalue()


def write_outputs(result: QCResult, out_dir: str | Path, *, images_dir: str | Path, config: QCConfig,
                  human_labels: bool = False, progress: bool = True) -> dict[str, str | Path]:
    """report.json, metrics.json, gate.json, noise_by_shard.csv, sample.jsonl and gallery/index.html.

    gate.json holds only the gate's outcome: training depends on it in dvc.yaml, so
    training waits for a passed gate without rerunning when only QC's sampling changes.
    """
    names = {"report": "report.json", "metrics": "metrics.json", "gate": "gate.json",
             "noise_by_shard": "noise_by_shard.csv", "sample": "sample.jsonl", "gallery": "gallery"}
    paths = {name: path_in(out_dir, file) for name, file in names.items()}  # a local folder or an s3:// prefix
    write_text_atomic(paths["gate"], json.dumps({"passed": result.gate.passed}) + "\n")
    write_text_atomic(paths["report"], json.dumps(result.report, indent=2) + "\n")
    write_text_atomic(paths["metrics"], json.dumps(result.metrics, indent=2) + "\n")
    write_text_atomic(paths["noise_by_shard"], _csv(result.by_shard, ("shard", "sampled", "reviewed", "noisy", "rate")))
    write_text_atomic(paths["sample"], dumps_jsonl(a.to_record() for a in result.sample))
    estimate = result.estimate
    summary = [("population", str(result.report["design"]["population"])), ("sampled", str(len(result.sample))),
               ("reviewed", str(estimate.n)), ("noisy", str(estimate.noisy)),
               ("p_hat", "n/a" if estimate.p_hat is None else f"{estimate.p_hat:.2%}"),
               (f"{estimate.confidence:.0%} CI", f"[{estimate.ci_low:.2%}, {estimate.ci_high:.2%}]"),
               ("reviewer", str(result.report["reviewer"]["identity"]["name"]))]
    if result.census is not None and result.census.p_hat is not None:
        summary.append(("true rate (census)", f"{result.census.p_hat:.2%}"))
    cards = gallery_cards(result.sample, images_dir, config, human_labels=human_labels, progress=progress)
    write_gallery(paths["gallery"], cards, title="FG-CLIP data QC review", summary=summary,
                  gate_passed=result.gate.passed, gate_message=result.gate.message)
    return paths


def mlflow_metrics(result: QCResult) -> dict[str, float]:
    """The numeric metrics (booleans as 0/1, undefined values left out)."""
    numbers = {}
    for name, value in result.metrics.items():
        if isinstance(value, bool):
            numbers[name] = float(value)
        elif isinstance(value, (int, float)):
            numbers[name] = value
    return numbers


