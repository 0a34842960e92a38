"""Running a stage command as a plain process: a subprocess in the project folder, its
output streamed line by line into the log, stopped with its whole process group.

Nothing here imports Airflow: the `local` runtime's tasks call it, and so do the control
steps that run `dvc` (and a person can, from a shell).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgclip.core.tracking import PARENT_RUN_ENV
from fgclip.errors import NOT_RETRYABLE
from fgclip.orchestration.config import OrchestrationConfig
from fgclip.orchestration.pipeline import Project, StageSpec

log = logging.getLogger(__name__)

#: Lines of a failed command's output repeated in the error (the full output is in the log).
FAILURE_TAIL_LINES = 40
#: The training component and its flag to continue from the latest checkpoint.
TRAIN_COMPONENT, RESUME_FLAG = "train", "--resume"


class StageFailed(RuntimeError):
    """A command exited non-zero; `retryable` is False when a rerun would fail the same way."""

    def __init__(self, message: str, returncode: int, retryable: bool) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.retryable = retryable


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"argv": self.argv, "returncode": self.returncode, "seconds": round(self.seconds, 3)}


def resolve_program(argv: Sequence[str]) -> list[str]:
    """argv with its program found on PATH, else beside this interpreter (the venv's bin:
    an Airflow worker started without the venv on PATH still finds `fgclip` and `dvc`)."""
    program = argv[0]
    if os.sep in program or shutil.which(program):
        return list(argv)
    beside = Path(sys.executable).parent / program
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside), *argv[1:]]
    raise StageFailed(
        f"{program!r} is not on PATH nor in {beside.parent}; install the project "
        f"(pip install -e .) in the Airflow worker's environment",
        127,
        retryable=False,
    )


def command_env(settings: OrchestrationConfig, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a stage command: the worker's, with the S3 defaults of the config
    filled in where the standard AWS variables are unset (credentials are never set here:
    they come from the worker's environment or a Secret), unbuffered output and sparse
    progress bars for the task log."""
    env = dict(os.environ if base is None else base)
    s3 = settings.s3
    defaults = {
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "AWS_DEFAULT_REGION": s3.region,
        "AWS_MAX_ATTEMPTS": str(s3.max_attempts),
        "AWS_RETRY_MODE": s3.retry_mode,
    }
    for name, value in defaults.items():
        if value is not None and not env.get(name):
            env[name] = value
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint and not env.get("MLFLOW_S3_ENDPOINT_URL"):
        env["MLFLOW_S3_ENDPOINT_URL"] = endpoint  # MLflow's own name for the same endpoint
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TQDM_MININTERVAL", str(settings.log_progress_every_s))
    return env


def absolute_tracking_uri(uri: str, home: Path) -> str:
    """A relative sqlite store (the embedded default) as the checkout's: every run workspace
    logs into the project's one store, not a store of its own."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix) :]).is_absolute():
        return prefix + str((home / uri[len(prefix) :]).resolve())
    return uri


def project_env(project: Project, parent_run_id: str | None = None) -> dict[str, str]:
    """command_env for a command in a (run) workspace: the checkout's MLflow store and DeepSpeed
    build folder (not new ones per run workspace) and the DAG run's parent MLflow run."""
    env = command_env(project.settings)
    home = project.home_root
    env["MLFLOW_TRACKING_URI"] = absolute_tracking_uri(
        env.get("MLFLOW_TRACKING_URI") or project.params.tracking.uri, home
    )
    extensions = Path(project.params.train.torch_extensions_dir)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(extensions if extensions.is_absolute() else home / extensions))
    if parent_run_id:
        env[PARENT_RUN_ENV] = parent_run_id
    return env


