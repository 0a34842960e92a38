"""Real servers on loopback for tests: an S3-compatible store (`rclone serve s3`, serving a
folder as buckets), an MLflow tracking server whose artifacts go to that store, an
OpenAI-compatible LLM server (llama.cpp's, through llama-cpp-python), a plain static web
server (a real server that is not an LLM endpoint) and a delaying proxy (a slow endpoint).

Each starts on a free 127.0.0.1 port, is waited for with a bound (its log is in the error
when it does not come up) and is stopped, then killed, when the `with` block ends.
"""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

S3_KEY, S3_SECRET = "fgclip-test-key", "fgclip-test-secret"
START_TIMEOUT_S = {"rclone": 30.0, "mlflow": 120.0, "llama_cpp": 120.0, "transformers": 180.0, "http": 30.0}
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def program(name: str) -> str:
    """A console tool of the test environment: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        # Every tool the tests start is pinned in requirements.lock: a missing one is a broken install.
        raise FileNotFoundError(f"`{name}` is not installed (pip install -r requirements.lock)")
    return found


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout_s: float, ok: set[int] | None) -> None:
    """Wait until `url` answers with a status in `ok` (None: any HTTP answer at all)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if ok is None or response.status in ok:
                    return
        except urllib.error.HTTPError as error:
            if ok is None or error.code in ok:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    root: Path  # bucket B is the folder root/B

    def env(self) -> dict[str, str]:
        """The standard AWS variables boto3, DVC and MLflow read."""
        return {
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )

    def bucket(self, name: str) -> str:
        """Create bucket `name` through the S3 API (rclone caches its folder listing, so a
        folder made behind its back shows up only minutes later)."""
        if not (self.root / name).is_dir():
            self.client().create_bucket(Bucket=name)
        return name


def s3_server_command(root: Path, port: int) -> list[str]:
    """rclone serving `root` as S3 on loopback with the test keys (its config beside `root`)."""
    return [
        program("rclone"),
        "serve",
        "s3",
        "--addr",
        f"127.0.0.1:{port}",
        "--auth-key",
        f"{S3_KEY},{S3_SECRET}",
        "--config",
        str(root.parent / "rclone.conf"),
        str(root),
    ]


def mlflow_server_command(workdir: Path, artifacts: str, port: int) -> list[str]:
    """An MLflow server on loopback, SQLite store in `workdir`, artifacts proxied to `artifacts`."""
    return [
        program("mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts,
    ]


@contextmanager
def s3_server(root: Path) -> Iterator[S3Server]:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root.parent / f"rclone-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            s3_server_command(root, port),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_http(endpoint + "/", process, log, START_TIMEOUT_S["rclone"], ok=None)  # 400 unsigned
        yield S3Server(endpoint, root)
    finally:
        _stop(process)


@contextmanager
def mlflow_server(workdir: Path, artifacts: str, env: dict[str, str]) -> Iterator[str]:
    """An MLflow server (SQLite store in `workdir`) proxying artifacts to `artifacts`
    (e.g. s3://bucket/prefix); yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / f"mlflow-{port}.log"
    server_env = {**os.environ, **env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            mlflow_server_command(workdir, artifacts, port),
            cwd=workdir,
            env=server_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url + "/health", process, log, START_TIMEOUT_S["mlflow"], ok={200})
        yield url
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """Stop a server that forks workers: its whole process group, SIGTERM then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    process.wait(timeout=STOP_TIMEOUT_S)


# ---------------------------------------------------------------- LLM endpoints


@dataclass
class ManagedServer:
    """A server subprocess on a fixed port that a test may stop and start again."""

    command: list[str]
    port: int
    log: Path
    ready_path: str
    timeout_s: float
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        _wait_http(self.url + self.ready_path, self.process, self.log, self.timeout_s, ok={200})

    def kill(self) -> None:
        """Gone at once, as a crashed or preempted server is (no graceful shutdown)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)

    def __enter__(self) -> ManagedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def llama_cpp_server(gguf: Path, workdir: Path, *, threads: int = 2, context: int = 2048) -> ManagedServer:
    """llama.cpp's OpenAI-compatible server (llama-cpp-python) serving a GGUF model; the
    model name it answers to is the file's path. Started and stopped by `with`."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return ManagedServer(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_threads",
            str(threads),
            "--n_ctx",
            str(context),
            "--verbose",
            "false",
        ],
        port,
        workdir / f"llama-cpp-{port}.log",
        "/v1/models",
        START_TIMEOUT_S["llama_cpp"],
    )


def transformers_server(model: Path, workdir: Path) -> ManagedServer:
    """`transformers serve` (OpenAI-compatible, images included for image-text-to-text
    models) with `model` (a local folder) preloaded; it answers to the folder's path."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return ManagedServer(
        [program("transformers"), "serve", str(model), "--host", "127.0.0.1", "--port", str(port)],
        port,
        workdir / f"transformers-{port}.log",
        "/health",
        START_TIMEOUT_S["transformers"],
    )


def static_web_server(root: Path) -> ManagedServer:
    """Python's own web server over a folder: answers POST /v1/chat/completions with an
    HTML error page, as a misconfigured base_url pointing at some other server would."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return ManagedServer(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
        port,
        root.parent / f"http-{port}.log",
        "/",
        START_TIMEOUT_S["http"],
    )


class _DelayingHandler(http.server.BaseHTTPRequestHandler):
    proxy: DelayingProxy

    def do_POST(self) -> None:  # noqa: N802 (the http.server API)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.proxy.next_delay())
        request = urllib.request.Request(
            self.proxy.upstream + self.path,
            data=body,
            method="POST",
            headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as answer:
                status, payload = answer.status, answer.read()
        except urllib.error.HTTPError as error:
            status, payload = error.code, error.read()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left: expected here
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


class DelayingProxy:
    """Forwards POSTs to `upstream` after a delay: `delays` in request order, then `then`."""

    def __init__(self, upstream: str, delays: list[float], then: float = 0.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.delays = list(delays)
        self.then = then
        self.requests = 0
        self.lock = threading.Lock()
        handler = type("Handler", (_DelayingHandler,), {"proxy": self})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def next_delay(self) -> float:
        with self.lock:
            self.requests += 1
            return self.delays.pop(0) if self.delays else self.then

    def __enter__(self) -> DelayingProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
