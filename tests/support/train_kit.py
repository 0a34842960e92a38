"""Tiny training data and a tiny demo model for the loader and trainer tests.

Image shards are written with fgclip.core.shards.write_image_shard, annotations as the stage
jsonl files the trainer joins (captions, regions, negatives). Each image shows coloured
rectangles; captions and expressions name them, so a model can actually learn something.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from fgclip.config import Params
from fgclip.core.shards import ShardSample, annotation_path, write_image_shard, write_jsonl_atomic

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (240, 220, 20)}
SHAPES = ("square", "bar", "block")
WIDTH, HEIGHT = 64, 48

TINY_MODEL = {
    "tokenizer_vocab_size": 400,
    "tokenizer_min_frequency": 1,
    "text_hidden_size": 32,
    "text_layers": 1,
    "text_heads": 2,
    "text_intermediate_size": 64,
    "vision_hidden_size": 32,
    "vision_layers": 2,
    "vision_heads": 2,
    "vision_intermediate_size": 64,
    "image_size": 32,
    "patch_size": 16,
    "projection_dim": 16,
}


def sample_key(shard: int, index: int) -> str:
    return f"s{shard:02d}_{index:03d}"


def _scene(rng: random.Random) -> tuple[bytes, list[dict[str, Any]]]:
    image = Image.new("RGB", (WIDTH, HEIGHT), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    objects = []
    for slot in range(rng.randint(1, 3)):
        colour = rng.choice(sorted(COLOURS))
        shape = rng.choice(SHAPES)
        x1 = 4 + slot * 20
        y1 = rng.randint(2, 20)
        x2, y2 = x1 + rng.randint(8, 16), y1 + rng.randint(10, 24)
        draw.rectangle((x1, y1, x2, y2), fill=COLOURS[colour])
        objects.append({"colour": colour, "shape": shape, "bbox": [x1 / WIDTH, y1 / HEIGHT, x2 / WIDTH, y2 / HEIGHT]})
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), objects


def write_dataset(
    root: Path,
    shards: int = 4,
    per_shard: int = 12,
    seed: int = 0,
    missing: dict[str, set[str]] | None = None,
    negatives_per_box: int = 3,
) -> dict[str, Path]:
    """Image shards + captions/regions/negatives under `root`; `missing` = {kind: keys left out}."""
    missing = missing or {}
    dirs = {name: root / name for name in ("images", "captions", "regions", "negatives")}
    rng = random.Random(seed)
    for shard in range(shards):
        name = f"{shard:05d}"
        samples, captions, regions, negatives = [], [], [], []
        for index in range(per_shard):
            key = sample_key(shard, index)
            jpeg, objects = _scene(rng)
            words = [f"{o['colour']} {o['shape']}" for o in objects]
            samples.append(ShardSample(key, jpeg, " and ".join(words), {"width": WIDTH, "height": HEIGHT}))
            captions.append(
                {
                    "key": key,
                    "long_caption": "a white picture showing "
                    + ", then ".join(
                        f"a {w} on the {'left' if o['bbox'][0] < 0.3 else 'right'}" for w, o in zip(words, objects)
                    ),
                }
            )
            regions.append(
                {
                    "key": key,
                    "width": WIDTH,
                    "height": HEIGHT,
                    "regions": [
                        {
                            "bbox": o["bbox"],
                            "score": 0.9,
                            "short_expr": f"a {w}",
                            "long_expr": f"a {w} on a white ground",
                        }
                        for w, o in zip(words, objects)
                    ],
                }
            )
            negatives.append(
                {
                    "key": key,
                    "regions": [
                        {
                            "short_expr_negs": [f"a {c} {o['shape']}" for c in sorted(COLOURS) if c != o["colour"]][
                                :negatives_per_box
                            ]
                        }
                        for o in objects
                    ],
                }
            )
        write_image_shard(dirs["images"], name, samples)
        for kind, records in (("captions", captions), ("regions", regions), ("negatives", negatives)):
            kept = [r for r in records if r["key"] not in missing.get(kind, set())]
            write_jsonl_atomic(annotation_path(dirs[kind], name), kept)
    return dirs


def tiny_params(tmp: Path, **train: Any) -> Params:
    """Params for the tiny model: tracking into `tmp`, no system-metrics thread, fp32."""
    data = {
        "model": {"demo": TINY_MODEL},
        "tracking": {"uri": f"sqlite:///{tmp / 'mlflow.db'}", "enabled": True},
        "train": {
            "precision": "fp32",
            "workers": 0,
            "shuffle_buffer": 8,
            "log_every": 1,
            "checkpoint_every": 2,
            "log_system_metrics": False,
            "recipe": "demo",
            **train,
        },
    }
    return Params.model_validate(data)


def build_tiny_model(out: Path, dirs: dict[str, Path], params: Params) -> Path:
    from fgclip.train.init_model import init_model

    return init_model("demo-tiny", out, params, corpus=dirs["captions"], corpus_images=dirs["images"])


def slice_batch(batch: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Rows start..stop of a collated batch (tensors with a batch dimension and key lists)."""
    size = len(batch["keys"])
    out = {}
    for name, value in batch.items():
        if hasattr(value, "shape") and value.dim() > 0 and value.shape[0] == size or isinstance(value, list):
            out[name] = value[start:stop]
        else:
            out[name] = value
    return out


def one_step_on_global_batch(
    rank: int, world_size: int, port: int, model_dir: str, batch_path: str, out_path: str, params_json: str
) -> None:
    """mp.spawn target: one stage-1 optimisation step on this rank's rows of a global batch.

    Rank 0 saves the rank-mean loss and the updated weights.
    """
    import os

    import torch
    import torch.distributed as dist

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from fgclip.model import FGCLIPModel
    from fgclip.train.distributed import setup_distributed, teardown_distributed
    from fgclip.train.engine import build_engine, optimisation_step

    params = Params.model_validate_json(params_json)
    recipe = params.train.recipe_for(1)
    context = setup_distributed(60, extensions_dir=params.train.torch_extensions_dir, cpu_shm_comm=False)
    try:
        engine = build_engine(
            FGCLIPModel.from_pretrained(model_dir, dtype=torch.float32),
            recipe,
            params.train,
            world_size,
            total_steps=10,
        )
        batch = torch.load(batch_path, weights_only=False)
        rows = len(batch["keys"]) // world_size
        local = slice_batch(batch, rank * rows, (rank + 1) * rows)
        losses = optimisation_step(engine, local, stage=1, recipe=recipe, train=params.train, device=context.device)
        loss = losses.total.detach().clone()
        dist.all_reduce(loss)
        if rank == 0:
            state = {name: tensor.detach().clone() for name, tensor in engine.module.state_dict().items()}
            torch.save({"loss": float(loss) / world_size, "state": state}, out_path)
    finally:
        teardown_distributed(context)
