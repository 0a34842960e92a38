"""Real servers on loopback that the fault rehearsal stops and starts again on the same port
and the same data: an S3 server (`rclone serve s3` over a folder) and an MLflow tracking
server (SQLite store, artifacts on that S3 server)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import (
    S3_KEY,
    S3_SECRET,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    _wait_http,
    free_port,
    mlflow_server_command,
    s3_server_command,
)


@dataclass
class RestartableServer:
    """A server process on a fixed 127.0.0.1 port, in its own process group."""

    name: str
    command: list[str]
    port: int
    log: Path
    ready_path: str
    ready_codes: set[int] | None
    start_timeout_s: float
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    outages: list[dict[str, float]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _wait_http(self.url + self.ready_path, self.process, self.log, self.start_timeout_s, ok=self.ready_codes)

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM to the whole process group (servers fork workers), SIGKILL if it lingers;
        `kill`: SIGKILL at once, as a crashed server or a lost machine goes."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig in (signal.SIGKILL,) if kill else (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
                break
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> RestartableServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def outage(servers: list[RestartableServer], seconds: float) -> dict[str, float]:
    """Kill every server (no graceful shutdown: requests in flight are cut), wait `seconds`,
    start them again on the same ports and data (S3 first: MLflow stores artifacts there);
    returns when it began and how long each was unreachable (killed to answering again)."""
    began = time.time()
    for server in servers:
        server.stop(kill=True)
    stopped = time.monotonic()
    time.sleep(seconds)
    downtime = {}
    for server in servers:
        server.start()
        downtime[server.name] = round(time.monotonic() - stopped, 1)
    record = {
        "began": began,
        "ended": time.time(),
        "stopped_s": seconds,
        **{f"{name}_down_s": value for name, value in downtime.items()},
    }
    for server in servers:
        server.outages.append(record)
    return record


def s3_server(root: Path) -> RestartableServer:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return RestartableServer(
        "s3",
        s3_server_command(root, port),
        port,
        root.parent / f"rclone-{port}.log",
        "/",
        None,
        START_TIMEOUT_S["rclone"],
    )


def s3_env(server: RestartableServer, max_attempts: int = 10) -> dict[str, str]:
    """What boto3, DVC and MLflow read to reach the S3 server (retries: botocore standard mode)."""
    return {
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_ENDPOINT_URL": server.url,
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_S3_ENDPOINT_URL": server.url,
        "AWS_MAX_ATTEMPTS": str(max_attempts),
        "AWS_RETRY_MODE": "standard",
    }


def mlflow_server(workdir: Path, artifacts: str, env: dict[str, str]) -> RestartableServer:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return RestartableServer(
        "mlflow",
        mlflow_server_command(workdir, artifacts, port),
        port,
        workdir / f"mlflow-{port}.log",
        "/health",
        {200},
        START_TIMEOUT_S["mlflow"],
        env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        cwd=workdir,
    )
