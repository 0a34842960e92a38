"""Dense (per-patch) image features and box features pooled from them.

FG-CLIP reads region embeddings off a dense feature map: the input of the last ViT
block is run through that block with self-attention replaced by its value path
(LN1 -> v_proj -> out_proj, + residual, then LN2 -> MLP, + residual), the CLS token is
dropped, and post-layernorm plus the visual projection put every patch in the joint
embedding space. A box feature is RoIAlign over that grid with a 1x1 output
(aligned=True, adaptive sampling), the box given in normalised x1, y1, x2, y2.

``roi_align`` uses torchvision when it imports and otherwise a pure-torch version with
the same conventions (torchvision does not import beside the CPU torch pinned here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


def _load_torchvision_roi_align() -> Callable[..., torch.Tensor] | None:
    try:
        from torchvision.ops import roi_align as torchvision_roi_align
    # A torchvision built for another torch fails at import with RuntimeError or
    # AttributeError (operator registration), not only ImportError.
    except (ImportError, RuntimeError, AttributeError, OSError):
        return None
    return torchvision_roi_align


_TORCHVISION_ROI_ALIGN = _load_torchvision_roi_align()


def value_path_block(layer: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Run a CLIP encoder layer (CLIPEncoderLayer) with attention replaced by its value path."""
    attention = layer.self_attn
    hidden = hidden + attention.out_proj(attention.v_proj(layer.layer_norm1(hidden)))
    return hidden + layer.mlp(layer.layer_norm2(hidden))


def patch_grid_size(pixel_values: torch.Tensor, patch_size: int | Sequence[int]) -> tuple[int, int]:
    """(rows, columns) of the patch grid for these images."""
    patch_h, patch_w = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    return pixel_values.shape[-2] // patch_h, pixel_values.shape[-1] // patch_w


def dense_patch_features(
    tokens: torch.Tensor,
    post_layernorm: nn.Module,
    visual_projection: nn.Module,
    grid_size: tuple[int, int],
) -> torch.Tensor:
    """Project value-path tokens (B, 1 + N, W) to a patch grid (B, rows, columns, P)."""
    rows, columns = grid_size
    patches = tokens[:, 1:]  # drop CLS
    if patches.shape[1] != rows * columns:
        raise ValueError(f"{patches.shape[1]} patch tokens do not fill a {rows}x{columns} grid")
    projected = visual_projection(post_layernorm(patches))
    return projected.reshape(tokens.shape[0], rows, columns, -1)


