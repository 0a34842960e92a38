"""FG-CLIP losses as pure functions over feature tensors.

Conventions shared by every loss:

- features may be unnormalised and of any float dtype: each loss L2-normalises them
  in float32 (logits reach 100 * cosine, too coarse in bf16);
- ``logit_scale`` is the learnable log inverse temperature as stored in the model
  (CLIP's convention); the loss multiplies cosines by ``logit_scale.exp()``;
- a loss with nothing to compare returns a zero that is still connected to its inputs,
  so every rank runs the same backward graph (DDP / ZeRO expect that).

Losses (paper, Section 3):

- stage 1: ``stage1_loss`` = InfoNCE(image, long caption) + InfoNCE(image, short caption),
  features gathered across ranks with gradients;
- stage 2: ``stage2_loss`` = global + 0.1 * regional + 0.5 * hard-negative (the paper's
  weights are only defaults: pass the configured ones).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

#: Paper weights of the stage-2 terms (L = L_global + 0.1 L_regional + 0.5 L_hard).
PAPER_REGIONAL_WEIGHT = 0.1
PAPER_HARD_NEGATIVE_WEIGHT = 0.5


def _distributed_rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the summed gradient of its own rows.

    Written on the public collectives because torch.distributed.nn.functional.all_gather
    is deprecated (its suggested replacement is a private module). Works on gloo and NCCL.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, local: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), local.shape[0]  # type: ignore[attr-defined]  # saved for backward
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        summed = grad.contiguous().clone()  # all_reduce works in place
        dist.all_reduce(summed)
        start = ctx.rank * ctx.rows  # type: ignore[attr-defined]
        return summed[start : start + ctx.rows]  # type: ignore[attr-defined]


def gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """Concatenate ``local`` (B, ...) from all ranks in rank order, keeping gradients.

    Identity without an initialised process group or with one rank. Every rank must
    pass the same shape. Backward sums the gradients of all ranks' losses into each
    rank's slice, so with DDP's gradient averaging the update equals single-process
    training on the global batch.
    """
    _, world = _distributed_rank_and_world()
    if world == 1:
        return local
    return _AllGatherWithGrad.apply(local)


def _normalise(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.to(torch.float32), dim=-1)


def _zero_with_graph(*tensors: torch.Tensor) -> torch.Tensor:
    return torch.stack([tensor.sum() * 0.0 for tensor in tensors]).sum()


def _symmetric_infonce(
    local_a: torch.Tensor,
    local_b: torch.Tensor,
    all_a: torch.Tensor,
    all_b: torch.Tensor,
    label_offset: int,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Mean of a->b and b->a InfoNCE; rows are local, columns global (pair i at offset + i)."""
    labels = torch.arange(local_a.shape[0], device=local_a.device) + label_offset
    a_to_b = scale * local_a @ all_b.T
    b_to_a = scale * local_b @ all_a.T
    return (F.cross_entropy(a_to_b, labels) + F.cross_entropy(b_to_a, labels)) / 2


