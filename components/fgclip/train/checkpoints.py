"""Checkpoints with exact resume, and the final model in Hugging Face format.

A checkpoint holds the model, the optimiser (fp32 master weights and Adam moments), the LR
schedule, and in `client_state` the step, every rank's data position (epoch, batches
taken, each loader worker's stream position) and every rank's RNG states. The final model
is saved with fp32 weights gathered from the ZeRO partitions, the tokenizer and the image
processor.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.distributed as dist

from fgclip.core.storage import write_text_atomic
from fgclip.model.modeling import FGCLIPModel
from fgclip.train.config import StageRecipe
from fgclip.train.data import DataPosition
from fgclip.train.distributed import DistContext
from fgclip.train.init_model import STAGE_CONFIG_KEY
from fgclip.train.job import COMPANION_FILES, SUMMARY_FILE, TAG_PREFIX, TrainingError, TrainJob

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _gather(obj: Any, world_size: int) -> list[Any]:
    if world_size == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def inputs_fingerprint(job: TrainJob) -> str:
    """What a checkpoint was trained from, cheaply: the stage, the starting model's config
    and file sizes, and the names and sizes of the image shards and annotation files. A
    --resume onto checkpoints of other inputs (an earlier run on another dataset) is refused."""

    def listing(folder: str | None) -> list[tuple[str, int]]:
        if folder is None or not Path(folder).is_dir():
            return []
        return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in Path(folder).rglob("*") if p.is_file())

    config = Path(job.init) / "config.json"
    identity = {
        "stage": job.stage,
        "init_config": config.read_text() if config.is_file() else None,
        "init": listing(job.init),
        "images": listing(job.images),
        "annotations": {name: listing(path) for name, path in job.annotations.named().items()},
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_tags(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith(TAG_PREFIX))


def save_checkpoint(
    engine: Any,
    folder: Path,
    step: int,
    position: DataPosition,
    context: DistContext,
    job: TrainJob,
    recipe: StageRecipe,
    keep: int,
    inputs: str | None = None,
) -> str:
    tag = f"{TAG_PREFIX}{step:09d}"
    client_state = {
        "step": step,
        "stage": job.stage,
        "recipe": recipe.model_dump(mode="json"),
        "world_size": context.world_size,
        "inputs": inputs or inputs_fingerprint(job),
        "data": _gather(position.to_dict(recipe.batch_size), context.world_size),
        "rng": _gather(rng_state(), context.world_size),
    }
    engine.save_checkpoint(str(folder), tag=tag, client_state=client_state)
    if context.world_size > 1:
        dist.barrier()  # every rank's partition is on disk before old ones go
    if context.is_main:
        for old in checkpoint_tags(folder)[:-keep]:
            shutil.rmtree(folder / old, ignore_errors=True)
    log.info("checkpoint %s saved", folder / tag)
    return tag


def load_checkpoint(
    engine: Any, folder: Path, context: DistContext, job: TrainJob, recipe: StageRecipe, inputs: str | None = None
) -> tuple[int, DataPosition, str] | None:
    """Restore the latest checkpoint: (step, this rank's data position, tag), or None."""
    if not (folder / "latest").is_file():
        return None
    tag = (folder / "latest").read_text().strip()
    path, client_state = engine.load_checkpoint(str(folder))
    if path is None:
        raise TrainingError(f"cannot load the latest checkpoint in {folder}")
    if client_state.get("stage") != job.stage:
        raise TrainingError(f"{folder} holds a stage {client_state.get('stage')} run, not stage {job.stage}")
    if client_state.get("inputs") not in (None, inputs or inputs_fingerprint(job)):
        raise TrainingError(
            f"{folder / tag} was trained from other inputs (another dataset or starting model): "
            "remove the checkpoints or use a new --out"
        )
    if client_state.get("world_size") != context.world_size:
        raise TrainingError(
            f"{folder} was written by {client_state.get('world_size')} ranks; resume with the same "
            f"number (now {context.world_size}) so every rank finds its data position"
        )
    if client_state.get("recipe") != recipe.model_dump(mode="json"):
        log.warning(
            "the recipe changed since %s was written (%s -> %s); the schedule follows the new one",
            folder / tag,
            client_state.get("recipe"),
            recipe.model_dump(mode="json"),
        )
    set_rng_state(client_state["rng"][context.rank])
    return int(client_state["step"]), DataPosition.from_dict(client_state["data"][context.rank]), tag


def export_final(engine: Any, job: TrainJob, tag: str, context: DistContext, summary: dict[str, Any]) -> Path:
    """fp32 weights (from the ZeRO partitions, not the bf16 working copy) in HF format."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    out = Path(job.out)
    if context.is_main:
        chatter = io.StringIO()
        with contextlib.redirect_stdout(chatter):  # the converter prints its progress
            state = get_fp32_state_dict_from_zero_checkpoint(str(job.checkpoints), tag=tag)
        log.debug("zero_to_fp32: %s", chatter.getvalue().strip())
        model = FGCLIPModel.from_pretrained(job.init, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise TrainingError(f"exported weights do not fit the model: missing={missing} unexpected={unexpected}")
        setattr(model.config, STAGE_CONFIG_KEY, job.stage)
        staging = Path(tempfile.mkdtemp(prefix=".final.", dir=out))
        try:
            model.save_pretrained(staging)
            for name in COMPANION_FILES:
                if (Path(job.init) / name).is_file():
                    shutil.copy2(Path(job.init) / name, staging / name)
            write_text_atomic(staging / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")
            for item in staging.iterdir():
                os.replace(item, out / item.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("stage %d model saved to %s", job.stage, out)
    if context.world_size > 1:
        dist.barrier()
    return out
