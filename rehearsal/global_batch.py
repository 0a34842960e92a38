"""The one-process reference of a multi-node stage-1 run: every step trains on the global
batch the N ranks saw together (rank 0's batch, then rank 1's, ...), with the trainer's own
pieces (its data stream per rank, DeepSpeed engine, optimiser step and schedule), so its
loss at each step is what the N-node run's rank-mean loss must be.

    python -m rehearsal.global_batch --params P --init D --images D --captions D --ranks N --out losses.json

The ranks' streams are read first, each as its rank would (RANK / WORLD_SIZE set, as
webdataset's node split reads them), then one process trains on their concatenation.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch


def _pad_to(ids: torch.Tensor, attention: torch.Tensor, length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = length - ids.shape[1]
    if extra <= 0:
        return ids, attention
    return (
        torch.cat([ids, torch.full((ids.shape[0], extra), pad_id, dtype=ids.dtype)], dim=1),
        torch.cat([attention, torch.zeros((attention.shape[0], extra), dtype=attention.dtype)], dim=1),
    )


def concat_stage1(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Stage-1 batches as one: texts padded to the longest (exact under the causal mask and
    first-EOS pooling), images and keys stacked in rank order."""
    pad_id = batches[0]["pad_token_id"]
    out: dict[str, Any] = {
        "keys": [key for batch in batches for key in batch["keys"]],
        "pad_token_id": pad_id,
        "pixel_values": torch.cat([batch["pixel_values"] for batch in batches]),
    }
    if "pixel_normalisation" in batches[0]:  # uint8 pixels: the step normalises them (the same for every rank)
        out["pixel_normalisation"] = batches[0]["pixel_normalisation"]
    for text in ("short", "long"):
        length = max(batch[f"{text}_ids"].shape[1] for batch in batches)
        padded = [_pad_to(batch[f"{text}_ids"], batch[f"{text}_attention"], length, pad_id) for batch in batches]
        out[f"{text}_ids"] = torch.cat([ids for ids, _ in padded])
        out[f"{text}_attention"] = torch.cat([attention for _, attention in padded])
    return out


def rank_batches(settings: Any, plan: Any, epochs: int, rank: int, ranks: int) -> list[dict[str, Any]]:
    from fgclip.train.data import DataPosition, make_loader, real_batches

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(ranks))
    try:
        return [
            batch for epoch in range(epochs) for batch in real_batches(make_loader(settings, plan, DataPosition(epoch)))
        ]
    finally:
        for name in ("RANK", "WORLD_SIZE"):
            os.environ.pop(name, None)


def reference_losses(*, params_file: Path, init: str, images: str, captions: str, ranks: int) -> list[float]:
    from fgclip.config import load_params
    from fgclip.model import FGCLIPModel
    from fgclip.train.data import list_shard_urls, plan_epoch
    from fgclip.train.distributed import setup_distributed, teardown_distributed
    from fgclip.train.engine import build_engine, optimisation_step
    from fgclip.train.examples import AnnotationDirs
    from fgclip.train.job import TrainJob
    from fgclip.train.loop import _stream_settings

    params = load_params(params_file)
    train = params.train
    recipe = train.recipe_for(1)
    job = TrainJob(stage=1, init=init, images=images, annotations=AnnotationDirs(captions), out="unused")
    settings = _stream_settings(job, params, recipe)
    plan = plan_epoch(
        list_shard_urls(images),
        world_size=ranks,
        workers=train.workers,
        batch_size=recipe.batch_size,
        samples_per_epoch=recipe.samples_per_epoch,
    )
    per_rank = [rank_batches(settings, plan, recipe.epochs, rank, ranks) for rank in range(ranks)]
    steps = recipe.epochs * plan.batches_per_epoch
    if any(len(batches) != steps for batches in per_rank):
        raise RuntimeError(f"expected {steps} batches per rank, got {[len(b) for b in per_rank]}")

    global_recipe = recipe.model_copy(update={"batch_size": recipe.batch_size * ranks})
    context = setup_distributed(
        train.dist_timeout_s, extensions_dir=train.torch_extensions_dir, cpu_shm_comm=train.cpu_shm_comm
    )
    try:
        engine = build_engine(
            FGCLIPModel.from_pretrained(init, dtype=torch.float32).to(context.device), global_recipe, train, 1, steps
        )
        losses = []
        for step in range(steps):
            batch = concat_stage1([batches[step] for batches in per_rank])
            result = optimisation_step(engine, batch, stage=1, recipe=global_recipe, train=train, device=context.device)
            losses.append(float(result.parts["loss"]))
        return losses
    finally:
        teardown_distributed(context)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", required=True, type=Path)
    parser.add_argument("--init", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--captions", required=True)
    parser.add_argument("--ranks", type=int, required=True)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    losses = reference_losses(
        params_file=args.params, init=args.init, images=args.images, captions=args.captions, ranks=args.ranks
    )
    args.out.write_text(json.dumps({"losses": losses}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
