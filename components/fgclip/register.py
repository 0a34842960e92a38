"""`fgclip register`: log a trained model to MLflow, version it, and gate its promotion.

Every call adds a new version of the registered model (versions are never deleted or
overwritten) and points the `challenger` alias at it. The `champion` alias moves to the
new version only through the promotion gate: every gated eval metric must improve on the
current champion's by at least its margin (params `registry.gate`; a margin of 0 means
"no worse", so an equally good retrain is promoted). The first model
ever registered becomes champion outright. The decision, its reason and both metric sets
are stored as model-version tags, as `gate.json` on the MLflow run, and in a local JSON
file for DVC. Aliases, not stages: MLflow stages are deprecated.

The model is logged as an MLflow pyfunc model, not with `mlflow.transformers`: that
flavour reloads through `transformers` pipelines and Auto classes, which do not know our
`fgclip` model type, no pipeline task returns embeddings of long captions, and with mlflow
3.17 offline its save_model queries the Hugging Face hub (retrying for half a minute)
and then fails importing torchvision, which the pinned CPU torch cannot have.
The pyfunc wrapper (:class:`FGCLIPPyfuncModel`) carries the Hugging Face folder as an
artifact (and this package as code, so it loads where fgclip is not installed), builds the
eval adapter on first use, and embeds texts and images: `mlflow.pyfunc.load_model(
"models:/NAME@champion")` gives an embedder (`mlflow models serve` uses the same loader).

Core: :func:`load_eval_metrics`, :func:`decide_promotion` (pure), :func:`register_model`.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from fgclip.config import Params, RegisterConfig, TrackingConfig
from fgclip.storage import local_path, write_text_atomic
from fgclip.tracking import flatten, tracking_uri

log = logging.getLogger(__name__)

HELP = "register a trained model in MLflow and move the champion alias through the promotion gate"

#: Key of the Hugging Face model folder among the pyfunc model's artifacts.
MODEL_ARTIFACT = "fgclip_model"
#: Packages the logged model needs at load time (pinned to the versions installed here).
MODEL_REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "pillow", "pandas", "numpy",
                      "pydantic", "pyyaml", "pyarrow", "jsonschema", "tqdm")

DECISION_FIRST = "first model"
DECISION_PROMOTED = "promoted"
DECISION_REJECTED = "rejected"


class RegisterError(Exception):
    """Bad input to the registration (missing model folder, metrics, gated metric...)."""


# ----------------------------------------------------------------------------- metrics


def _local(path: str | Path) -> Path:
    try:
        return local_path(path)
    except ValueError as error:  # s3:// and friends: MLflow logs from a local copy
        raise RegisterError(f"{error}; download it first") from error


def metric_name(name: str) -> str:
    """MLflow metric and tag keys cannot hold '@': recall@1 -> recall_at_1."""
    return name.replace("@", "_at_")


def load_eval_metrics(path: str | Path) -> dict[str, float]:
    """The numeric metrics of an eval metrics.json, flattened with '.' (nested sections).

    Non-numeric entries (names, notes) are left out; booleans are not metrics.
    """
    file = _local(path)
    if not file.is_file():
        raise RegisterError(f"metrics file {file} does not exist")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise RegisterError(f"metrics file {file} is not valid JSON: {error}") from error
    if not isinstance(data, Mapping):
        raise RegisterError(f"metrics file {file} must hold a JSON object, not {type(data).__name__}")
    metrics = {
        metric_name(key): float(value)
        for key, value in flatten("", data).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    bad = sorted(key for key, value in metrics.items() if not math.isfinite(value))
    if bad:
        raise RegisterError(f"metrics file {file} has non-finite values for {bad}")
    return metrics


# -------------------------------------------------------------------------------- gate


@dataclass(frozen=True)
class Comparison:
    """One gated metric: challenger vs champion, improvement and the margin it needed."""

    metric: str
    challenger: float
    champion: float | None
    improvement: float | None
    margin: float
    lower_is_better: bool
    passed: bool

    def describe(self) -> str:
        if self.champion is None:
            return f"{self.metric}: the champion has no value to compare with"
        sign = "<" if self.lower_is_better else ">"
        verdict = "ok" if self.passed else "FAILED"
        return (f"{self.metric}: {self.challenger:.4f} vs champion {self.champion:.4f}, improvement "
                f"{self.improvement:+.4f} (needs >= {self.margin:+.4f}, {sign} is better) {verdict}")


@dataclass(frozen=True)
class GateDecision:
    decision: str
    promoted: bool
    reason: str
    comparisons: list[Comparison] = field(default_factory=list)


def check_gated_metrics(metrics: Mapping[str, float], gate: Mapping[str, float]) -> None:
    """A challenger must report every gated metric; otherwise nothing is registered."""
    missing = sorted(set(gate) - set(metrics))
    if missing:
        raise RegisterError(
            f"the challenger's metrics lack the gated metric(s) {missing}; it has {sorted(metrics)}"
        )


def decide_promotion(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    gate: Mapping[str, float],
    lower_is_better: Collection[str] = (),
) -> GateDecision:
    """The gate: promote when every gated metric improves by at least its margin.

    ``champion=None`` (no champion yet) promotes with decision "first model". A champion
    without a value for a gated metric fails that metric: the gate cannot prove the
    challenger is better, so a person has to promote by hand.
    """
    check_gated_metrics(challenger, gate)
    if champion is None:
        return GateDecision(DECISION_FIRST, True, "no champion yet: the first model becomes champion")
    comparisons = []
    for metric, margin in gate.items():
        lower = metric in lower_is_better
        theirs = champion.get(metric)
        if theirs is None:
            comparisons.append(Comparison(metric, challenger[metric], None, None, margin, lower, False))
            continue
        improvement = (theirs - challenger[metric]) if lower else (challenger[metric] - theirs)
        comparisons.append(Comparison(metric, challenger[metric], theirs, improvement, margin, lower,
                                      improvement >= margin))
    failed = [c for c in comparisons if not c.passed]
    details = "; ".join(c.describe() for c in comparisons)
    if failed:
        names = ", ".join(c.metric for c in failed)
        return GateDecision(DECISION_REJECTED, False, f"gate failed on {names}: {details}", comparisons)
    return GateDecision(DECISION_PROMOTED, True, f"all {len(comparisons)} gated metrics passed: {details}",
                        comparisons)


# ------------------------------------------------------------------- the logged model


class FGCLIPPyfuncModel(PythonModel):
    """pyfunc wrapper: L2-normalised FG-CLIP embeddings of texts and images.

    Input: a DataFrame with a ``text`` column (strings) and/or an ``image`` column
    (encoded image bytes); each row holds exactly one of them. Output: a float32 array
    (rows, projection_dim), one embedding per row in input order, texts and images in the
    same space. Params: ``long`` (bool) embeds texts as long captions (248 positions, the
    long projection). Embedding goes through ``fgclip.evaluate.FGCLIPEmbedder``, the
    adapter the eval metrics were measured with, so the served model preprocesses
    exactly as it was scored. It is built on the first call, not at ``load_model`` time,
    so loading a registry entry to inspect it stays cheap.
    """

    def load_context(self, context: Any) -> None:
        self._model_dir = context.artifacts[MODEL_ARTIFACT]
        self._settings = dict(context.model_config or {})
        self._embedder: Any = None

    def _ensure_loaded(self) -> Any:
        if self._embedder is None:
            from fgclip.evaluate import FGCLIPEmbedder

            self._embedder = FGCLIPEmbedder(self._model_dir, device=self._settings.get("device", "auto"))
        return self._embedder

    # pd.DataFrame as the input hint tells MLflow to use the logged signature as it is.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        from PIL import Image

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        texts, images = _column(frame, "text"), _column(frame, "image")
        both = [i for i in range(len(frame)) if texts[i] is not None and images[i] is not None]
        neither = [i for i in range(len(frame)) if texts[i] is None and images[i] is None]
        if both or neither:
            raise ValueError(f"each row needs exactly one of 'text' or 'image'; rows with both: {both[:10]}, "
                             f"rows with neither: {neither[:10]}")
        if len(frame) == 0:
            raise ValueError("no rows to embed")
        long = bool((params or {}).get("long", False))
        embedder = self._ensure_loaded()
        vectors: list[np.ndarray | None] = [None] * len(frame)
        batch = int(self._settings.get("batch_size", 1))
        text_rows = [i for i, value in enumerate(texts) if value is not None]
        image_rows = [i for i, value in enumerate(images) if value is not None]
        for start in range(0, len(text_rows), batch):
            rows = text_rows[start:start + batch]
            vectors_of_rows = embedder.encode_texts([str(texts[i]) for i in rows], long=long)
            for row, vector in zip(rows, vectors_of_rows):
                vectors[row] = vector
        for start in range(0, len(image_rows), batch):
            rows = image_rows[start:start + batch]
            pictures = [Image.open(io.BytesIO(bytes(images[i]))) for i in rows]
            no_boxes = [np.zeros((0, 4), dtype=np.float32)] * len(rows)
            for row, vector in zip(rows, embedder.encode_images(pictures, no_boxes)[0]):
                vectors[row] = vector
        out = np.stack(vectors).astype(np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, np.finfo(np.float32).tiny)


def _column(frame: pd.DataFrame, name: str) -> list[Any]:
    """The column's values with missing cells (absent column, None, NaN) as None."""
    if name not in frame.columns:
        return [None] * len(frame)
    return [None if value is None or (isinstance(value, float) and math.isnan(value)) else value
            for value in frame[name].tolist()]


