"""Storage paths as URLs. A plain path or file:// URL is a local folder (the default);
s3://bucket/key is an object in any S3-compatible store (AWS, MinIO, SeaweedFS, Ceph...)
behind the same few functions: write, read, exists, list, copy, sha256, and `open_read`,
`join`, `remove`, `object_pin` for code that streams or walks folders.

Whole small objects (records, manifests, reports) go through boto3: one PUT or GET with
botocore's retries. Streams (image shards read in place, URL lists, parquet sidecars) and
file handles go through fsspec (s3fs for s3://, configured from the same settings), the
filesystem layer DVC, pyarrow and img2dataset use too, so a shard is read with ranged
requests as it is consumed and never copied whole into the workspace.

Every write is atomic: a local file goes to a temporary name beside the target and is
renamed into place; an S3 object is written with one PUT, which S3 makes visible all at
once (readers see the old object or the new one, never a part), so a reader (or a resumed
run) never sees half a file. Files too large for one PUT go up in parts through
`copy_file`, which S3 also publishes only when the upload completes.

S3 settings come from the standard AWS environment at run time (AWS_ENDPOINT_URL[_S3],
AWS_REGION, AWS_MAX_ATTEMPTS, AWS_RETRY_MODE, and the credentials AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY), over the defaults of `orchestration.s3` in the typed config.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import fsspec

from fgclip.core.config import S3Config

S3_SCHEME = "s3"
#: The largest object S3's CopyObject copies in one request (the protocol's limit).
S3_SINGLE_COPY_LIMIT = 5 << 30
_CHUNK = 1 << 20


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def local_path(url: str | Path) -> Path:
    """The local path of a plain path or file:// URL; other schemes are not local."""
    text = str(url)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme == "file" else text)
    raise ValueError(f"{text!r} is not a local path; scheme {parsed.scheme!r} needs an object-store backend")


def is_s3(url: str | Path) -> bool:
    return urlparse(str(url)).scheme == S3_SCHEME


def join(base: str | Path, *parts: str) -> str:
    """`base`/part/...: a local path stays a local path, an s3:// URL stays a URL."""
    if is_s3(base):
        return "/".join([str(base).rstrip("/"), *(part.strip("/") for part in parts if part)])
    return str(Path(local_path(base), *parts))


def path_in(folder: str | Path, *parts: str) -> str | Path:
    """`join`, but a Path for a local folder (callers that only ever see local folders
    keep Path's methods)."""
    return join(folder, *parts) if is_s3(folder) else Path(local_path(folder), *parts)


def name_of(url: str | Path) -> str:
    """The last component of a local path or URL (`00000.tar`)."""
    return str(url).rstrip("/").rsplit("/", 1)[-1]


def filesystem(url: str | Path) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for a local path or an s3:// URL."""
    if not is_s3(url):
        return fsspec.filesystem("file"), str(local_path(url))
    settings = s3_settings()
    fs = fsspec.filesystem(
        "s3",
        endpoint_url=settings.endpoint_url,
        use_listings_cache=False,  # other processes write the same prefixes; never trust a stale listing
        client_kwargs={"region_name": settings.region},
        config_kwargs={
            "retries": {"total_max_attempts": settings.max_attempts, "mode": settings.retry_mode},
            "connect_timeout": settings.connect_timeout_s,
            "read_timeout": settings.read_timeout_s,
            "s3": {"addressing_style": settings.addressing_style},
        },
    )
    location = S3Location.parse(url)
    return fs, f"{location.bucket}/{location.key}"


@contextmanager
def open_read(url: str | Path) -> Iterator[IO[bytes]]:
    """A binary, seekable read handle on a local file or an S3 object (ranged GETs as it is
    read); a missing one raises FileNotFoundError."""
    if not is_s3(url):
        with open(local_path(url), "rb") as handle:
            yield handle
        return
    fs, path = filesystem(url)
    try:
        handle = fs.open(path, "rb")
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{url} does not exist") from error
    with handle:
        yield handle


