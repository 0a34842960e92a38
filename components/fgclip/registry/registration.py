"""Registration in MLflow: log the model, add a version, apply the gate, move the aliases."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image

from fgclip.core.config import TrackingConfig
from fgclip.core.tracking import PARENT_RUN_ENV, PARENT_RUN_TAG, tracking_uri
from fgclip.registry.config import RegisterConfig
from fgclip.registry.gate import RegisterError, check_gated_metrics, decide_promotion, load_eval_metrics, local_file
from fgclip.registry.pyfunc import (
    MODEL_ARTIFACT,
    FGCLIPPyfuncModel,
    check_model_dir,
    embedder_signature,
    model_requirements,
)

log = logging.getLogger(__name__)

#: The fgclip package, logged with the model as code so it loads where fgclip is not installed.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: The trainer's summary in the model folder; it names the training's MLflow run.
TRAINING_SUMMARY = "training.json"
TRAINING_RUN_TAG = "training.run_id"


def champion_version(client: Any, name: str, alias: str) -> Any | None:
    """The model version the alias points at, or None (no such model or alias yet).

    Read through the registered model's alias map: a missing alias is an
    INVALID_PARAMETER_VALUE error from `get_model_version_by_alias`, the same code as a
    malformed request, so that call cannot tell "no champion yet" from a real failure.
    """
    try:
        aliases = client.get_registered_model(name).aliases or {}
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = aliases.get(alias)
    return client.get_model_version(name, str(version)) if version is not None else None


def version_metrics(client: Any, version: Any, tag_prefix: str) -> dict[str, float]:
    """A version's eval metrics: its `metric.*` tags, else the metrics of its run."""
    tagged = {
        key[len(tag_prefix) :]: float(value)
        for key, value in (version.tags or {}).items()
        if key.startswith(tag_prefix)
    }
    if tagged or not version.run_id:
        return tagged
    return dict(client.get_run(version.run_id).data.metrics)


@dataclass(frozen=True)
class Registration:
    """What `register_model` did; `as_dict()` is the decision file."""

    name: str
    version: str
    model_uri: str
    run_id: str
    decision: str
    promoted: bool
    gate_passed: bool
    approval_required: bool
    training_run_id: str | None
    reason: str
    champion_before: str | None
    champion_after: str | None
    gate: dict[str, float]
    lower_is_better: list[str]
    comparisons: list[dict[str, Any]]
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    tracking_uri: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def register_model(
    model_dir: str | Path,
    metrics_path: str | Path,
    *,
    config: RegisterConfig,
    tracking: TrackingConfig,
    name: str | None = None,
    run_id: str | None = None,
) -> Registration:
    """Log, register, gate and alias one model; see the module docstring."""
    if not tracking.enabled:
        raise RegisterError("registration needs MLflow: tracking.enabled is false")
    folder = local_file(model_dir).resolve()
    projection_dim = check_model_dir(folder)
    metrics_file = local_file(metrics_path)
    metrics = load_eval_metrics(metrics_file)
    check_gated_metrics(metrics, config.gate)
    name = name or config.model_name
    uri = tracking_uri(tracking)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)

    training_run = training_run_id(folder)
    with _open_run(config, name, run_id) as run:
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(metrics_file), "eval")
        if training_run and training_run != run.info.run_id:
            # the model belongs to the run that trained it: its version's run is that run
            with _resume_run(training_run):
                version = _log_and_register(folder, projection_dim, config, name)
            mlflow.set_tag(TRAINING_RUN_TAG, training_run)
        else:
            version = _log_and_register(folder, projection_dim, config, name)
        for key, value in metrics.items():
            client.set_model_version_tag(name, version, f"{config.metric_tag_prefix}{key}", str(value))

        # The champion is read only now, right before the alias may move, so a
        # registration that finished meanwhile is the one this model is compared with.
        champion = champion_version(client, name, config.champion_alias)
        champion_metrics = version_metrics(client, champion, config.metric_tag_prefix) if champion else None
        decision = decide_promotion(metrics, champion_metrics, config.gate, config.lower_is_better)
        champion_before = str(champion.version) if champion else None
        moves = decision.promoted and not config.require_approval
        result = Registration(
            name=name,
            version=version,
            model_uri=f"models:/{name}/{version}",
            run_id=run.info.run_id,
            decision=decision.decision,
            promoted=moves,
            gate_passed=decision.promoted,
            approval_required=config.require_approval,
            training_run_id=training_run,
            reason=decision.reason + ("; waiting for approval" if decision.promoted and not moves else ""),
            champion_before=champion_before,
            champion_after=version if moves else champion_before,
            gate=dict(config.gate),
            lower_is_better=list(config.lower_is_better),
            comparisons=[asdict(c) for c in decision.comparisons],
            challenger_metrics=metrics,
            champion_metrics=champion_metrics,
            tracking_uri=uri,
        )
        for key, tag in _gate_tags(result).items():
            client.set_model_version_tag(name, version, key, tag)
        client.set_registered_model_alias(name, config.challenger_alias, version)
        if moves:
            client.set_registered_model_alias(name, config.champion_alias, version)
        mlflow.log_dict(result.as_dict(), "gate.json")
        mlflow.set_tags({"register.model": name, "register.version": version, "register.decision": decision.decision})
    log.info("%s version %s: %s (%s)", name, version, decision.decision, decision.reason)
    return result


