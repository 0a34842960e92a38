"""Losses against plain loop implementations, edge cases, and a 2-process gloo run."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fgclip.model.losses import (
    gather_with_grad,
    global_contrastive_loss,
    hard_negative_loss,
    regional_contrastive_loss,
    stage1_loss,
    stage2_loss,
)

ATOL = 1e-5


# ------------------------------------------------------------ loop references


def unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / vector.norm()


def loop_cross_entropy(logits: list[torch.Tensor], target: int) -> torch.Tensor:
    return -(logits[target] - torch.logsumexp(torch.stack(logits), dim=0))


def loop_infonce(a: torch.Tensor, b: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of the a->b and b->a cross-entropies, one row at a time."""
    scale = log_scale.exp()
    a = [unit(row) for row in a]
    b = [unit(row) for row in b]
    n = len(a)
    a_to_b = sum(loop_cross_entropy([scale * (a[i] @ b[j]) for j in range(n)], i) for i in range(n)) / n
    b_to_a = sum(loop_cross_entropy([scale * (b[i] @ a[j]) for j in range(n)], i) for i in range(n)) / n
    return (a_to_b + b_to_a) / 2


def loop_regional(regions, expressions, valid, log_scale) -> torch.Tensor:
    kept_regions, kept_expressions = [], []
    for image in range(valid.shape[0]):
        for box in range(valid.shape[1]):
            if valid[image, box]:
                kept_regions.append(regions[image, box])
                kept_expressions.append(expressions[image, box])
    return loop_infonce(torch.stack(kept_regions), torch.stack(kept_expressions), log_scale)


def loop_hard(regions, positives, negatives, neg_mask, log_scale) -> torch.Tensor:
    scale = log_scale.exp()
    losses = []
    for i in range(regions.shape[0]):
        candidates = [positives[i]] + [negatives[i, k] for k in range(negatives.shape[1]) if neg_mask[i, k]]
        if len(candidates) == 1:
            continue
        logits = [scale * (unit(regions[i]) @ unit(text)) for text in candidates]
        losses.append(loop_cross_entropy(logits, 0))
    return sum(losses) / len(losses)


def random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


LOG_SCALE = torch.tensor(math.log(30.0))


# ------------------------------------------------------------ equality with the loops


def test_global_loss_matches_loop() -> None:
    images, texts = random(6, 8, seed=0), random(6, 8, seed=1)
    torch.testing.assert_close(
        global_contrastive_loss(images, texts, LOG_SCALE), loop_infonce(images, texts, LOG_SCALE), atol=ATOL, rtol=0
    )


def test_stage1_is_long_plus_short() -> None:
    images, long_texts, short_texts = random(5, 8, seed=2), random(5, 8, seed=3), random(5, 8, seed=4)
    expected = loop_infonce(images, long_texts, LOG_SCALE) + loop_infonce(images, short_texts, LOG_SCALE)
    torch.testing.assert_close(stage1_loss(images, long_texts, short_texts, LOG_SCALE), expected, atol=ATOL, rtol=0)
    short_only = stage1_loss(images, None, short_texts, LOG_SCALE)
    torch.testing.assert_close(short_only, loop_infonce(images, short_texts, LOG_SCALE), atol=ATOL, rtol=0)


def test_regional_loss_matches_loop_with_variable_boxes() -> None:
    regions, expressions = random(3, 4, 8, seed=5), random(3, 4, 8, seed=6)
    valid = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    ours = regional_contrastive_loss(regions, expressions, valid, LOG_SCALE)
    torch.testing.assert_close(ours, loop_regional(regions, expressions, valid, LOG_SCALE), atol=ATOL, rtol=0)


@pytest.mark.parametrize("num_negatives", [10, 3])
def test_hard_negative_loss_matches_loop_with_variable_negatives(num_negatives: int) -> None:
    regions, positives = random(6, 8, seed=7), random(6, 8, seed=8)
    negatives = random(6, num_negatives, 8, seed=9)
    neg_mask = torch.rand(6, num_negatives, generator=torch.Generator().manual_seed(10)) > 0.4
    neg_mask[0] = True  # a full set
    neg_mask[1] = False  # a region without negatives: ignored
    neg_mask[2] = False
    neg_mask[2, 0] = True  # a single negative
    ours = hard_negative_loss(regions, positives, negatives, neg_mask, LOG_SCALE)
    torch.testing.assert_close(ours, loop_hard(regions, positives, negatives, neg_mask, LOG_SCALE), atol=ATOL, rtol=0)


def test_stage2_weights_the_three_terms() -> None:
    images, long_texts, short_texts = random(4, 8, seed=11), random(4, 8, seed=12), random(4, 8, seed=13)
    regions, expressions = random(4, 2, 8, seed=14), random(4, 2, 8, seed=15)
    valid = torch.tensor([[1, 1], [1, 0], [0, 0], [1, 1]], dtype=torch.bool)
    positives, negatives = random(8, 8, seed=16), random(8, 10, 8, seed=17)
    neg_mask = torch.ones(8, 10, dtype=torch.bool)
    scales = [torch.tensor(math.log(v)) for v in (20.0, 40.0, 60.0)]
    losses = stage2_loss(
        image_feats=images,
        long_text_feats=long_texts,
        short_text_feats=short_texts,
        region_feats=regions,
        region_text_feats=expressions,
        region_valid_mask=valid,
        hard_region_feats=regions.reshape(8, 8),
        hard_pos_text_feats=positives,
        hard_neg_text_feats=negatives,
        hard_neg_mask=neg_mask,
        logit_scale=scales[0],
        regional_logit_scale=scales[1],
        hard_logit_scale=scales[2],
        regional_weight=0.3,
        hard_weight=0.7,
    )
    global_term = loop_infonce(images, long_texts, scales[0]) + loop_infonce(images, short_texts, scales[0])
    regional = loop_regional(regions, expressions, valid, scales[1])
    hard = loop_hard(regions.reshape(8, 8), positives, negatives, neg_mask, scales[2])
    torch.testing.assert_close(losses.global_loss, global_term, atol=ATOL, rtol=0)
    torch.testing.assert_close(losses.regional, regional, atol=ATOL, rtol=0)
    torch.testing.assert_close(losses.hard_negative, hard, atol=ATOL, rtol=0)
    torch.testing.assert_close(losses.total, global_term + 0.3 * regional + 0.7 * hard, atol=ATOL, rtol=0)


