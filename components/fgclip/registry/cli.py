"""`fgclip register`: log a trained model to MLflow, version it, and gate its promotion."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgclip.core.storage import copy_file, is_s3, write_text_atomic
from fgclip.errors import ComponentError
from fgclip.model.location import local_model_dir
from fgclip.registry.gate import RegisterError
from fgclip.registry.registration import register_model

if TYPE_CHECKING:
    from fgclip.config import Params

HELP = "register a trained model in MLflow and move the champion alias through the promotion gate"


def add_arguments(parser: Any) -> None:
    parser.add_argument("--model", required=True, help="Hugging Face FG-CLIP model folder (e.g. models/stage2/final)")
    parser.add_argument("--metrics", required=True, help="eval metrics.json of that model")
    parser.add_argument("--name", default=None, help="registered model name (default: params registry.model_name)")
    parser.add_argument("--run-id", default=None, help="log into this existing MLflow run (e.g. the training run)")
    parser.add_argument("--decision-out", default="reports/register.json", help="where to write the gate decision")


def command(args: Any, params: Params) -> int:
    try:
        with tempfile.TemporaryDirectory(prefix="fgclip-register-") as scratch:
            metrics = args.metrics
            if is_s3(metrics):  # MLflow logs local files
                metrics = Path(scratch) / "metrics.json"
                copy_file(args.metrics, metrics)
            result = register_model(
                str(local_model_dir(args.model)),
                metrics,
                config=params.registry,
                tracking=params.tracking,
                name=args.name,
                run_id=args.run_id,
            )
    except (RegisterError, FileNotFoundError) as error:
        raise ComponentError(str(error)) from error
    write_text_atomic(args.decision_out, json.dumps(result.as_dict(), indent=2, sort_keys=True) + "\n")
    print(f"{result.name} v{result.version}: {result.decision} (champion: v{result.champion_after}) - {result.reason}")
    return 0
