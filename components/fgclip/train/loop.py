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
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import CLIPTextConfig

from fgclip.core.config import TrackingConfig
from fgclip.core.tracking import Tracker, tracked_run
from fgclip.model.convert import is_fgclip_checkpoint
from fgclip.model.modeling import FGCLIPModel
from fgclip.train.checkpoints import (
    checkpoint_tags,
    export_final,
    inputs_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from fgclip.train.config import StageRecipe, TrainConfig
from fgclip.train.data import (
    DataPosition,
    EpochPlan,
    list_shard_urls,
    make_loader,
    plan_epoch,
    real_batches,
    sample_tools,
)
from fgclip.train.distributed import DistContext, setup_distributed, teardown_distributed
from fgclip.train.engine import build_engine, optimisation_step, resolve_precision
from fgclip.train.examples import StreamSettings
from fgclip.train.job import TrainingError, TrainJob, TrainResult

if TYPE_CHECKING:
    from fgclip.config import Params

log = logging.getLogger(__name__)


def _load_model(init: str, train: TrainConfig):
    if not (Path(init) / "config.json").is_file():
        raise TrainingError(f"--init {init} is not a model directory (no config.json)")
    if not is_fgclip_checkpoint(init):
        raise TrainingError(
            f"--init {init} is a plain CLIP checkpoint: convert it once with `fgclip init-model --base {init}`"
        )
    model = FGCLIPModel.from_pretrained(init, dtype=torch.float32)
    short, long = (
        cast(CLIPTextConfig, model.config.text_config).max_position_embeddings,
        model.config.long_text_max_position_embeddings,
    )
    if train.short_text_length > short or train.long_text_length > long:
        raise TrainingError(
            f"train.short_text_length/long_text_length {train.short_text_length}/{train.long_text_length} "
            f"exceed the model's {short}/{long} positions"
        )
    return model


def _stream_settings(job: TrainJob, params: Params, recipe: StageRecipe) -> StreamSettings:
    train = params.train
    return StreamSettings(
        model_dir=str(job.init),
        dirs=job.annotations,
        stage=job.stage,
        seed=params.seed,
        batch_size=recipe.batch_size,
        max_boxes=train.max_boxes,
        max_negatives=train.max_negatives,
        short_prefix=train.short_prefix,
        short_text_length=train.short_text_length,
        long_text_length=train.long_text_length,
        min_box_visible_fraction=train.min_box_visible_fraction,
        long_expression_rate=train.long_expression_rate,
        shuffle_buffer=train.shuffle_buffer,
        log_skipped_samples=train.log_skipped_samples,
    )


def _step_metrics(
    parts: dict[str, torch.Tensor], engine: Any, model: Any, context: DistContext, max_logit_scale: float
) -> dict[str, float]:
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
    inputs: str | None = None  # inputs_fingerprint, taken once per run


def _prepare(job: TrainJob, params: Params, context: DistContext) -> _Run:
    train_cfg = params.train
    recipe = train_cfg.recipe_for(job.stage)
    if job.stage == 2 and not job.annotations.regions:
        raise TrainingError("stage 2 needs --regions (and --negatives for the hard-negative loss)")
    if not job.resume and checkpoint_tags(job.checkpoints):
        raise TrainingError(
            f"{job.checkpoints} already holds checkpoints: pass --resume to continue, or use a new --out"
        )
    if train_cfg.tf32 and context.accelerator == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = _load_model(job.init, train_cfg).to(context.device)  # nccl / hccl broadcast device tensors
    try:
        plan = plan_epoch(
            list_shard_urls(job.images, job.shards),
            world_size=context.world_size,
            workers=train_cfg.workers,
            batch_size=recipe.batch_size,
            samples_per_epoch=recipe.samples_per_epoch,
        )
    except (ValueError, FileNotFoundError) as error:
        raise TrainingError(str(error)) from error
    total_steps = recipe.epochs * plan.batches_per_epoch
    engine = build_engine(model, recipe, train_cfg, context.world_size, total_steps)
    run = _Run(recipe, plan, total_steps, engine, inputs=inputs_fingerprint(job))
    if job.resume:
        restored = load_checkpoint(run.engine, job.checkpoints, context, job, recipe, run.inputs)
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
        "stage": job.stage,
        "init": job.init,
        "images": job.images,
        "recipe_name": train_cfg.recipe,
        "recipe": run.recipe.model_dump(),
        "world_size": context.world_size,
        "backend": context.backend,
        "precision": train_cfg.precision,
        "zero_stage": train_cfg.zero_stage,
        "total_steps": run.total_steps,
        "batches_per_epoch": run.plan.batches_per_epoch,
        "global_batch": run.recipe.batch_size * context.world_size,
        "resumed_from": run.resumed_from,
        "max_boxes": train_cfg.max_boxes,
        "max_negatives": train_cfg.max_negatives,
        "seed": params.seed,
    }