def embedder_signature(projection_dim: int) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    inputs = Schema([ColSpec("string", "text", required=False), ColSpec("binary", "image", required=False)])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, projection_dim))])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("long", "boolean", False)]))


def model_requirements() -> list[str]:
    """Pins of the installed versions; local labels (+cpu, +cu128) are dropped so the
    serving side can pick the build for its accelerator."""
    pins = []
    for package in MODEL_REQUIREMENTS:
        try:
            pins.append(f"{package}=={metadata.version(package).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pins.append(package)
    return pins


def check_model_dir(model_dir: Path) -> int:
    """An FG-CLIP Hugging Face folder; returns its projection dimension."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise RegisterError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "fgclip":
        raise RegisterError(f"{model_dir} holds a {config.get('model_type')!r} model, not an FG-CLIP one")
    if not any(model_dir.glob("*.safetensors")) and not (model_dir / "pytorch_model.bin").exists():
        raise RegisterError(f"{model_dir} has no model weights")
    missing = [name for name in ("tokenizer_config.json", "preprocessor_config.json") if not (model_dir / name).exists()]
    if missing:  # the logged model embeds texts and images, as eval does: it needs both
        raise RegisterError(f"{model_dir} lacks {missing}: save the tokenizer and image processor beside the model")
    return int(config["projection_dim"])


# ------------------------------------------------------------------------ the registry


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
    tagged = {key[len(tag_prefix):]: float(value) for key, value in (version.tags or {}).items()
              if key.startswith(tag_prefix)}
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
    from mlflow import MlflowClient

    if not tracking.enabled:
        raise RegisterError("registration needs MLflow: tracking.enabled is false")
    folder = _local(model_dir).resolve()
    projection_dim = check_model_dir(folder)
    metrics_file = _local(metrics_path)
    metrics = load_eval_metrics(metrics_file)
    check_gated_metrics(metrics, config.gate)
    name = name or config.model_name
    uri = tracking_uri(tracking)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)

    with _open_run(config, name, run_id) as run:
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(metrics_file), "eval")
        version = _log_and_register(folder, projection_dim, config, name)
        for key, value in metrics.items():
            client.set_model_version_tag(name, version, f"{config.metric_tag_prefix}{key}", str(value))

        # The champion is read only now, right before the alias may move, so a
        # registration that finished meanwhile is the one this model is compared with.
        champion = champion_version(client, name, config.champion_alias)
        champion_metrics = version_metrics(client, champion, config.metric_tag_prefix) if champion else None
        decision = decide_promotion(metrics, champion_metrics, config.gate, config.lower_is_better)
        champion_before = str(champion.version) if champion else None
        result = Registration(
            name=name, version=version, model_uri=f"models:/{name}/{version}", run_id=run.info.run_id,
            decision=decision.decision, promoted=decision.promoted, reason=decision.reason,
            champion_before=champion_before, champion_after=version if decision.promoted else champion_before,
            gate=dict(config.gate), lower_is_better=list(config.lower_is_better),
            comparisons=[asdict(c) for c in decision.comparisons],
            challenger_metrics=metrics, champion_metrics=champion_metrics, tracking_uri=uri,
        )
        for key, value in _gate_tags(result).items():
            client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, config.challenger_alias, version)
        if decision.promoted:
            client.set_registered_model_alias(name, config.champion_alias, version)
        mlflow.log_dict(result.as_dict(), "gate.json")
        mlflow.set_tags({"register.model": name, "register.version": version, "register.decision": decision.decision})
    log.info("%s version %s: %s (%s)", name, version, decision.decision, decision.reason)
    return result


def _open_run(config: RegisterConfig, name: str, run_id: str | None) -> Any:
    """A new run in the register experiment, or the given existing run (e.g. training's)."""
    if run_id is None:
        mlflow.set_experiment(config.experiment)
    try:
        return mlflow.start_run(run_id=run_id, run_name=None if run_id else f"register-{name}")
    except MlflowException as error:
        raise RegisterError(f"cannot open MLflow run {run_id!r}: {error.message}") from error


def _log_and_register(folder: Path, projection_dim: int, config: RegisterConfig, name: str) -> str:
    """Log the folder as a pyfunc model in the active run and register it; its version."""
    info = mlflow.pyfunc.log_model(
        name=config.artifact_name,
        python_model=FGCLIPPyfuncModel(),
        artifacts={MODEL_ARTIFACT: str(folder)},
        # The wrapper, the eval adapter and FGCLIPModel live in this package: ship it with
        # the model so it loads where fgclip is not installed.
        code_paths=[str(Path(__file__).resolve().parent)],
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


# ----------------------------------------------------------------------------- the CLI


def add_arguments(parser: Any) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face FG-CLIP model folder (e.g. models/stage2/final)")
    parser.add_argument("--metrics", required=True, help="eval metrics.json of that model")
    parser.add_argument("--name", default=None, help="registered model name (default: params registry.model_name)")
    parser.add_argument("--run-id", default=None, help="log into this existing MLflow run (e.g. the training run)")
    parser.add_argument("--decision-out", default="reports/register.json", help="where to write the gate decision")


def command(args: Any, params: Params) -> int:
    from fgclip.cli import ComponentError

    try:
        result = register_model(args.model, args.metrics, config=params.registry, tracking=params.tracking,
                                name=args.name, run_id=args.run_id)
    except RegisterError as error:
        raise ComponentError(str(error)) from error
    write_text_atomic(local_path(args.decision_out), json.dumps(result.as_dict(), indent=2, sort_keys=True) + "\n")
    print(f"{result.name} v{result.version}: {result.decision} "
          f"(champion: v{result.champion_after}) - {result.reason}")
    return 0