def remove(url: str | Path) -> None:
    """Delete a file or object if it is there."""
    if not is_s3(url):
        local_path(url).unlink(missing_ok=True)
        return
    location = S3Location.parse(url)
    with _s3_errors(location):
        s3_client().delete_object(Bucket=location.bucket, Key=location.key)


def object_pin(url: str | Path, *, hash_local: bool = True) -> dict[str, Any]:
    """What identifies the content of one file: its size and, for S3, the object's ETag
    (the store's content tag: checking it costs one HEAD, not a read); for a local file its
    SHA-256 (or only the size and mtime with hash_local=False)."""
    if is_s3(url):
        location = S3Location.parse(url)
        with _s3_errors(location):
            head = s3_client().head_object(Bucket=location.bucket, Key=location.key)
        return {"size": int(head["ContentLength"]), "etag": str(head.get("ETag", "")).strip('"')}
    path = local_path(url)
    stat = path.stat()
    if hash_local:
        return {"size": stat.st_size, "sha256": sha256_file(path)}
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@contextmanager
def atomic_local_file(target: Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """A handle on a temporary file beside `target`, renamed onto it only when the block
    ends without an error (flushed and fsynced first); on an error the temporary goes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are shared like any file
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    if is_s3(path):
        location = S3Location.parse(path)
        with _s3_errors(location):
            s3_client().put_object(Bucket=location.bucket, Key=location.key, Body=data)
        return
    with atomic_local_file(local_path(path)) as handle:
        handle.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def sha256_file(path: str | Path, chunk_size: int = _CHUNK) -> str:
    digest = hashlib.sha256()
    if is_s3(path):
        for chunk in _s3_chunks(S3Location.parse(path), chunk_size):
            digest.update(chunk)
        return digest.hexdigest()
    with open(local_path(path), "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: str | Path) -> bytes:
    if is_s3(path):
        return b"".join(_s3_chunks(S3Location.parse(path), _CHUNK))
    return local_path(path).read_bytes()


def read_text(path: str | Path) -> str:
    return read_bytes(path).decode("utf-8")


def exists(path: str | Path) -> bool:
    """Whether a file (local) or an object (S3) is there; folders and prefixes are not files."""
    if not is_s3(path):
        return local_path(path).is_file()
    location = S3Location.parse(path)
    try:
        with _s3_errors(location):
            s3_client().head_object(Bucket=location.bucket, Key=location.key)
    except FileNotFoundError:
        return False
    return True


def list_files(folder: str | Path, suffix: str = "") -> list[str]:
    """Names (relative to `folder`, '/'-separated, sorted) of every file below it that ends
    with `suffix`. An absent folder or prefix has none; a missing bucket is an error."""
    if not is_s3(folder):
        root = local_path(folder)
        if not root.is_dir():
            return []
        return sorted(p.relative_to(root).as_posix() for p in root.rglob(f"*{suffix}") if p.is_file())
    location = S3Location.parse(folder)
    prefix = location.key.rstrip("/") + "/" if location.key else ""
    names: list[str] = []
    with _s3_errors(location):
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix)
        for page in pages:
            names.extend(
                item["Key"][len(prefix) :]
                for item in page.get("Contents", [])
                if item["Key"].endswith(suffix) and not item["Key"].endswith("/")
            )
    return sorted(names)


def copy_file(source: str | Path, target: str | Path) -> None:
    """Copy one file between any two of local / S3; the target appears whole or not at all.

    Large files stream in parts (boto3's managed transfer): no copy is held in memory."""
    if not is_s3(source) and not is_s3(target):
        _copy_local(local_path(source), local_path(target))
        return
    from boto3.s3.transfer import TransferConfig

    settings = s3_settings()
    transfer = TransferConfig(
        multipart_threshold=settings.multipart_threshold_mb * _CHUNK,
        multipart_chunksize=settings.multipart_threshold_mb * _CHUNK,
    )
    client = s3_client()
    if is_s3(source) and is_s3(target):
        src, dst = S3Location.parse(source), S3Location.parse(target)
        with _s3_errors(src):
            size = client.head_object(Bucket=src.bucket, Key=src.key)["ContentLength"]
            if size <= S3_SINGLE_COPY_LIMIT:  # one server-side request; every S3 server has it
                client.copy_object(CopySource={"Bucket": src.bucket, "Key": src.key}, Bucket=dst.bucket, Key=dst.key)
            else:
                client.copy({"Bucket": src.bucket, "Key": src.key}, dst.bucket, dst.key, Config=transfer)
    elif is_s3(target):
        dst = S3Location.parse(target)
        with _s3_errors(dst):
            client.upload_file(str(local_path(source)), dst.bucket, dst.key, Config=transfer)
    else:
        src, local = S3Location.parse(source), local_path(target)
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".tmp", dir=local.parent)
        os.close(fd)
        try:
            with _s3_errors(src):
                client.download_file(src.bucket, src.key, tmp, Config=transfer)
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, local)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _copy_local(source: Path, target: Path) -> None:
    with atomic_local_file(target) as out, open(source, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            out.write(chunk)


# ------------------------------------------------------------------------------- S3


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str | Path) -> S3Location:
        parsed = urlparse(str(url))
        if parsed.scheme != S3_SCHEME or not parsed.netloc:
            raise ValueError(f"{str(url)!r} is not an s3://bucket/key URL")
        return cls(parsed.netloc, parsed.path.lstrip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def s3_settings(base: S3Config | None = None) -> S3Config:
    """`base` (default: the config's defaults) with the standard AWS variables applied."""
    base = base or S3Config()
    env = os.environ
    overrides: dict[str, Any] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        overrides["endpoint_url"] = endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        overrides["region"] = region
    if env.get("AWS_MAX_ATTEMPTS"):
        overrides["max_attempts"] = int(env["AWS_MAX_ATTEMPTS"])
    if env.get("AWS_RETRY_MODE"):
        overrides["retry_mode"] = env["AWS_RETRY_MODE"]
    return S3Config.model_validate({**base.model_dump(), **overrides})


_CLIENTS: dict[tuple[Any, ...], Any] = {}


def s3_client(settings: S3Config | None = None) -> Any:
    """A boto3 S3 client for `settings` (default: `s3_settings()`), with retries and
    timeouts from them; one client per settings and credentials (clients are thread-safe)."""
    import boto3
    from botocore.config import Config

    settings = settings or s3_settings()
    # the credentials are part of the key so a rotated secret gets a new client
    key = (
        settings,
        os.environ.get("AWS_ACCESS_KEY_ID"),
        os.environ.get("AWS_SECRET_ACCESS_KEY"),
        os.environ.get("AWS_SESSION_TOKEN"),
        os.environ.get("AWS_PROFILE"),
    )
    if key not in _CLIENTS:
        config = Config(
            region_name=settings.region,
            retries={"total_max_attempts": settings.max_attempts, "mode": settings.retry_mode},
            connect_timeout=settings.connect_timeout_s,
            read_timeout=settings.read_timeout_s,
            s3={"addressing_style": settings.addressing_style},
        )
        _CLIENTS[key] = boto3.session.Session().client("s3", endpoint_url=settings.endpoint_url, config=config)
    return _CLIENTS[key]


class StorageError(OSError):
    """An object-store request that failed for a reason other than a missing object."""


@contextmanager
def _s3_errors(location: S3Location) -> Iterator[None]:
    """Map botocore errors to what local files raise: a missing object or bucket is a
    FileNotFoundError, missing credentials a StorageError that says what to set."""
    from botocore.exceptions import ClientError, NoCredentialsError

    try:
        yield
    except NoCredentialsError as error:
        raise StorageError(
            f"{location}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        ) from error
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
            raise FileNotFoundError(f"{location} does not exist ({code})") from error
        raise


def _s3_chunks(location: S3Location, chunk_size: int) -> Iterator[bytes]:
    with _s3_errors(location):
        body = s3_client().get_object(Bucket=location.bucket, Key=location.key)["Body"]
    try:
        while chunk := body.read(chunk_size):
            yield chunk
    finally:
        body.close()
