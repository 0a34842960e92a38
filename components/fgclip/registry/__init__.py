"""The model registry: log a trained model to MLflow, version it, and gate its promotion.

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

Modules: `gate` (reading eval metrics, the promotion decision; pure), `pyfunc` (the
logged model), `registration` (MLflow: log, version, gate, alias), `cli`.
"""
