"""The logged model: an MLflow pyfunc wrapper that embeds texts and images with FG-CLIP."""

from __future__ import annotations

import io
import json
import math
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
from PIL import Image

from fgclip.model.embedder import FGCLIPEmbedder
from fgclip.registry.gate import RegisterError

#: Key of the Hugging Face model folder among the pyfunc model's artifacts.
MODEL_ARTIFACT = "fgclip_model"
#: Packages the logged model needs at load time (pinned to the versions installed here).
MODEL_REQUIREMENTS = (
    "mlflow",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "pillow",
    "pandas",
    "numpy",
    "pydantic",
    "pyyaml",
    "pyarrow",
    "jsonschema",
    "tqdm",
)


class FGCLIPPyfuncModel(PythonModel):
    """pyfunc wrapper: L2-normalised FG-CLIP embeddings of texts and images.

    Input: a DataFrame with a ``text`` column (strings) and/or an ``image`` column
    (encoded image bytes); each row holds exactly one of them. Output: a float32 array
    (rows, projection_dim), one embedding per row in input order, texts and images in the
    same space. Params: ``long`` (bool) embeds texts as long captions (248 positions, the
    long projection). Embedding goes through ``fgclip.model.embedder.FGCLIPEmbedder``, the
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
            self._embedder = FGCLIPEmbedder(self._model_dir, device=self._settings.get("device", "auto"))
        return self._embedder

    # pd.DataFrame as the input hint tells MLflow to use the logged signature as it is.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        texts, images = _column(frame, "text"), _column(frame, "image")
        both = [i for i in range(len(frame)) if texts[i] is not None and images[i] is not None]
        neither = [i for i in range(len(frame)) if texts[i] is None and images[i] is None]
        if both or neither:
            raise ValueError(
                f"each row needs exactly one of 'text' or 'image'; rows with both: {both[:10]}, "
                f"rows with neither: {neither[:10]}"
            )
        if len(frame) == 0:
            raise ValueError("no rows to embed")
        long = bool((params or {}).get("long", False))
        embedder = self._ensure_loaded()
        vectors: list[np.ndarray | None] = [None] * len(frame)
        batch = int(self._settings.get("batch_size", 1))
        text_rows = [i for i, value in enumerate(texts) if value is not None]
        image_rows = [i for i, value in enumerate(images) if value is not None]
        for start in range(0, len(text_rows), batch):
            rows = text_rows[start : start + batch]
            vectors_of_rows = embedder.encode_texts([str(texts[i]) for i in rows], long=long)
            for row, vector in zip(rows, vectors_of_rows):
                vectors[row] = vector
        for start in range(0, len(image_rows), batch):
            rows = image_rows[start : start + batch]
            pictures = [Image.open(io.BytesIO(bytes(images[i]))) for i in rows]
            no_boxes = [np.zeros((0, 4), dtype=np.float32)] * len(rows)
            for row, vector in zip(rows, embedder.encode_images(pictures, no_boxes)[0]):
                vectors[row] = vector
        out = np.stack(cast(list[np.ndarray], vectors)).astype(np.float32)  # every row was filled above
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, np.finfo(np.float32).tiny)


def _column(frame: pd.DataFrame, name: str) -> list[Any]:
    """The column's values with missing cells (absent column, None, NaN) as None."""
    if name not in frame.columns:
        return [None] * len(frame)
    return [
        None if value is None or (isinstance(value, float) and math.isnan(value)) else value
        for value in frame[name].tolist()
    ]


def embedder_signature(projection_dim: int) -> Any:
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
    missing = [
        name for name in ("tokenizer_config.json", "preprocessor_config.json") if not (model_dir / name).exists()
    ]
    if missing:  # the logged model embeds texts and images, as eval does: it needs both
        raise RegisterError(f"{model_dir} lacks {missing}: save the tokenizer and image processor beside the model")
    return int(config["projection_dim"])