def test_bfloat16_features_are_scored_in_float32() -> None:
    images, texts = random(4, 8, seed=18), random(4, 8, seed=19)
    loss = global_contrastive_loss(images.bfloat16(), texts.bfloat16(), LOG_SCALE)
    assert loss.dtype == torch.float32
    expected = loop_infonce(images.bfloat16().float(), texts.bfloat16().float(), LOG_SCALE)
    torch.testing.assert_close(loss, expected, atol=ATOL, rtol=0)


# ------------------------------------------------------------ edge cases


def leaf(*shape: int, seed: int) -> torch.Tensor:
    return random(*shape, seed=seed).requires_grad_()


def test_no_boxes_gives_zero_that_backpropagates() -> None:
    regions, expressions, scale = leaf(2, 4, 8, seed=20), leaf(2, 4, 8, seed=21), LOG_SCALE.clone().requires_grad_()
    loss = regional_contrastive_loss(regions, expressions, torch.zeros(2, 4, dtype=torch.bool), scale)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(regions.grad, torch.zeros_like(regions)) and scale.grad == 0


def test_single_box_is_finite_and_zero() -> None:
    regions, expressions = leaf(1, 8, seed=22), leaf(1, 8, seed=23)
    loss = regional_contrastive_loss(regions, expressions, torch.ones(1, dtype=torch.bool), LOG_SCALE)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(regions.grad).all()


def test_no_negatives_gives_zero_that_backpropagates() -> None:
    regions, positives, negatives = leaf(3, 8, seed=24), leaf(3, 8, seed=25), leaf(3, 10, 8, seed=26)
    loss = hard_negative_loss(regions, positives, negatives, torch.zeros(3, 10, dtype=torch.bool), LOG_SCALE)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(negatives.grad, torch.zeros_like(negatives))


def test_padded_negatives_get_no_gradient_and_no_nan() -> None:
    regions, positives, negatives = leaf(2, 8, seed=27), leaf(2, 8, seed=28), leaf(2, 4, 8, seed=29)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    hard_negative_loss(regions, positives, negatives, mask, LOG_SCALE).backward()
    assert torch.isfinite(regions.grad).all()
    assert torch.equal(negatives.grad[~mask], torch.zeros_like(negatives.grad[~mask]))


def test_gather_is_identity_without_process_group() -> None:
    features = random(3, 4, seed=30)
    assert gather_with_grad(features) is features


# ------------------------------------------------------------ two ranks over gloo

WORLD_SIZE, LOCAL_BATCH, DIM = 2, 3, 8


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch = WORLD_SIZE * LOCAL_BATCH
    return random(batch, DIM, seed=31), random(batch, DIM, seed=32), random(batch, DIM, seed=33)


def stage1_on_rank(rank: int, port: int, out_dir: str) -> None:
    """One rank: stage-1 loss on its slice of the global batch; saves loss and gradients."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        images, long_texts, short_texts = (t[rows].clone().requires_grad_() for t in global_batch())
        scale = LOG_SCALE.clone().requires_grad_()
        global_only = global_contrastive_loss(images, long_texts, scale).detach()
        loss = stage1_loss(images, long_texts, short_texts, scale)
        loss.backward()
        grads = [images.grad, long_texts.grad, short_texts.grad, scale.grad]
        result = {"loss": loss.detach(), "global_only": global_only, "grads": grads}
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        # rank 0 hosts the TCP store: leaving before the other rank is done aborts it
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_gloo_ranks_equal_one_process_on_the_global_batch(tmp_path: Path) -> None:
    mp.spawn(stage1_on_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]

    images, long_texts, short_texts = (t.clone().requires_grad_() for t in global_batch())
    scale = LOG_SCALE.clone().requires_grad_()
    single = stage1_loss(images, long_texts, short_texts, scale)
    single.backward()

    # DDP averages over ranks: the mean rank loss is the global-batch loss ...
    mean_loss = sum(result["loss"] for result in ranks) / WORLD_SIZE
    torch.testing.assert_close(mean_loss, single.detach(), atol=ATOL, rtol=0)
    mean_global = sum(result["global_only"] for result in ranks) / WORLD_SIZE
    torch.testing.assert_close(mean_global, global_contrastive_loss(images, long_texts, scale), atol=ATOL, rtol=0)
    # ... and each rank's feature gradient, averaged by DDP, is the global gradient of its rows.
    for rank, result in enumerate(ranks):
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        for rank_grad, full in zip(result["grads"][:3], (images, long_texts, short_texts)):
            torch.testing.assert_close(rank_grad / WORLD_SIZE, full.grad[rows], atol=ATOL, rtol=0)
    mean_scale_grad = sum(result["grads"][3] for result in ranks) / WORLD_SIZE
    torch.testing.assert_close(mean_scale_grad, scale.grad, atol=ATOL, rtol=0)
