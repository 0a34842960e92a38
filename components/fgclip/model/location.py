"""Model folders on S3: a checkpoint named by an s3:// URL is fetched once into a local
cache (Hugging Face loaders and DeepSpeed read local files), and a model written locally
is published to its s3:// destination file by file, each object appearing whole.

The cache folder is named by a digest of the prefix's listing (names, sizes, ETags), so a
changed model is fetched again and an unchanged one never twice."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from fgclip.core.storage import copy_file, is_s3, join, list_files, local_path, object_pin

log = logging.getLogger(__name__)

CACHE_VARIABLE = "FGCLIP_MODEL_CACHE"
DEFAULT_CACHE = ".cache/models"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_VARIABLE) or DEFAULT_CACHE)


def local_model_dir(location: str | Path) -> Path:
    """A local folder holding the model at `location` (itself when it is local)."""
    if not is_s3(location):
        return local_path(location)
    names = list_files(location)
    if not names:
        raise FileNotFoundError(f"no model files under {location}")
    digest = hashlib.sha256()
    for name in names:
        pin = object_pin(join(location, name))
        digest.update(f"{name}\t{pin['size']}\t{pin['etag']}\n".encode())
    target = cache_root() / digest.hexdigest()[:24]
    done = target / ".complete"
    if not done.is_file():
        log.info("fetching model %s into %s (%d files)", location, target, len(names))
        for name in names:
            copy_file(join(location, name), target / name)
        done.write_text(str(location) + "\n")
    return target


def publish_model_dir(folder: str | Path, location: str | Path, *, skip: tuple[str, ...] = ()) -> int:
    """Upload every file of `folder` (except the top-level entries in `skip`) to the s3://
    `location`; returns the number of files."""
    root = local_path(folder)
    count = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if relative.parts[0] in skip or relative.name.startswith("."):
            continue
        copy_file(path, join(location, relative.as_posix()))
        count += 1
    log.info("published %d model files to %s", count, location)
    return count
