"""One training step's forward pass: a collated batch -> the stage's loss and its parts.

Stage 1: global InfoNCE of images against long and short captions (fgclip.model.stage1_loss).
Stage 2: the same plus the regional loss (box embeddings vs their expressions) and the
hard-negative loss (box vs its short expression and K negatives), weighted by the recipe.

Text goes through the model in one pass per kind: long captions (248 positions, long
projection), then short captions, box texts, positives and negatives (77 positions),
each trimmed to its longest real sequence. Only real texts are encoded; padding slots
stay zero and are masked by the losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fgclip.model import region_features, stage1_loss, stage2_loss
from fgclip.model.modeling import TEMPERATURE_PARAMETER_NAMES, trim_to_longest


@dataclass
class StepLosses:
    total: torch.Tensor
    parts: dict[str, torch.Tensor]  # detached, for logging


def _encode_short_groups(model: Any, groups: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """Short-path features of several (ids, attention) groups, each trimmed to its own
    longest text (negatives are shorter than box texts; one shared width would pad them)."""
    features = []
    for ids, attention in groups:
        if ids.shape[0] == 0:
            features.append(model.text_projection.weight.new_zeros((0, model.text_projection.out_features)))
            continue
        features.append(model.get_text_features(*trim_to_longest(ids, attention), long=False))
    return features


def _scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place the rows of `values` at the True slots of `mask` (zeros elsewhere), differentiably."""
    flat = values.new_zeros((mask.numel(), values.shape[-1]))
    index = mask.reshape(-1).nonzero(as_tuple=True)[0]
    return flat.index_copy(0, index, values).reshape(*mask.shape, values.shape[-1])


def temperature_scales(model: Any, max_logit_scale: float) -> dict[str, torch.Tensor]:
    """The three log inverse temperatures, capped (CLIP caps at ln 100) without touching the
    stored parameters, so the cap holds whatever optimiser owns the fp32 copy."""
    return {name: getattr(model, name).clamp(max=max_logit_scale) for name in TEMPERATURE_PARAMETER_NAMES}


def model_pixels(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The batch's images as the model's input on `device`: uint8 pixels (the loader's) go
    over as they are and are normalised there; float pixels are taken as normalised."""
    pixels = batch["pixel_values"]
    if pixels.dtype == torch.uint8:
        pixels = batch["pixel_normalisation"](pixels.to(device, non_blocking=True))
    return pixels.to(device, dtype, non_blocking=True)


def compute_losses(
    model: Any,
    batch: dict[str, Any],
    *,
    stage: int,
    device: torch.device,
    dtype: torch.dtype,
    regional_weight: float,
    hard_weight: float,
    max_logit_scale: float,
) -> StepLosses:
    move = lambda name: batch[name].to(device, non_blocking=True)  # noqa: E731
    pixels = model_pixels(batch, device, dtype)
    scales = temperature_scales(model, max_logit_scale)
    long_ids, long_attention = trim_to_longest(move("long_ids"), move("long_attention"))
    long_feats = model.get_text_features(long_ids, long_attention, long=True)
    short_group = (move("short_ids"), move("short_attention"))

    if stage == 1:
        image = model.get_image_features(pixels)
        (short_feats,) = _encode_short_groups(model, [short_group])
        total = stage1_loss(image, long_feats, short_feats, scales["logit_scale"])
        return StepLosses(total, {"loss": total.detach(), "loss_global": total.detach()})

    image, dense = model.get_image_and_dense_features(pixels)
    box_valid = move("box_valid")
    uses_short = move("box_uses_short") & box_valid
    neg_valid = move("neg_valid") & box_valid.unsqueeze(-1)
    needs_positive = neg_valid.any(dim=-1) & ~uses_short
    box_rows, box_slots = box_valid.nonzero(as_tuple=True)
    regions = region_features(dense, move("boxes")[box_rows, box_slots], box_rows)

    groups = [
        short_group,
        (move("box_ids")[box_valid], move("box_attention")[box_valid]),
        (move("pos_ids")[needs_positive], move("pos_attention")[needs_positive]),
        (move("neg_ids")[neg_valid], move("neg_attention")[neg_valid]),
    ]
    short_feats, box_text, positive_text, negative_text = _encode_short_groups(model, groups)

    region_grid = _scatter(regions, box_valid)
    box_text_grid = _scatter(box_text.to(regions.dtype), box_valid)
    # The hard-negative positive is the short expression: the box text itself where the
    # box uses it, otherwise its own encoding.
    positives = torch.where(
        uses_short.unsqueeze(-1), box_text_grid, _scatter(positive_text.to(regions.dtype), needs_positive)
    )
    negatives = _scatter(negative_text.to(regions.dtype), neg_valid)
    losses = stage2_loss(
        image_feats=image,
        long_text_feats=long_feats,
        short_text_feats=short_feats,
        region_feats=region_grid,
        region_text_feats=box_text_grid,
        region_valid_mask=box_valid,
        hard_region_feats=region_grid,
        hard_pos_text_feats=positives,
        hard_neg_text_feats=negatives,
        hard_neg_mask=neg_valid,
        logit_scale=scales["logit_scale"],
        regional_logit_scale=scales["logit_scale_finegraind"],
        hard_logit_scale=scales["logit_scale_hardneg"],
        regional_weight=regional_weight,
        hard_weight=hard_weight,
    )
    parts = {
        "loss": losses.total,
        "loss_global": losses.global_loss,
        "loss_regional": losses.regional,
        "loss_hard_negative": losses.hard_negative,
    }
    return StepLosses(losses.total, {name: value.detach() for name, value in parts.items()})