def _stop(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the command's process group, SIGKILL it after `grace_s`."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_command(
    argv: Sequence[str],
    *,
    cwd: str | Path,
    env: Mapping[str, str] | None = None,
    kill_grace_s: float = 10.0,
    logger: logging.Logger | None = None,
) -> CommandResult:
    """Run argv in `cwd`, logging every output line (progress-bar updates included) as it
    comes; raise StageFailed with the last lines when it exits non-zero.

    The command runs in its own process group, which is stopped when the task is killed
    (Airflow raises in this thread), so no orphan keeps writing into the workspace."""
    logger = logger or log
    argv = resolve_program(argv)
    shown = " ".join(argv)
    logger.info("running in %s: %s", cwd, shown)
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=FAILURE_TAIL_LINES)
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        pending = b""
        while chunk := process.stdout.read1(1 << 16):  # type: ignore[attr-defined]  # a BufferedReader
            # a progress bar redraws with '\r': each redraw becomes one log line
            *lines, pending = (pending + chunk).replace(b"\r", b"\n").split(b"\n")
            for raw in lines:
                if line := raw.decode("utf-8", "replace").rstrip():
                    tail.append(line)
                    logger.info("%s", line)
        if line := pending.decode("utf-8", "replace").rstrip():
            tail.append(line)
            logger.info("%s", line)
        returncode = process.wait()
    except BaseException:
        _stop(process, kill_grace_s)
        raise
    seconds = time.monotonic() - started
    if returncode != 0:
        raise StageFailed(
            f"{shown} exited with code {returncode} after {seconds:.1f} s"
            + (" (a user error or a failed gate: not retried)" if returncode in NOT_RETRYABLE else "")
            + ". Last output:\n"
            + "\n".join(tail),
            returncode,
            retryable=returncode not in NOT_RETRYABLE,
        )
    logger.info("finished in %.1f s: %s", seconds, shown)
    return CommandResult(list(argv), returncode, seconds)


#: `main(argv) -> exit code` of the `fgclip` command: the DAG files hand it in (the
#: orchestration layer sits below the CLI and cannot import it).
CommandMain = Callable[[list[str]], int]


def run_in_process(
    main: CommandMain,
    argv: Sequence[str],
    *,
    cwd: str | Path,
    env: Mapping[str, str],
    logger: logging.Logger | None = None,
) -> CommandResult:
    """Run an `fgclip` command in this process (a task's own, forked with the modules loaded
    already: no interpreter start, no imports), in `cwd` with `env`, both restored after."""
    logger = logger or log
    shown = " ".join(argv)
    logger.info("running in %s (in this process): %s", cwd, shown)
    saved_cwd, saved_env = os.getcwd(), dict(os.environ)
    started = time.monotonic()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    try:
        try:
            returncode = int(main(list(argv[1:])) or 0)
        except SystemExit as stop:  # argparse: a bad command line
            returncode = stop.code if isinstance(stop.code, int) else 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    seconds = time.monotonic() - started
    if returncode != 0:
        raise StageFailed(
            f"{shown} exited with code {returncode} after {seconds:.1f} s"
            + (" (a user error or a failed gate: not retried)" if returncode in NOT_RETRYABLE else "")
            + "; its output is in the lines above",
            returncode,
            retryable=returncode not in NOT_RETRYABLE,
        )
    logger.info("finished in %.1f s: %s", seconds, shown)
    return CommandResult(list(argv), returncode, seconds)


def run_stage_locally(
    project: Project,
    stage: StageSpec,
    shards: Sequence[str] | None = None,
    parent_run_id: str | None = None,
    main: CommandMain | None = None,
    retry: bool = False,
) -> dict[str, Any]:
    """Run one stage (or one shard group of a fanned-out stage) in the (run) workspace: as a
    subprocess, or with `main` in this process. `retry`: an Airflow retry, where a training
    continues from the last checkpoint its failed try left (`--resume`; without it the
    trainer refuses a folder that holds checkpoints)."""
    argv = stage.command(list(shards) if shards else None)
    if retry and stage.component == TRAIN_COMPONENT and RESUME_FLAG not in argv:
        argv.append(RESUME_FLAG)
    env = project_env(project, parent_run_id)
    if main is not None:
        result = run_in_process(main, argv, cwd=project.root, env=env)
    else:
        result = run_command(argv, cwd=project.root, env=env, kill_grace_s=project.settings.kill_grace_s)
    return {"stage": stage.name, **({"shards": list(shards)} if shards else {}), **result.as_dict(), "cmd": argv}
