"""The dataset manifest: which image shards a build reads, pinned.

`fgclip dataset` (the first stage) prepares the dataset that params' `dataset` section
names and writes this manifest; every later stage reads its shards through it
(`--dataset data/dataset/manifest.json`), never from a path of its own. It records:

- where the image shards are (a workspace folder, any folder, or an s3:// prefix: shards
  are read in place, never copied into the workspace);
- every shard object's pin (size + SHA-256 for a local file, size + ETag for an S3
  object), so the manifest, a small DVC output, pins exactly which source objects a
  dataset version read; a stage refuses a shard whose object no longer matches;
- the shards held out of training (real data: evaluated on their built annotations);
- what only some sources have: the demo world's truth sidecars (read by the demo backends,
  the truth reviewer and the demo evaluation only) and imported annotations (FineHARD).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fgclip.core.shards import list_shards
from fgclip.core.storage import is_s3, join, object_pin, read_text, write_text_atomic
from fgclip.errors import ComponentError

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: Sidecar names: the demo world's truth of the build's shards and its held-out split.
TRUTH, HELDOUT_IMAGES, HELDOUT_TRUTH = "truth", "heldout_images", "heldout_truth"
#: Annotation kinds a source may bring along (FineHARD): a stage passes these through.
ANNOTATION_KINDS = ("captions", "regions", "negatives")


@dataclass(frozen=True)
class DatasetManifest:
    name: str
    source: str
    images: str
    shards: dict[str, dict[str, Any]]
    heldout: tuple[str, ...] = ()
    sidecars: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # source-specific facts (ingest totals, import counts)
    manifest_version: int = MANIFEST_VERSION

    @property
    def version(self) -> str:
        """`ds-` + a digest of the shard location and pins: the same objects, the same id."""
        payload = json.dumps({"images": self.images, "shards": self.shards}, sort_keys=True)
        return "ds-" + hashlib.sha256(payload.encode()).hexdigest()[:16]

    def train_shards(self) -> list[str]:
        held = set(self.heldout)
        return [shard for shard in sorted(self.shards) if shard not in held]

    def to_json(self) -> str:
        data = asdict(self)
        data["heldout"] = list(self.heldout)
        data["version"] = self.version
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> DatasetManifest:
        try:
            data = json.loads(text)
            data.pop("version", None)
            if data.get("manifest_version") != MANIFEST_VERSION:
                raise ValueError(f"manifest_version {data.get('manifest_version')!r}, expected {MANIFEST_VERSION}")
            data["heldout"] = tuple(data.get("heldout") or ())
            return cls(**data)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{where} is not a dataset manifest: {error}") from error


def pin_shards(images: str, shards: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """{shard: {"tar": pin, "parquet": pin (when present)}} of the shards in `images`."""
    found = list_shards(images) if shards is None else list(shards)
    pins: dict[str, dict[str, Any]] = {}
    for shard in found:
        entry = {"tar": object_pin(join(images, f"{shard}.tar"))}
        try:
            entry["parquet"] = object_pin(join(images, f"{shard}.parquet"))
        except FileNotFoundError:
            pass  # the parquet sidecar is optional; the tar is the data
        pins[shard] = entry
    return pins


def write_manifest(manifest: DatasetManifest, path: str | Path) -> None:
    write_text_atomic(path, manifest.to_json())


def load_manifest(path: str | Path) -> DatasetManifest:
    try:
        text = read_text(path)
    except FileNotFoundError as error:
        raise ComponentError(
            f"no dataset manifest at {path}: run `fgclip dataset` (the dataset stage) first"
        ) from error
    try:
        return DatasetManifest.from_json(text, str(path))
    except ValueError as error:
        raise ComponentError(str(error)) from error


def changed_objects(manifest: DatasetManifest, shards: Sequence[str]) -> list[str]:
    """Shard objects that no longer match their pin: size (and ETag on S3; a local file's
    content is checked by every stage's fingerprint, which hashes it anyway)."""
    changed = []
    for shard in shards:
        url = join(manifest.images, f"{shard}.tar")
        pinned = manifest.shards[shard]["tar"]
        try:
            now = object_pin(url, hash_local=False)
        except FileNotFoundError:
            changed.append(f"{url} (missing)")
            continue
        if now["size"] != pinned["size"] or (is_s3(url) and now.get("etag") != pinned.get("etag")):
            changed.append(url)
    return changed


# ---------------------------------------------------------------- the CLI side


def add_dataset_arguments(
    parser: argparse.ArgumentParser, *, images_help: str = "image shard folder (NNNNN.tar)"
) -> None:
    """--dataset MANIFEST (what the pipeline passes) or --images FOLDER (a folder of shards
    given directly, e.g. in a test or a one-off run)."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--dataset", default=None, help="dataset manifest written by `fgclip dataset`")
    group.add_argument("--images", default=None, help=images_help)


@dataclass(frozen=True)
class DatasetInput:
    """What a stage reads: the image shard folder, the shards of its split, and the manifest."""

    images: str
    shards: list[str] | None  # None: every shard in `images`
    manifest: DatasetManifest | None = None

    def sidecar(self, name: str) -> str | None:
        return self.manifest.sidecars.get(name) if self.manifest else None

    def annotations(self, kind: str) -> str | None:
        return self.manifest.annotations.get(kind) if self.manifest else None


def dataset_input(args: argparse.Namespace, split: str = "all") -> DatasetInput:
    """The stage's input from --dataset (split: all, train or heldout) or --images."""
    if getattr(args, "dataset", None) is None:
        return DatasetInput(args.images, None)
    manifest = load_manifest(args.dataset)
    if split == "train":
        shards = manifest.train_shards()
    elif split == "heldout":
        shards = sorted(manifest.heldout)
    else:
        shards = sorted(manifest.shards)
    changed = changed_objects(manifest, shards)
    if changed:
        raise ComponentError(
            f"dataset {manifest.name} ({manifest.version}): {len(changed)} shard object(s) changed since the "
            f"manifest pinned them, e.g. {', '.join(changed[:3])}; rerun the dataset stage to pin the new objects"
        )
    return DatasetInput(manifest.images, shards, manifest)
