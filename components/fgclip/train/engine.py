"""The optimiser side of training: AdamW with linear warmup + cosine decay under DeepSpeed
ZeRO (bf16 where configured), and one optimisation step."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from fgclip.model.modeling import adamw_param_groups
from fgclip.train.config import StageRecipe, TrainConfig
from fgclip.train.step import StepLosses, compute_losses

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


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


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto` -> bf16 on a GPU that supports it and on an Ascend NPU, fp32 elsewhere: on
    CPU, bf16 matmuls run several times slower than fp32 unless the host has bf16 units
    (measured on a 2-core AVX2 host: a demo stage-2 step takes 4.5 CPU-s in bf16, 0.6 in fp32)."""
    if precision != "auto":
        return precision
    if accelerator == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if accelerator == "npu" else "fp32"


def build_engine(model: torch.nn.Module, recipe: StageRecipe, train: TrainConfig, world_size: int, total_steps: int):
    import deepspeed

    optimizer = torch.optim.AdamW(
        adamw_param_groups(model, recipe.weight_decay), lr=recipe.lr, betas=recipe.betas, eps=recipe.eps
    )
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
        parameter.ds_optim_param = True  # type: ignore[attr-defined]  # DeepSpeed reads this flag
    try:
        yield
    finally:
        for parameter in scalars:
            del parameter.ds_optim_param  # type: ignore[attr-defined]


def optimisation_step(
    engine: Any, batch: dict[str, Any], *, stage: int, recipe: StageRecipe, train: TrainConfig, device: torch.device
) -> StepLosses:
    """Forward, backward (gradients reduced across ranks by ZeRO), clip, AdamW, LR schedule."""
    dtype = torch.bfloat16 if train.precision == "bf16" else torch.float32
    losses = compute_losses(
        engine.module,
        batch,
        stage=stage,
        device=device,
        dtype=dtype,
        regional_weight=recipe.regional_weight,
        hard_weight=recipe.hard_weight,
        max_logit_scale=train.max_logit_scale,
    )
    engine.backward(losses.total)
    engine.step()
    return losses
