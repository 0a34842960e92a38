"""Shard I/O: img2dataset-format image shards and the per-shard annotation files.

An image shard is `NNNNN.tar` (members `KEY.jpg`, `KEY.txt`, `KEY.json`) plus
`NNNNN.parquet` with one row per sample. Stages never rewrite it: each writes
`<stage dir>/NNNNN.jsonl` (records keyed by sample key), `NNNNN.rejects.jsonl` and
`NNNNN.manifest.json` beside the others.

The reader is the single gate for untrusted input. Whatever is wrong with a tar (a
corrupt image, a missing caption, a duplicate or dotted key, an unsafe member name, a
truncated archive) becomes a `Reject` with a reason code and a readable detail, and the
good samples around it are still returned.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fgclip.core.storage import is_s3, join, list_files, local_path, name_of, open_read, read_bytes, write_bytes_atomic

T = TypeVar("T")

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXT = "txt"
META_EXT = "json"
KNOWN_EXTS = IMAGE_EXTS + (CAPTION_EXT, META_EXT)
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")
SHARD_PATTERN = re.compile(r"^\d{5,}$")


@dataclass(frozen=True)
class Reject:
    """One rejected sample (dropped=True) or one ignored member of a kept sample."""

    shard: str
    key: str | None
    reason: str
    detail: str
    stage: str = "read"
    member: str | None = None
    dropped: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RawSample:
    key: str
    image_bytes: bytes
    image_ext: str
    width: int
    height: int
    caption: str
    meta: dict[str, Any] = field(default_factory=dict)

    def open_image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.image_bytes)).convert("RGB")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def list_shards(folder: str | Path, suffix: str = ".tar") -> list[str]:
    """Shard ids (`00000`, ...) of a folder or s3:// prefix, sorted (files directly in it)."""
    if not is_s3(folder) and not local_path(folder).is_dir():
        raise FileNotFoundError(f"shard folder {folder} does not exist")
    names = (name for name in list_files(folder, suffix) if "/" not in name)
    return sorted(name[: -len(suffix)] for name in names if SHARD_PATTERN.match(name[: -len(suffix)]))


