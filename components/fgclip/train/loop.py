"""The training loop: DeepSpeed ZeRO-2, checkpoints with exact resume, HF export, MLflow.

`run_training(job, params)` is the whole `fgclip train`: join the process group, load the
FG-CLIP checkpoint, stream the data, step, checkpoint every `train.checkpoint_every`
steps, and at the end save the model in Hugging Face format (fp32 weights from the ZeRO
partitions, tokenizer and image processor) into the output folder.

Exact resume: a checkpoint holds the model, the optimiser (fp32 master weights and Adam
moments), the LR schedule, and in `client_state` the step, every rank's data position
(epoch, batches taken, each loader worker's stream position) and every rank's RNG states.
A resumed run skips the consumed part of the epoch's stream (see fgclip.train.data), so
steps k+1..N see the same batches, and give the same losses, as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from fgclip.config import Params, StageRecipe, TrainConfig
from fgclip.storage import write_text_atomic
from fgclip.tracking import Tracker, tracked_run
from fgclip.train.data import DataPosition, EpochPlan, list_shard_urls, make_loader, plan_epoch, real_batches
from fgclip.train.distributed import DistContext, setup_distributed, teardown_distributed
from fgclip.train.examples import AnnotationDirs, StreamSettings
from fgclip.train.init_model import STAGE_CONFIG_KEY
from fgclip.train.step import StepLosses, compute_losses

log = logging.getLogger(__name__)

CHECKPOINT_FOLDER = "checkpoints"
TAG_PREFIX = "step"
SUMMARY_FILE = "training.json"
#: Files beside the weights that make a directory loadable as a whole (tokenizer, processor).
COMPANION_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "preprocessor_config.json")


class TrainingError(Exception):
    """A training failure the user can act on (bad arguments, unusable data, bad resume)."""


@dataclass(frozen=True)
class TrainJob:
    stage: int
    init: str
    images: str
    annotations: AnnotationDirs
    out: str
    checkpoint_dir: str | None = None  # default: <out>/checkpoints
    resume: bool = False
    stop_after_steps: int | None = None  # checkpoint and stop early (a preemption drill); schedule unchanged

    @property
    def checkpoints(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else Path(self.out) / CHECKPOINT_FOLDER


@dataclass
class TrainResult:
    step: int
    total_steps: int
    finished: bool
    final_dir: Path | None
    losses: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> rank-mean loss parts
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    images_per_s: float = 0.0
    resumed_from: int | None = None
    is_main: bool = True  # rank 0: the rank that logs and writes the final model


# ----------------------------------------------------------------- optimisation

def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float):
    """LR factor per optimiser step: linear warmup to 1, then cosine down to `min_lr_ratio`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def deepspeed_config(recipe: StageRecipe, train: TrainConfig, world_size: int) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": recipe.batch_size,
        "gradient_accumulation_steps": 1,  # contrastive batches do not accumulate: no grad accumulation
        "train_batch_size": recipe.batch_size * world_size,
        "gradient_clipping": recipe.grad_clip,
        "bf16": {"enabled": train.precision == "bf16"},
        "zero_optimization": {"stage": train.zero_stage, "contiguous_gradients": True, "overlap_comm": False},
        # torch.optim.AdamW is not one of DeepSpeed's own optimisers; it works with ZeRO
        # and, unlike DeepSpeed's CPU Adam, needs no C++ build.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def build_engine(model: torch.nn.Module, recipe: StageRecipe, train: TrainConfig, world_size: int, total_steps: int):
    import deepspeed

    from fgclip.model import adamw_param_groups

    optimizer = torch.optim.AdamW(adamw_param_groups(model, recipe.weight_decay), lr=recipe.lr,
                                  betas=recipe.betas, eps=recipe.eps)
    schedule = warmup_cosine(recipe.warmup_steps, total_steps, recipe.min_lr_ratio)
    with _scalar_parameters_broadcast_apart(model, world_size):
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lambda wrapped: torch.optim.lr_scheduler.LambdaLR(wrapped, schedule),
            config=deepspeed_config(recipe, train, world_size),
            dist_init_required=False,
        )
    return engine