def global_contrastive_loss(
    image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric image-text InfoNCE; local rows against the features of all ranks."""
    images, texts = _normalise(image_feats), _normalise(text_feats)
    rank, _ = _distributed_rank_and_world()
    return _symmetric_infonce(
        images, texts, gather_with_grad(images), gather_with_grad(texts), rank * images.shape[0], logit_scale.exp()
    )


def stage1_loss(
    image_feats: torch.Tensor,
    long_text_feats: torch.Tensor | None,
    short_text_feats: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Global loss: image vs long caption plus image vs short caption.

    ``long_text_feats=None`` leaves the short term only. The images are gathered once
    for both terms.
    """
    rank, _ = _distributed_rank_and_world()
    images = _normalise(image_feats)
    all_images = gather_with_grad(images)
    offset, scale = rank * images.shape[0], logit_scale.exp()

    def against(text_feats: torch.Tensor) -> torch.Tensor:
        texts = _normalise(text_feats)
        return _symmetric_infonce(images, texts, all_images, gather_with_grad(texts), offset, scale)

    loss = against(short_text_feats)
    if long_text_feats is not None:
        loss = loss + against(long_text_feats)
    return loss


def regional_contrastive_loss(
    region_feats: torch.Tensor,
    expr_feats: torch.Tensor,
    valid_mask: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE between the valid boxes of the local batch and their expressions.

    ``region_feats`` and ``expr_feats`` are (..., D) with matching leading shape, e.g.
    (B, max_boxes, D); ``valid_mask`` (...) marks real boxes. Zero valid boxes give 0;
    one box gives exactly 0 as well (a 1x1 softmax), never NaN.
    """
    valid = valid_mask.reshape(-1).bool()
    regions = region_feats.reshape(-1, region_feats.shape[-1])[valid]
    expressions = expr_feats.reshape(-1, expr_feats.shape[-1])[valid]
    if regions.shape[0] == 0:
        return _zero_with_graph(region_feats, expr_feats, logit_scale)
    regions, expressions = _normalise(regions), _normalise(expressions)
    return _symmetric_infonce(regions, expressions, regions, expressions, 0, logit_scale.exp())


def hard_negative_loss(
    region_feats: torch.Tensor,
    pos_text_feats: torch.Tensor,
    neg_text_feats: torch.Tensor,
    neg_mask: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Region -> text cross-entropy over 1 positive and its K hard negatives.

    Shapes: regions and positives (..., D), negatives (..., K, D), ``neg_mask`` (..., K)
    marking real negatives, so K may vary per region (padding is masked out). Regions
    with no real negative are ignored; if none has one the loss is 0.
    """
    dim = region_feats.shape[-1]
    regions = _normalise(region_feats.reshape(-1, dim))
    positives = _normalise(pos_text_feats.reshape(-1, dim))
    negatives = _normalise(neg_text_feats.reshape(regions.shape[0], -1, dim))
    real_negative = neg_mask.reshape(regions.shape[0], -1).bool()
    has_negative = real_negative.any(dim=1)
    if not bool(has_negative.any()):
        return _zero_with_graph(region_feats, pos_text_feats, neg_text_feats, logit_scale)

    scale = logit_scale.exp()
    positive_logit = scale * (regions * positives).sum(dim=-1, keepdim=True)
    negative_logits = scale * torch.einsum("nd,nkd->nk", regions, negatives)
    negative_logits = negative_logits.masked_fill(~real_negative, float("-inf"))
    logits = torch.cat([positive_logit, negative_logits], dim=1)[has_negative]
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)  # positive first
    return F.cross_entropy(logits, target)


class Stage2Losses(NamedTuple):
    """The weighted total and its unweighted terms (for logging)."""

    total: torch.Tensor
    global_loss: torch.Tensor
    regional: torch.Tensor
    hard_negative: torch.Tensor


def stage2_loss(
    *,
    image_feats: torch.Tensor,
    long_text_feats: torch.Tensor | None,
    short_text_feats: torch.Tensor,
    region_feats: torch.Tensor,
    region_text_feats: torch.Tensor,
    region_valid_mask: torch.Tensor,
    hard_region_feats: torch.Tensor,
    hard_pos_text_feats: torch.Tensor,
    hard_neg_text_feats: torch.Tensor,
    hard_neg_mask: torch.Tensor,
    logit_scale: torch.Tensor,
    regional_logit_scale: torch.Tensor,
    hard_logit_scale: torch.Tensor,
    regional_weight: float = PAPER_REGIONAL_WEIGHT,
    hard_weight: float = PAPER_HARD_NEGATIVE_WEIGHT,
) -> Stage2Losses:
    """L = L_global + regional_weight * L_regional + hard_weight * L_hard.

    L_global is the stage-1 loss (long + short captions); each term uses its own
    temperature (``logit_scale``, ``logit_scale_finegraind``, ``logit_scale_hardneg``).
    """
    global_term = stage1_loss(image_feats, long_text_feats, short_text_feats, logit_scale)
    regional = regional_contrastive_loss(region_feats, region_text_feats, region_valid_mask, regional_logit_scale)
    hard = hard_negative_loss(
        hard_region_feats, hard_pos_text_feats, hard_neg_text_feats, hard_neg_mask, hard_logit_scale
    )
    total = global_term + regional_weight * regional + hard_weight * hard
    return Stage2Losses(total=total, global_loss=global_term, regional=regional, hard_negative=hard)