def split_member_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key ends at the first dot of the file name."""
    path = PurePosixPath(name)
    stem, _, ext = path.name.partition(".")
    key = str(path.parent / stem) if str(path.parent) != "." else stem
    return key, ext.lower()


def _unsafe_name(name: str) -> bool:
    return name.startswith("/") or any(part == ".." for part in PurePosixPath(name).parts)


class RawShardReader:
    """Iterates the valid samples of one image shard; `rejects` collects the rest."""

    def __init__(self, path: str | Path, *, decode_images: bool = True) -> None:
        self.path = str(path)  # a local path or an s3:// URL, streamed as it is read
        self.name = name_of(path)
        self.shard = self.name.split(".")[0]
        self.decode_images = decode_images
        self.rejects: list[Reject] = []
        self.members_read = 0
        self._bad_keys: set[str] = set()  # dotted or invalid keys already rejected: one reject per sample

    def _reject(
        self, key: str | None, reason: str, detail: str, *, member: str | None = None, dropped: bool = True
    ) -> None:
        item = Reject(self.shard, key, reason, detail, member=member, dropped=dropped)
        log.warning("shard %s: %s%s: %s", self.shard, reason, f" [{key}]" if key else "", detail)
        self.rejects.append(item)

    def __iter__(self) -> Iterator[RawSample]:
        seen: set[str] = set()
        group_key: str | None = None
        group: dict[str, bytes] = {}
        reading: str | None = None  # key of the member whose data is being read
        try:
            with open_read(self.path) as handle:
                if handle.read(1) == b"":
                    self._reject(None, "empty_shard", f"{self.name} is an empty file")
                    return
                handle.seek(0)
                with tarfile.open(fileobj=handle, mode="r|*") as archive:
                    for member in archive:
                        self.members_read += 1
                        reading = split_member_name(member.name)[0]
                        entry = self._accept_member(archive, member)
                        reading = None
                        if entry is None:
                            continue
                        key, ext, data = entry
                        if key != group_key:
                            if group_key is not None:
                                sample = self._finish(group_key, group, seen)
                                if sample is not None:
                                    yield sample
                            group_key, group = key, {}
                        if ext in group:
                            self._reject(
                                key,
                                "duplicate_member",
                                f"second '{ext}' member ignored",
                                member=member.name,
                                dropped=False,
                            )
                            continue
                        group[ext] = data
                    cut = self._cut_header(handle, archive)
        except (tarfile.TarError, EOFError, OSError) as error:
            detail = f"archive unreadable after {self.members_read} members: {error}"
            if group_key is not None and reading not in (None, group_key):
                # the cut is in the next sample's first member: the pending sample is whole
                sample = self._finish(group_key, group, seen)
                if sample is not None:
                    yield sample
                group_key = reading
            self._reject(group_key, "truncated_tar", detail)
            return
        if cut:
            # tarfile ends a stream silently at a cut or invalid header; say so
            self._reject(
                None,
                "truncated_tar",
                f"archive ends after {self.members_read} members without an end-of-archive block; "
                "later samples are lost",
            )
        if group_key is not None:
            sample = self._finish(group_key, group, seen)
            if sample is not None:
                yield sample
        if self.members_read == 0:
            self._reject(None, "empty_shard", f"{self.name} holds no members")

    @staticmethod
    def _cut_header(handle: Any, archive: tarfile.TarFile) -> bool:
        """True when the block after the last member is not a whole zero block (the
        end-of-archive marker), i.e. the file was cut at or inside a header."""
        if getattr(archive.fileobj, "comptype", "tar") != "tar":
            return False  # compressed: the decompressor itself reports a cut stream
        handle.seek(archive.offset)
        block = handle.read(tarfile.BLOCKSIZE)
        return len(block) < tarfile.BLOCKSIZE or block.count(0) != len(block)

    def _accept_member(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[str, str, bytes] | None:
        name = member.name
        if _unsafe_name(name):
            self._reject(
                None,
                "unsafe_member_path",
                f"member {name!r} is absolute or climbs out with '..'; never extracted",
                member=name,
            )
            return None
        if member.isdir():
            return None
        if not member.isfile():
            self._reject(None, "not_a_regular_file", f"member {name!r} is a link or device; ignored", member=name)
            return None
        key, ext = split_member_name(name)
        extractor = archive.extractfile(member)
        data = extractor.read() if extractor is not None else b""
        if len(data) != member.size:
            raise EOFError(f"member {name!r} ends after {len(data)} of {member.size} bytes")
        if ext not in KNOWN_EXTS:
            last = ext.rsplit(".", 1)[-1]
            if "." in ext and last in KNOWN_EXTS:
                dotted = f"{key}.{ext.rsplit('.', 1)[0]}"
                if dotted not in self._bad_keys:
                    self._bad_keys.add(dotted)
                    self._reject(
                        dotted,
                        "dotted_key",
                        f"key {dotted!r} contains a dot; webdataset ends keys at the first dot, "
                        f"so it would be read as key {key!r}",
                        member=name,
                    )
                return None
            self._reject(
                key,
                "unknown_member",
                f"member {name!r} has unknown extension {ext!r}; ignored",
                member=name,
                dropped=False,
            )
            return None
        if not KEY_PATTERN.match(key):
            if key not in self._bad_keys:
                self._bad_keys.add(key)
                self._reject(key, "invalid_key", f"key {key!r} does not match {KEY_PATTERN.pattern}", member=name)
            return None
        return key, ext, data

    def _finish(self, key: str, group: dict[str, bytes], seen: set[str]) -> RawSample | None:
        if key in seen:
            self._reject(key, "duplicate_key", "key already seen earlier in this shard; the first copy is kept")
            return None
        seen.add(key)
        image_ext = next((ext for ext in IMAGE_EXTS if ext in group), None)
        if image_ext is None:
            self._reject(key, "missing_image", "sample has no image member")
            return None
        if CAPTION_EXT not in group:
            self._reject(key, "missing_caption", "sample has no .txt caption")
            return None
        try:
            caption = group[CAPTION_EXT].decode("utf-8")
        except UnicodeDecodeError as error:
            self._reject(key, "caption_not_utf8", f"caption is not valid UTF-8: {error}")
            return None
        if not caption.strip():
            self._reject(key, "empty_caption", "caption is empty")
            return None
        meta: dict[str, Any] = {}
        if META_EXT in group:
            try:
                loaded = json.loads(group[META_EXT].decode("utf-8"))
                if not isinstance(loaded, dict):
                    raise ValueError("not a JSON object")
                meta = loaded
            except (UnicodeDecodeError, ValueError) as error:
                self._reject(key, "bad_metadata", f".json ignored: {error}", member=f"{key}.json", dropped=False)
        try:
            width, height = self._image_size(group[image_ext])
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            self._reject(key, "corrupt_image", f"image cannot be decoded: {error}")
            return None
        return RawSample(key, group[image_ext], image_ext, width, height, caption.strip(), meta)

    def _image_size(self, data: bytes) -> tuple[int, int]:
        with Image.open(io.BytesIO(data)) as image:
            if self.decode_images:
                image.load()  # a truncated or corrupt JPEG fails here, not at training time
            width, height = image.size
        if width < 1 or height < 1:
            raise ValueError(f"image has size {width}x{height}")
        return width, height


# ---------------------------------------------------------------- writing image shards


@dataclass(frozen=True)
class ShardSample:
    """What an image shard stores for one sample (the img2dataset layout)."""

    key: str
    jpeg: bytes
    caption: str
    meta: dict[str, Any]


def _tar_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed, so the same samples give the same bytes
    info.mode = 0o644
    archive.addfile(info, io.BytesIO(data))


def write_image_shard(folder: str | Path, shard: str, samples: Iterable[ShardSample]) -> int:
    """Write `shard.tar` and `shard.parquet` atomically; returns the sample count."""
    rows: list[dict[str, Any]] = []
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for sample in samples:
            if not KEY_PATTERN.match(sample.key):
                raise ValueError(f"sample key {sample.key!r} does not match {KEY_PATTERN.pattern}")
            meta = {"key": sample.key, "caption": sample.caption, **sample.meta}
            _tar_member(archive, f"{sample.key}.jpg", sample.jpeg)
            _tar_member(archive, f"{sample.key}.txt", sample.caption.encode("utf-8"))
            _tar_member(archive, f"{sample.key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
            rows.append(
                {
                    "key": sample.key,
                    "caption": sample.caption,
                    "status": "success",
                    "width": meta.get("width"),
                    "height": meta.get("height"),
                    "url": meta.get("url"),
                }
            )
    write_bytes_atomic(join(folder, f"{shard}.tar"), buffer.getvalue())
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("key", pa.string()),
                ("caption", pa.string()),
                ("status", pa.string()),
                ("width", pa.int64()),
                ("height", pa.int64()),
                ("url", pa.string()),
            ]
        ),
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(join(folder, f"{shard}.parquet"), sink.getvalue().to_pybytes())
    return len(rows)


# ---------------------------------------------------------------- annotation files


def annotation_path(folder: str | Path, shard: str, kind: str = "") -> str | Path:
    """`folder/shard.jsonl`, or `folder/shard.<kind>.json[l]` for rejects and manifests:
    a Path in a local folder, an s3:// URL under an S3 prefix (read and write either with
    fgclip.core.storage)."""
    names = {"": f"{shard}.jsonl", "rejects": f"{shard}.rejects.jsonl", "manifest": f"{shard}.manifest.json"}
    if kind not in names:
        raise ValueError(f"unknown annotation kind {kind!r}")
    return join(folder, names[kind]) if is_s3(folder) else local_path(folder) / names[kind]


def dumps_jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> bytes:
    data = dumps_jsonl(records).encode("utf-8")
    write_bytes_atomic(path, data)
    return data


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    records = []
    # split on newlines only: a caption may hold U+2028, which str.splitlines would cut at
    for number, line in enumerate(read_bytes(path).decode("utf-8").split("\n"), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON: {error}") from error
    return records


def read_annotations(folder: str | Path, shard: str) -> dict[str, dict[str, Any]]:
    """A stage's records for one shard, by sample key."""
    return {record["key"]: record for record in read_jsonl(annotation_path(folder, shard))}