@contextlib.contextmanager
def _scalar_parameters_broadcast_apart(model: torch.nn.Module, world_size: int):
    """Work around DeepSpeed 0.19.8 failing on 0-dim parameters (CLIP's logit scales).

    `DeepSpeedEngine._broadcast_model` sends every parameter as `p.data.view(torch.uint8)`,
    which torch refuses for a 0-dim tensor. Those few scalars are broadcast here instead,
    and marked with the attribute that makes that pass skip a parameter (it is only read
    there and by the LoRA offload, which is not configured) for the duration of initialize.
    """
    scalars = [parameter for parameter in model.parameters() if parameter.dim() == 0]
    for parameter in scalars:
        if world_size > 1:
            dist.broadcast(parameter.data, src=0)
        parameter.ds_optim_param = True
    try:
        yield
    finally:
        for parameter in scalars:
            del parameter.ds_optim_param


def optimisation_step(engine: Any, batch: dict[str, Any], *, stage: int, recipe: StageRecipe, train: TrainConfig,
                      device: torch.device) -> StepLosses:
    """Forward, backward (gradients reduced across ranks by ZeRO), clip, AdamW, LR schedule."""
    dtype = torch.bfloat16 if train.precision == "bf16" else torch.float32
    losses = compute_losses(engine.module, batch, stage=stage, device=device, dtype=dtype,
                            regional_weight=recipe.regional_weight, hard_weight=recipe.hard_weight,
                            max_logit_scale=train.max_logit_scale)
    engine.backward(losses.total)
    engine.step()
    return losses


# ------------------------------------------------------------------ checkpoints

def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
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


def checkpoint_tags(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith(TAG_PREFIX))


