"""fgclip.core.storage on s3:// URLs against a real S3 server on loopback (`rclone serve s3`),
plus botocore's retries against a deliberately flaky endpoint."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fgclip.core import storage
from tests.support.servers import S3Server, free_port, s3_server


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3") / "root") as running:
        yield running


@pytest.fixture
def bucket(server: S3Server, monkeypatch, request) -> str:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    name = ("t-" + request.node.name.replace("_", "-").lower())[:40].rstrip("-")
    return f"s3://{server.bucket(name)}"


def test_write_read_exists_and_list(bucket: str, server: S3Server) -> None:
    storage.write_text_atomic(f"{bucket}/shards/00000.jsonl", '{"key": "a"}\n')
    storage.write_bytes_atomic(f"{bucket}/shards/00001.jsonl", b"")
    storage.write_bytes_atomic(f"{bucket}/shards/sub/00002.tar", b"\x00" * 10)

    assert storage.read_text(f"{bucket}/shards/00000.jsonl") == '{"key": "a"}\n'
    assert storage.read_bytes(f"{bucket}/shards/00001.jsonl") == b""
    assert storage.exists(f"{bucket}/shards/00000.jsonl")
    assert not storage.exists(f"{bucket}/shards/00009.jsonl")
    assert not storage.exists(f"{bucket}/shards")  # a prefix is not a file
    assert storage.list_files(f"{bucket}/shards") == ["00000.jsonl", "00001.jsonl", "sub/00002.tar"]
    assert storage.list_files(f"{bucket}/shards/", suffix=".jsonl") == ["00000.jsonl", "00001.jsonl"]
    assert storage.list_files(f"{bucket}/nothing-here") == []
    # the server really holds the object (rclone serves bucket B as the folder root/B)
    name = bucket.removeprefix("s3://")
    assert (server.root / name / "shards" / "00000.jsonl").read_text() == '{"key": "a"}\n'


def test_overwrite_replaces_whole_object_and_leaves_no_temporaries(bucket: str) -> None:
    target = f"{bucket}/report.json"
    storage.write_text_atomic(target, "old" * 1000)
    storage.write_text_atomic(target, "new")
    assert storage.read_text(target) == "new"
    assert storage.list_files(bucket) == ["report.json"]


def test_missing_objects_and_buckets_read_like_missing_files(bucket: str) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.read_bytes(f"{bucket}/absent.json")
    with pytest.raises(FileNotFoundError, match="NoSuchBucket"):
        storage.read_bytes("s3://no-such-bucket-here/x.json")
    assert not storage.exists("s3://no-such-bucket-here/x.json")


def test_copy_file_between_local_and_s3_streams_in_parts(bucket: str, tmp_path: Path, monkeypatch) -> None:
    from fgclip.core.config import S3Config

    small_parts = S3Config(multipart_threshold_mb=5)  # the smallest part S3 allows
    from_env = storage.s3_settings
    monkeypatch.setattr(storage, "s3_settings", lambda base=None: from_env(base or small_parts))
    payload = os.urandom((small_parts.multipart_threshold_mb + 1) << 20)  # above the threshold: multipart
    source = tmp_path / "big.tar"
    source.write_bytes(payload)
    storage.copy_file(source, f"{bucket}/big.tar")
    storage.copy_file(f"{bucket}/big.tar", f"{bucket}/copy/big.tar")
    storage.copy_file(f"{bucket}/copy/big.tar", tmp_path / "back" / "big.tar")
    assert (tmp_path / "back" / "big.tar").read_bytes() == payload
    assert storage.sha256_file(f"{bucket}/copy/big.tar") == storage.sha256_bytes(payload)
    assert not [p for p in (tmp_path / "back").iterdir() if p.name != "big.tar"], "a temporary file was left behind"


def test_local_paths_keep_the_local_fast_path(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.txt"
    storage.write_text_atomic(target, "x")
    storage.copy_file(target, tmp_path / "c.txt")
    assert storage.read_text(f"file://{tmp_path / 'c.txt'}") == "x"
    assert storage.exists(target) and not storage.exists(tmp_path / "a")
    assert storage.list_files(tmp_path) == ["a/b.txt", "c.txt"]
    with pytest.raises(ValueError, match="not a local path"):
        storage.local_path("s3://bucket/key")


def test_settings_come_from_the_standard_aws_variables(monkeypatch) -> None:
    from fgclip.core.config import S3Config

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    settings = storage.s3_settings(S3Config(read_timeout_s=5.0))
    assert (
        settings.endpoint_url,
        settings.max_attempts,
        settings.retry_mode,
        settings.region,
        settings.read_timeout_s,
    ) == ("http://127.0.0.1:9", 7, "adaptive", "eu-west-3", 5.0)
    client = storage.s3_client(settings)
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.config.retries == {"total_max_attempts": 7, "mode": "adaptive"}


def test_no_credentials_is_a_clear_error(monkeypatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(storage.StorageError, match="AWS_ACCESS_KEY_ID"):
        storage.write_text_atomic("s3://bucket/x.txt", "x")


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers the first `failures` requests with 503 SlowDown, then accepts PUTs."""

    protocol_version = "HTTP/1.1"  # answers botocore's `Expect: 100-continue` at once
    failures = 0
    seen = 0

    def do_PUT(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen += 1
        if type(self).seen <= type(self).failures:
            body = b"<Error><Code>SlowDown</Code><Message>try again</Message></Error>"
            self.send_response(503)
        else:
            body = b""
            self.send_response(200)
            self.send_header("ETag", '"0"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def flaky(monkeypatch) -> Iterator[type[_Flaky]]:
    handler = type("Flaky", (_Flaky,), {"failures": 0, "seen": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_throttled_write_is_retried_until_it_succeeds(flaky, monkeypatch) -> None:
    flaky.failures = 1
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    storage.write_text_atomic("s3://bucket/x.txt", "x")
    assert flaky.seen == 2


def test_retries_stop_after_max_attempts(flaky, monkeypatch) -> None:
    from botocore.exceptions import ClientError

    flaky.failures = 100
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    with pytest.raises(ClientError, match="SlowDown"):
        storage.write_text_atomic("s3://bucket/x.txt", "x")
    assert flaky.seen == 2
