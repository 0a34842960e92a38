"""Where a stage command runs: the `local` runtime (a subprocess on the Airflow worker,
its output streamed line by line into the task log) or the `kubernetes` runtime (a pod on
the stage's node-pool preset, built by `fgclip.orchestration.kubernetes`).

The runtime only decides where: the command is always the dvc.yaml one (see pipeline.py).
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgclip.config import OrchestrationConfig
from fgclip.orchestration.pipeline import Project, StageSpec, group_label

log = logging.getLogger(__name__)

#: Lines of a failed command's output repeated in the error (the full output is in the log).
FAILURE_TAIL_LINES = 40
#: `fgclip` exit codes that a retry cannot fix: 2 is a user error (cli.ComponentError, or an
#: argparse usage error), 3 a failed QC gate (qc.GATE_FAILED_EXIT_CODE).
USER_ERROR_EXIT_CODES = frozenset({2, 3})


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
    raise StageFailed(f"{program!r} is not on PATH nor in {beside.parent}; install the project "
                      f"(pip install -e .) in the Airflow worker's environment", 127, retryable=False)


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


def run_command(argv: Sequence[str], *, cwd: str | Path, env: Mapping[str, str] | None = None,
                kill_grace_s: float = 10.0, logger: logging.Logger | None = None) -> CommandResult:
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
    process = subprocess.Popen(argv, cwd=cwd, env=dict(env) if env is not None else None, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        assert process.stdout is not None
        pending = b""
        while chunk := process.stdout.read1(1 << 16):
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
            + (" (a user error or a failed gate: not retried)" if returncode in USER_ERROR_EXIT_CODES else "")
            + ". Last output:\n" + "\n".join(tail),
            returncode, retryable=returncode not in USER_ERROR_EXIT_CODES)
    logger.info("finished in %.1f s: %s", seconds, shown)
    return CommandResult(list(argv), returncode, seconds)


def run_stage_locally(project: Project, stage: StageSpec, shards: Sequence[str] | None = None) -> dict[str, Any]:
    """Run one stage (or one shard group of a fanned-out stage) in the project folder."""
    argv = stage.command(list(shards) if shards else None)
    result = run_command(argv, cwd=project.root, env=command_env(project.settings),
                         kill_grace_s=project.settings.kill_grace_s)
    return {"stage": stage.name, **({"shards": list(shards)} if shards else {}), **result.as_dict(),
            "cmd": argv}


# --------------------------------------------------------------------- Airflow tasks

#: The key of the context entry that names a mapped task in the UI.
GROUP_LABEL_KEY = "shard_group"
#: A mapped pod's label that names its shard group (also its name in the UI).
GROUP_POD_LABEL = "fgclip.io/shard-group"


def _fail(error: StageFailed) -> BaseException:
    """Airflow retries an ordinary exception; an AirflowFailException fails at once."""
    if error.retryable:
        return error
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(str(error))


def task_defaults(settings: OrchestrationConfig) -> dict[str, Any]:
    from datetime import timedelta

    return {"retries": settings.retries, "retry_delay": timedelta(seconds=settings.retry_delay_s)}


def stage_task(project: Project, stage: StageSpec, groups: Any = None) -> Any:
    """The Airflow task of one dvc.yaml stage on the configured runtime; a fanned-out stage
    is mapped over `groups` (the XComArg of the shard groups), one task per group."""
    if stage.fan_out and groups is None:
        raise ValueError(f"stage {stage.name} is fanned out: pass the shard groups")
    if project.settings.runtime == "kubernetes":
        return _kubernetes_task(project, stage, groups if stage.fan_out else None)
    return _local_task(project, stage, groups if stage.fan_out else None)


def _local_task(project: Project, stage: StageSpec, groups: Any) -> Any:
    from airflow.sdk import get_current_context, task

    root = project.root
    doc = f"`{stage.cmd}`" + (" `--shards ...`: one task per shard group" if stage.fan_out else "")

    @task(task_id=stage.task_id, doc_md=doc, map_index_template="{{ " + GROUP_LABEL_KEY + " }}" if stage.fan_out else None,
          multiple_outputs=False, **task_defaults(project.settings))
    def run(shards: list[str] | None = None) -> dict[str, Any]:
        from fgclip.orchestration.pipeline import load_project

        if shards:
            get_current_context()[GROUP_LABEL_KEY] = group_label(shards)  # type: ignore[literal-required]
        current = load_project(root)  # the stage as dvc.yaml has it now, not as it was parsed
        try:
            return run_stage_locally(current, current.pipeline.stage(stage.name), shards)
        except StageFailed as error:
            raise _fail(error) from error

    return run.expand(shards=groups) if groups is not None else run()


# ---------------------------------------------------------------- kubernetes runtime
# Pod and TrainJob specs come from kubernetes.py (node-pool presets); it is imported only
# here, so the local runtime needs neither it nor a cluster.


def _form_keys(project: Project, stage: StageSpec) -> tuple[str, ...]:
    """The trigger-form keys this stage reads: they reach its pod as `--set` flags (pods read
    the cluster's params.yaml, not the workspace's)."""
    every = (*project.settings.data_form, *project.settings.train_form)
    return tuple(key for key in dict.fromkeys(every) if stage.reads_param(key))


def _form_flags(project: Project, stage: StageSpec) -> list[str]:
    from fgclip.orchestration.tasks import form_set_flags

    return form_set_flags(project, _form_keys(project, stage))


def _pod_kwargs(project: Project, stage: StageSpec, shards: Sequence[str] | None) -> dict[str, Any]:
    """Pod arguments for the stage command, split so that what Jinja must render (the
    program, its global options and the form's --set values) sits in `cmds`, and the
    component's own arguments (which a mapped task maps, and Airflow never renders mapped
    values) in `arguments`."""
    from fgclip.orchestration.kubernetes import pod_operator_kwargs

    argv = stage.command(list(shards) if shards else None)
    kwargs = pod_operator_kwargs(stage.base_name, argv, project.params.kubernetes)
    arguments, own = list(kwargs["arguments"]), argv[1:]
    if arguments[len(arguments) - len(own):] != own:
        raise ValueError(f"pod arguments {arguments} do not end with the command's own {own}")
    kwargs["cmds"] = [argv[0], *arguments[:len(arguments) - len(own)], *_form_flags(project, stage)]
    kwargs["arguments"] = own
    return kwargs


def _kubernetes_task(project: Project, stage: StageSpec, groups: Any) -> Any:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    defaults = task_defaults(project.settings)
    if stage.component == "train":
        return _trainjob_task(project, stage, defaults)
    if groups is None:
        return KubernetesPodOperator(task_id=stage.task_id, doc_md=f"`{stage.cmd}`", **defaults,
                                     **_pod_kwargs(project, stage, None))

    # What differs between two shard groups is mapped; the rest is shared by every pod.
    probe_a, probe_b = _pod_kwargs(project, stage, ["00000"]), _pod_kwargs(project, stage, ["99999"])
    varying = {name for name in probe_a if probe_a.get(name) != probe_b.get(name)} | {"labels"}
    shared = {name: value for name, value in probe_a.items() if name not in varying}

    def per_group(shards: list[str]) -> dict[str, Any]:
        kwargs = _pod_kwargs(project, stage, shards)
        mapped = {name: kwargs[name] for name in varying if name in kwargs}
        mapped["labels"] = {**(kwargs.get("labels") or {}), GROUP_POD_LABEL: group_label(shards)}
        return mapped

    return (KubernetesPodOperator.partial(task_id=stage.task_id, doc_md=f"`{stage.cmd}` `--shards ...`",
                                          map_index_template="{{ task.labels['" + GROUP_POD_LABEL + "'] }}",
                                          **defaults, **shared)
            .expand_kwargs(groups.map(per_group)))


#: A TrainJob is named per stage and DAG run (a retry of the run's task attaches to it).
TRAINJOB_NAME = "fgclip-{stage}-{{{{ dag_run.run_after.strftime('%Y%m%d-%H%M%S-%f') }}}}"


def _trainjob_task(project: Project, stage: StageSpec, defaults: dict[str, Any]) -> Any:
    from fgclip.orchestration.kubernetes import TrainJobOperator
    from fgclip.orchestration.tasks import NUM_NODES

    name = TRAINJOB_NAME.format(stage=stage.task_id.replace("_", "-"))
    argv = stage.command()
    return TrainJobOperator.for_command(task_id=stage.task_id, argv=[argv[0], *_form_flags(project, stage), *argv[1:]],
                                        settings=project.params.kubernetes, num_nodes=f"{{{{ params.{NUM_NODES} }}}}",
                                        name=name, doc_md=f"`{stage.cmd}` as a multi-node TrainJob", **defaults)
