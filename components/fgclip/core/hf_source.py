"""Loading a Hugging Face model the same way in every backend, and naming exactly which
weights produced the data (the backend identity that goes into each output's fingerprint)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from fgclip.core.config import HFModelSource

# Hashing multi-GB weights fully would cost minutes per run; the head and tail of every
# file plus its size tell fine-tunes of the same architecture apart in practice.
SAMPLE_BYTES = 1 << 20
SNAPSHOT_PATTERN = re.compile(r"/snapshots/(?P<commit>[0-9a-f]{40})(/|$)")


class ModelLoadError(ValueError):
    """The configured model cannot be loaded: a clear message for the user."""


def _file_digest(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        if size <= 2 * SAMPLE_BYTES:
            digest.update(handle.read())
        else:
            digest.update(handle.read(SAMPLE_BYTES))
            handle.seek(size - SAMPLE_BYTES)
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def folder_digest(folder: Path) -> str:
    """Digest of a model folder: every file's relative name, size, head and tail."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{_file_digest(path)}\n".encode())
    return digest.hexdigest()


def model_identity(source: HFModelSource) -> dict[str, Any]:
    """Model reference, revision and, for a local folder, a digest of its files."""
    identity: dict[str, Any] = {"model": source.model, "revision": source.revision}
    folder = Path(source.model or "")
    if source.model and folder.is_dir():
        snapshot = SNAPSHOT_PATTERN.search(folder.resolve().as_posix())
        identity["model"] = folder.name  # not the absolute path: the same weights elsewhere are the same data
        identity["files_sha256"] = folder_digest(folder)
        if snapshot:
            identity["revision"] = snapshot.group("commit")
    return identity


def load_kwargs(source: HFModelSource) -> dict[str, Any]:
    """Keyword arguments every `from_pretrained` call of a backend shares."""
    return {
        "revision": source.revision,
        "local_files_only": source.local_files_only,
        "trust_remote_code": source.trust_remote_code,
    }


def load_or_explain(loader: Any, source: HFModelSource, what: str, **extra: Any) -> Any:
    """`loader.from_pretrained(model, ...)`, with the cause in one line when it fails."""
    try:
        return loader.from_pretrained(source.model, **load_kwargs(source), **extra)
    except (OSError, ValueError, KeyError) as error:
        # OSError: missing folder or hub id; ValueError/KeyError: an architecture this loader does not know
        raise ModelLoadError(
            f"cannot load the {what} {source.model!r} with {getattr(loader, '__name__', loader)}: "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from error