def _open_run(config: RegisterConfig, name: str, run_id: str | None) -> Any:
    """A new run in the register experiment (nested under the DAG run's run when an
    orchestrator names one), or the given existing run."""
    tags: dict[str, str] = {}
    if run_id is None:
        parent = os.environ.get(PARENT_RUN_ENV)
        if parent:
            mlflow.set_experiment(experiment_id=MlflowClient().get_run(parent).info.experiment_id)
            tags[PARENT_RUN_TAG] = parent
        else:
            mlflow.set_experiment(config.experiment)
    try:
        return mlflow.start_run(run_id=run_id, run_name=None if run_id else f"register-{name}", tags=tags or None)
    except MlflowException as error:
        raise RegisterError(f"cannot open MLflow run {run_id!r}: {error.message}") from error


def training_run_id(folder: Path) -> str | None:
    """The MLflow run that trained the model in `folder` (the trainer's summary names it)."""
    summary = folder / TRAINING_SUMMARY
    if not summary.is_file():
        return None
    return json.loads(summary.read_text()).get("mlflow_run_id") or None


@contextmanager
def _resume_run(run_id: str) -> Iterator[Any]:
    """The training run, reopened beside the registration's own (in its own experiment: MLflow
    reopens a run only from the experiment that holds it)."""
    try:
        mlflow.set_experiment(experiment_id=MlflowClient().get_run(run_id).info.experiment_id)
        run = mlflow.start_run(run_id=run_id, nested=True)
    except MlflowException as error:
        raise RegisterError(f"cannot reopen the training run {run_id}: {error.message}") from error
    with run:
        yield run


def model_files(folder: Path, into: Path) -> Path:
    """The Hugging Face model of `folder` alone: its top-level files (config, weights,
    tokenizer, image processor, the training summary), never the checkpoints folder with its
    optimiser states."""
    into.mkdir(parents=True, exist_ok=True)
    for item in sorted(folder.iterdir()):
        if item.is_file() and not item.name.startswith("."):
            shutil.copy2(item, into / item.name)
    return into


def input_example() -> pd.DataFrame:
    """One text and one image row, the shapes the logged model takes."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(buffer, format="PNG")
    return pd.DataFrame({"text": ["a photo of a red circle", None], "image": [None, buffer.getvalue()]})


def _log_and_register(folder: Path, projection_dim: int, config: RegisterConfig, name: str) -> str:
    """Log the folder's Hugging Face model as a pyfunc model in the active run and register
    it; its version."""
    with tempfile.TemporaryDirectory(prefix="fgclip-model-") as staging:
        return _log_folder(model_files(folder, Path(staging) / MODEL_ARTIFACT), projection_dim, config, name)


def _log_folder(folder: Path, projection_dim: int, config: RegisterConfig, name: str) -> str:
    info = mlflow.pyfunc.log_model(
        name=config.artifact_name,
        python_model=FGCLIPPyfuncModel(),
        artifacts={MODEL_ARTIFACT: str(folder)},
        input_example=input_example(),
        # The wrapper, the eval adapter and FGCLIPModel live in this package: ship it with
        # the model so it loads where fgclip is not installed.
        code_paths=[str(PACKAGE_DIR)],
        pip_requirements=model_requirements(),
        signature=embedder_signature(projection_dim),
        model_config={"batch_size": config.predict_batch_size, "device": config.predict_device},
        registered_model_name=name,
    )
    return str(info.registered_model_version)


def _gate_tags(result: Registration) -> dict[str, str]:
    """The decision, its reason, the rule and the champion's metrics as version tags
    (the challenger's own metrics are its `metric.*` tags)."""
    tags = {
        "gate.decision": result.decision,
        "gate.promoted": str(result.promoted).lower(),
        "gate.reason": result.reason,
        "gate.rule": json.dumps({"gate": result.gate, "lower_is_better": result.lower_is_better}),
        "gate.champion_version": result.champion_before or "",
    }
    tags.update({f"gate.champion.{key}": str(value) for key, value in (result.champion_metrics or {}).items()})
    return tags