def train(job: TrainJob, params: Params, context: DistContext, tracker: Tracker, progress: bool = True) -> TrainResult:
    """Run (or continue) one stage; checkpoints on the way, the HF model at the end."""
    precision = resolve_precision(params.train.precision, context.accelerator)
    params = params.model_copy(update={"train": params.train.model_copy(update={"precision": precision})})
    train_cfg = params.train
    run = _prepare(job, params, context)
    tracker.log_params(_run_params(job, params, context, run))
    recipe, engine = run.recipe, run.engine
    settings = _stream_settings(job, params, recipe)
    tools = sample_tools(settings.model_dir)  # once for all epochs; each epoch's workers inherit them
    stop_at = min(run.total_steps, job.stop_after_steps or run.total_steps)
    result = TrainResult(
        step=run.step,
        total_steps=run.total_steps,
        finished=False,
        final_dir=None,
        resumed_from=run.resumed_from,
        is_main=context.is_main,
    )
    started, images_seen = time.perf_counter(), 0
    bar = tqdm(
        total=stop_at, initial=run.step, desc=f"train stage {job.stage}", disable=not (progress and context.is_main)
    )
    while run.step < stop_at:
        tick = time.perf_counter()
        loader = make_loader(
            settings,
            run.plan,
            run.position,
            train_cfg.prefetch_factor,
            pin_memory=context.accelerator == "cuda",
            tools=tools,
        )
        for batch in real_batches(loader):
            losses = optimisation_step(
                engine, batch, stage=job.stage, recipe=recipe, train=train_cfg, device=context.device
            )
            run.step += 1
            run.position.advance(batch)
            for reason, count in batch["skipped"].items():
                result.skipped[reason] = result.skipped.get(reason, 0) + count
            images = len(batch["keys"]) * context.world_size
            now = time.perf_counter()
            metrics = {
                **_step_metrics(losses.parts, engine, engine.module, context, train_cfg.max_logit_scale),
                "images_per_s": images / max(now - tick, 1e-9),
                "epoch": run.position.epoch,
            }
            tick, images_seen = now, images_seen + images
            result.losses[run.step] = {k: v for k, v in metrics.items() if k.startswith("loss")}
            if run.step % train_cfg.log_every == 0 or run.step == stop_at:
                tracker.log_metrics(
                    {**metrics, **{f"data_skipped.{k}": v for k, v in result.skipped.items()}}, step=run.step
                )
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if run.step % train_cfg.checkpoint_every == 0 or run.step == stop_at:
                run.last_tag = save_checkpoint(
                    engine,
                    job.checkpoints,
                    run.step,
                    run.position,
                    context,
                    job,
                    recipe,
                    train_cfg.keep_checkpoints,
                    run.inputs,
                )
            if run.step >= stop_at:
                break
        if run.position.batches >= run.plan.batches_per_epoch:
            run.position = DataPosition(run.position.epoch + 1)
        elif run.step < stop_at:
            raise TrainingError(
                f"epoch {run.position.epoch} ended after {run.position.batches} of {run.plan.batches_per_epoch} batches"
            )
    bar.close()
    result.step = run.step
    result.seconds = time.perf_counter() - started
    result.images_per_s = images_seen / max(result.seconds, 1e-9)
    if run.step >= run.total_steps and run.last_tag is not None:
        summary = {
            "stage": job.stage,
            "steps": run.step,
            "init": job.init,
            "recipe": recipe.model_dump(),
            "world_size": context.world_size,
            "final_loss": result.losses.get(run.step),
            "skipped": result.skipped,
            "mlflow_run_id": tracker.run_id,  # the registry links the model version to this run
        }
        result.final_dir = export_final(engine, job, run.last_tag, context, summary)
        result.finished = True
    tracker.log_metrics({"train_seconds": result.seconds, "train_images_per_s": result.images_per_s})
    if not result.finished:
        log.info("stopped at step %d of %d; continue with --resume", run.step, run.total_steps)
    return result


def run_training(job: TrainJob, params: Params, progress: bool = True) -> TrainResult:
    """The whole `fgclip train`: process group, MLflow run (rank 0), training, teardown."""
    train_cfg = params.train
    context = setup_distributed(
        train_cfg.dist_timeout_s, extensions_dir=train_cfg.torch_extensions_dir, cpu_shm_comm=train_cfg.cpu_shm_comm
    )
    failed = True
    try:
        Path(job.out).mkdir(parents=True, exist_ok=True)
        with _tracking(params, job, context) as tracker:
            if tracker.enabled:  # a digest hashes the data: only where it is logged
                for name, path in (("images", job.images), ("init_model", job.init), *job.annotations.named().items()):
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
        with tracked_run(
            params.tracking,
            name,
            experiment=params.train.experiment,
            tags={"component": "train", "stage": str(job.stage)},
        ) as tracker:
            yield tracker
    finally:
        if system_metrics:
            import mlflow

            mlflow.disable_system_metrics_logging()