def save_checkpoint(engine: Any, folder: Path, step: int, position: DataPosition, context: DistContext,
                    job: TrainJob, recipe: StageRecipe, keep: int) -> str:
    tag = f"{TAG_PREFIX}{step:09d}"
    client_state = {
        "step": step,
        "stage": job.stage,
        "recipe": recipe.model_dump(mode="json"),
        "world_size": context.world_size,
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


def load_checkpoint(engine: Any, folder: Path, context: DistContext, job: TrainJob,
                    recipe: StageRecipe) -> tuple[int, DataPosition, str] | None:
    """Restore the latest checkpoint: (step, this rank's data position, tag), or None."""
    if not (folder / "latest").is_file():
        return None
    tag = (folder / "latest").read_text().strip()
    path, client_state = engine.load_checkpoint(str(folder))
    if path is None:
        raise TrainingError(f"cannot load the latest checkpoint in {folder}")
    if client_state.get("stage") != job.stage:
        raise TrainingError(f"{folder} holds a stage {client_state.get('stage')} run, not stage {job.stage}")
    if client_state.get("world_size") != context.world_size:
        raise TrainingError(f"{folder} was written by {client_state.get('world_size')} ranks; resume with the same "
                            f"number (now {context.world_size}) so every rank finds its data position")
    if client_state.get("recipe") != recipe.model_dump(mode="json"):
        log.warning("the recipe changed since %s was written (%s -> %s); the schedule follows the new one",
                    folder / tag, client_state.get("recipe"), recipe.model_dump(mode="json"))
    set_rng_state(client_state["rng"][context.rank])
    return int(client_state["step"]), DataPosition.from_dict(client_state["data"][context.rank]), tag


# ------------------------------------------------------------------ final model

def export_final(engine: Any, job: TrainJob, tag: str, context: DistContext, summary: dict[str, Any]) -> Path:
    """fp32 weights (from the ZeRO partitions, not the bf16 working copy) in HF format."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from fgclip.model import FGCLIPModel

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


# ---------------------------------------------------------------------- the loop

def _load_model(init: str, train: TrainConfig):
    from fgclip.model import FGCLIPModel, is_fgclip_checkpoint

    if not (Path(init) / "config.json").is_file():
        raise TrainingError(f"--init {init} is not a model directory (no config.json)")
    if not is_fgclip_checkpoint(init):
        raise TrainingError(f"--init {init} is a plain CLIP checkpoint: convert it once with `fgclip init-model --base {init}`")
    model = FGCLIPModel.from_pretrained(init, dtype=torch.float32)
    short, long = model.config.text_config.max_position_embeddings, model.config.long_text_max_position_embeddings
    if train.short_text_length > short or train.long_text_length > long:
        raise TrainingError(f"train.short_text_length/long_text_length {train.short_text_length}/{train.long_text_length} "
                            f"exceed the model's {short}/{long} positions")
    return model


def _stream_settings(job: TrainJob, params: Params, recipe: StageRecipe) -> StreamSettings:
    train = params.train
    return StreamSettings(
        model_dir=str(job.init), dirs=job.annotations, stage=job.stage, seed=params.seed,
        batch_size=recipe.batch_size, max_boxes=train.max_boxes, max_negatives=train.max_negatives,
        short_prefix=train.short_prefix, short_text_length=train.short_text_length,
        long_text_length=train.long_text_length, min_box_visible_fraction=train.min_box_visible_fraction,
        long_expression_rate=train.long_expression_rate, shuffle_buffer=train.shuffle_buffer,
        log_skipped_samples=train.log_skipped_samples,
    )


def _step_metrics(parts: dict[str, torch.Tensor], engine: Any, model: Any, context: DistContext,
                  max_logit_scale: float) -> dict[str, float]:
    names = sorted(parts)
    values = torch.stack([parts[name].float() for name in names]).to(context.device)
    if context.world_size > 1:
        dist.all_reduce(values)
        values /= context.world_size
    metrics = dict(zip(names, values.tolist()))
    metrics["lr"] = float(engine.get_lr()[0])
    labels = {"logit_scale": "global", "logit_scale_finegraind": "regional", "logit_scale_hardneg": "hard_negative"}
    for name, label in labels.items():
        log_scale = float(getattr(model, name).detach().float().clamp(max=max_logit_scale))
        metrics[f"temperature_{label}"] = math.exp(-log_scale)
    return metrics


@dataclass
class _Run:
    """What the loop works with, prepared by `_prepare`."""

    recipe: StageRecipe
    plan: EpochPlan
    total_steps: int
    engine: Any
    step: int = 0
    position: DataPosition = field(default_factory=lambda: DataPosition(0))
    last_tag: str | None = None
    resumed_from: int | None = None


def _prepare(job: TrainJob, params: Params, context: DistContext) -> _Run:
    train_cfg = params.train
    recipe = train_cfg.recipe_for(job.stage)
    if job.stage == 2 and not job.annotations.regions:
        raise TrainingError("stage 2 needs --regions (and --negatives for the hard-negative loss)")
    if not job.resume and checkpoint_tags(job.checkpoints):
        raise TrainingError(f"{job.checkpoints} already holds checkpoints: pass --resume to continue, or use a new --out")
    if train_cfg.tf32 and context.accelerator == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = _load_model(job.init, train_cfg).to(context.device)  # nccl / hccl broadcast device tensors
    try:
        plan = plan_epoch(list_shard_urls(job.images), world_size=context.world_size, workers=train_cfg.workers,
                          batch_size=recipe.batch_size, samples_per_epoch=recipe.samples_per_epoch)
    except (ValueError, FileNotFoundError) as error:
        raise TrainingError(str(error)) from error
    total_steps = recipe.epochs * plan.batches_per_epoch
    run = _Run(recipe, plan, total_steps, build_engine(model, recipe, train_cfg, context.world_size, total_steps))
    if job.resume:
        restored = load_checkpoint(run.engine, job.checkpoints, context, job, recipe)
        if restored is None:
            log.info("--resume: no checkpoint in %s yet, starting from step 0", job.checkpoints)
        else:
            run.step, run.position, run.last_tag = restored
            run.resumed_from = run.step
            log.info("resumed at step %d (epoch %d, batch %d)", run.step, run.position.epoch, run.position.batches)
    return run


def _run_params(job: TrainJob, params: Params, context: DistContext, run: _Run) -> dict[str, Any]:
    train_cfg = params.train
    return {
        "stage": job.stage, "init": job.init, "images": job.images, "recipe_name": train_cfg.recipe,
        "recipe": run.recipe.model_dump(), "world_size": context.world_size, "backend": context.backend,
        "precision": train_cfg.precision, "zero_stage": train_cfg.zero_stage, "total_steps": run.total_steps,
        "batches_per_epoch": run.plan.batches_per_epoch, "global_batch": run.recipe.batch_size * context.world_size,
        "resumed_from": run.resumed_from, "max_boxes": train_cfg.max_boxes, "max_negatives": train_cfg.max_negatives,
        "seed": params.seed,
    }


def train(job: TrainJob, params: Params, context: DistContext, tracker: Tracker, progress: bool = True) -> TrainResult:
    """Run (or continue) one stage; checkpoints on the way, the HF model at the end."""
    from tqdm import tqdm

    train_cfg = params.train
    run = _prepare(job, params, context)
    tracker.log_params(_run_params(job, params, context, run))
    recipe, engine = run.recipe, run.engine
    settings = _stream_settings(job, params, recipe)
    stop_at = min(run.total_steps, job.stop_after_steps or run.total_steps)
    result = TrainResult(step=run.step, total_steps=run.total_steps, finished=False, final_dir=None,
                         resumed_from=run.resumed_from, is_main=context.is_main)
    started, images_seen = time.perf_counter(), 0
    bar = tqdm(total=stop_at, initial=run.step, desc=f"train stage {job.stage}",
               disable=not (progress and context.is_main))
    while run.step < stop_at:
        tick = time.perf_counter()
        loader = make_loader(settings, run.plan, run.position, train_cfg.prefetch_factor,
                             pin_memory=context.accelerator == "cuda")
        for batch in real_batches(loader):
            losses = optimisation_step(engine, batch, stage=job.stage, recipe=recipe, train=train_cfg,
                                       device=context.device)
            run.step += 1
            run.position.advance(batch)
            for reason, count in batch["skipped"].items():
                result.skipped[reason] = result.skipped.get(reason, 0) + count
            images = len(batch["keys"]) * context.world_size
            now = time.perf_counter()
            metrics = {**_step_metrics(losses.parts, engine, engine.module, context, train_cfg.max_logit_scale),
                       "images_per_s": images / max(now - tick, 1e-9), "epoch": run.position.epoch}
            tick, images_seen = now, images_seen + images
            result.losses[run.step] = {k: v for k, v in metrics.items() if k.startswith("loss")}
            if run.step % train_cfg.log_every == 0 or run.step == stop_at:
                tracker.log_metrics({**metrics, **{f"data_skipped.{k}": v for k, v in result.skipped.items()}},
                                    step=run.step)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if run.step % train_cfg.checkpoint_every == 0 or run.step == stop_at:
                run.last_tag = save_checkpoint(engine, job.checkpoints, run.step, run.position, context, job, recipe,
                                               train_cfg.keep_checkpoints)
            if run.step >= stop_at:
                break
        if run.position.batches >= run.plan.batches_per_epoch:
            run.position = DataPosition(run.position.epoch + 1)
        elif run.step < stop_at:
            raise TrainingError(f"epoch {run.position.epoch} ended after {run.position.batches} of "
                                f"{run.plan.batches_per_epoch} batches")
    bar.close()
    result.step = run.step
    result.seconds = time.perf_counter() - started
    result.images_per_s = images_seen / max(result.seconds, 1e-9)
    if run.step >= run.total_steps and run.last_tag is not None:
        summary = {"stage": job.stage, "steps": run.step, "init": job.init, "recipe": recipe.model_dump(),
                   "world_size": context.world_size, "final_loss": result.losses.get(run.step),
                   "skipped": result.skipped}
        result.final_dir = export_final(engine, job, run.last_tag, context, summary)
        result.finished = True
    tracker.log_metrics({"train_seconds": result.seconds, "train_images_per_s": result.images_per_s})
    if not result.finished:
        log.info("stopped at step %d of %d; continue with --resume", run.step, run.total_steps)
    return result


def run_training(job: TrainJob, params: Params, progress: bool = True) -> TrainResult:
    """The whole `fgclip train`: process group, MLflow run (rank 0), training, teardown."""
    train_cfg = params.train
    context = setup_distributed(train_cfg.dist_timeout_s, extensions_dir=train_cfg.torch_extensions_dir,
                                cpu_shm_comm=train_cfg.cpu_shm_comm)
    failed = True
    try:
        Path(job.out).mkdir(parents=True, exist_ok=True)
        with _tracking(params, job, context) as tracker:
            if tracker.enabled:  # a digest hashes the data: only where it is logged
                for name, path in (("images", job.images), ("init_model", job.init),
                                   *job.annotations.named().items()):
                    tracker.log_dataset(path, name)
            result = train(job, params, context, tracker, progress)
            if result.final_dir is not None:
                tracker.set_tags({"final_model": str(Path(result.final_dir).resolve())})
        failed = False
        return result
    finally:
        teardown_distributed(context, failed=failed)


@contextlib.contextmanager
def _tracking(params: Params, job: TrainJob, context: DistContext):
    from fgclip.config import TrackingConfig

    if not context.is_main:
        with tracked_run(TrackingConfig(enabled=False), "") as tracker:
            yield tracker
        return
    system_metrics = params.train.log_system_metrics and params.tracking.enabled
    if system_metrics:
        import mlflow

        mlflow.enable_system_metrics_logging()
    try:
        name = f"train-stage{job.stage}" + ("-resume" if job.resume else "")
        with tracked_run(params.tracking, name, experiment=params.train.experiment,
                         tags={"component": "train", "stage": str(job.stage)}) as tracker:
            yield tracker
    finally:
        if system_metrics:
            import mlflow

            mlflow.disable_system_metrics_logging()