def region_features(dense: torch.Tensor, boxes_norm: torch.Tensor, box_batch_index: torch.Tensor) -> torch.Tensor:
    """Box embeddings (K, P) in float32 from dense features (B, rows, columns, P).

    ``boxes_norm`` (K, 4) holds x1, y1, x2, y2 in [0, 1]; ``box_batch_index`` (K,) says
    which image each box belongs to. Pooling runs in float32 as in the reference.
    """
    rows, columns = dense.shape[1], dense.shape[2]
    to_grid = boxes_norm.new_tensor([columns, rows, columns, rows], dtype=torch.float32)
    rois = torch.cat([box_batch_index.to(torch.float32).unsqueeze(1), boxes_norm.to(torch.float32) * to_grid], dim=1)
    feature_map = dense.permute(0, 3, 1, 2).to(torch.float32)
    pooled = roi_align(feature_map, rois, output_size=(1, 1), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return pooled[:, :, 0, 0]


def roi_align(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """torchvision.ops.roi_align when available, else :func:`roi_align_torch`."""
    if _TORCHVISION_ROI_ALIGN is not None:
        return _TORCHVISION_ROI_ALIGN(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return roi_align_torch(features, rois, output_size, spatial_scale, sampling_ratio, aligned)


def roi_align_torch(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """RoIAlign in plain torch with torchvision's conventions; differentiable in features.

    ``features`` (B, C, H, W); ``rois`` (K, 5) rows of batch index, x1, y1, x2, y2 in
    input coordinates. Returns (K, C, out_h, out_w).

    Bilinear sampling is separable, so a bin's average over its sample grid equals
    ``Ay @ F @ Ax^T`` with per-axis averaged interpolation weights. That turns RoIAlign
    into one batched matmul per image and never materialises per-sample features.
    """
    out_h, out_w = output_size
    num_rois, channels, height, width = rois.shape[0], *features.shape[1:]
    if num_rois == 0:
        return features.new_zeros(0, channels, out_h, out_w)
    offset = 0.5 if aligned else 0.0
    boxes = rois[:, 1:].to(torch.float32) * spatial_scale - offset
    start_x, start_y, end_x, end_y = boxes.unbind(dim=1)
    size_x, size_y = end_x - start_x, end_y - start_y
    if not aligned:  # legacy behaviour: boxes are at least one cell wide
        size_x, size_y = size_x.clamp(min=1.0), size_y.clamp(min=1.0)
    weights_y = _axis_weights(start_y, size_y, out_h, height, sampling_ratio)  # (K, out_h, H)
    weights_x = _axis_weights(start_x, size_x, out_w, width, sampling_ratio)  # (K, out_w, W)
    bin_weights = torch.einsum("kph,kqw->kpqhw", weights_y, weights_x).reshape(num_rois, out_h * out_w, -1)
    per_image = features.flatten(2).transpose(1, 2)  # (B, H*W, C)
    pooled = _matmul_per_image(bin_weights.to(features.dtype), per_image, rois[:, 0].long())
    return pooled.transpose(1, 2).reshape(num_rois, channels, out_h, out_w)


def _axis_weights(start: torch.Tensor, size: torch.Tensor, bins: int, length: int, sampling_ratio: int) -> torch.Tensor:
    """Per-bin interpolation weights along one axis, averaged over the bin's samples.

    Returns (K, bins, length). Mirrors torchvision: samples at bin-relative (i + 0.5) /
    n, n = sampling_ratio or ceil(size / bins); samples beyond [-1, length] count as 0;
    coordinates are clamped at 0 and at the last cell.
    """
    bin_size = size / bins
    if sampling_ratio > 0:
        samples = torch.full_like(size, sampling_ratio, dtype=torch.long)
    else:
        samples = torch.ceil(size / bins).long().clamp(min=0)
    divisor = samples.clamp(min=1).to(size.dtype)
    sample_slots = int(samples.max().clamp(min=1))

    bin_index = torch.arange(bins, device=size.device, dtype=size.dtype).view(1, -1, 1)
    slot = torch.arange(sample_slots, device=size.device).view(1, 1, -1)
    coords = (
        start.view(-1, 1, 1) + bin_index * bin_size.view(-1, 1, 1) + (slot + 0.5) * (bin_size / divisor).view(-1, 1, 1)
    )  # (K, bins, slots)
    used = (slot < samples.view(-1, 1, 1)) & (coords >= -1.0) & (coords <= length)

    coords = coords.clamp(min=0.0)
    low = coords.floor().long()
    at_edge = low >= length - 1
    low = torch.where(at_edge, torch.full_like(low, length - 1), low)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(coords), coords - low.to(coords.dtype))

    cells = torch.arange(length, device=size.device)
    weights = (1.0 - frac).unsqueeze(-1) * (cells == low.unsqueeze(-1)) + frac.unsqueeze(-1) * (
        cells == high.unsqueeze(-1)
    )
    weights = weights * used.unsqueeze(-1)
    return weights.sum(dim=2) / divisor.view(-1, 1, 1)


def _matmul_per_image(weights: torch.Tensor, features: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
    """out[k] = weights[k] @ features[batch_index[k]] without gathering features per box.

    Gathering (K, H*W, C) copies would cost gigabytes at stage-2 batch sizes, so the
    boxes are packed per image (B, max boxes, ...) and multiplied with one bmm.
    """
    num_images = features.shape[0]
    order = torch.argsort(batch_index, stable=True)
    sorted_index = batch_index[order]
    counts = torch.bincount(sorted_index, minlength=num_images)
    first_of_image = torch.cumsum(counts, dim=0) - counts
    slot = torch.arange(len(order), device=order.device) - first_of_image[sorted_index]
    max_boxes = int(counts.max())

    rows, cells = weights.shape[1], weights.shape[2]
    packed = weights.new_zeros(num_images, max_boxes, rows, cells)
    packed[sorted_index, slot] = weights[order]
    products = torch.bmm(packed.view(num_images, max_boxes * rows, cells), features)
    products = products.view(num_images, max_boxes, rows, -1)

    original_position = torch.empty_like(order)
    original_position[order] = torch.arange(len(order), device=order.device)
    return products[sorted_index, slot][original_position]
