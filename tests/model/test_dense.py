"""Dense patch features and RoIAlign box features."""

from __future__ import annotations

import math

import pytest
import torch

from fgclip.model.dense import region_features, roi_align_torch


def bilinear(feature_map: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """torchvision's bilinear_interpolate for one (C, H, W) map and one point."""
    height, width = feature_map.shape[-2:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return feature_map.new_zeros(feature_map.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * feature_map[:, y_low, x_low]
        + hy * lx * feature_map[:, y_low, x_high]
        + ly * hx * feature_map[:, y_high, x_low]
        + ly * lx * feature_map[:, y_high, x_high]
    )


def loop_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned) -> torch.Tensor:
    """RoIAlign written as torchvision's CPU kernel loops over boxes, bins and samples."""
    out_h, out_w = output_size
    offset = 0.5 if aligned else 0.0
    outputs = []
    for roi in rois.tolist():
        feature_map = features[int(roi[0])]
        x1, y1, x2, y2 = (value * spatial_scale - offset for value in roi[1:])
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        count = max(grid_h * grid_w, 1)
        bins = torch.zeros(features.shape[1], out_h, out_w, dtype=features.dtype)
        for ph in range(out_h):
            for pw in range(out_w):
                total = features.new_zeros(features.shape[1])
                for iy in range(grid_h):
                    y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total = total + bilinear(feature_map, y, x)
                bins[:, ph, pw] = total / count
        outputs.append(bins)
    return torch.stack(outputs)


def random_rois(num: int, images: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Boxes of every kind: inside, partly outside, beyond the map, zero-size, tiny."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(num, 2, 2, generator=generator) * torch.tensor([width + 4.0, height + 4.0]) - 2.0
    low, high = corners.min(dim=1).values, corners.max(dim=1).values
    boxes = torch.cat([low, high], dim=1)
    boxes[0] = torch.tensor([0.0, 0.0, width, height])  # the whole map
    boxes[1] = torch.tensor([2.0, 1.0, 2.0, 1.0])  # zero-size
    boxes[2] = torch.tensor([1.2, 0.7, 1.5, 0.9])  # smaller than a cell
    boxes[3] = torch.tensor([width + 2.0, height + 2.0, width + 3.0, height + 5.0])  # off the map
    index = torch.randint(0, images, (num, 1), generator=generator).float()
    return torch.cat([index, boxes], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("output_size,sampling_ratio", [((1, 1), -1), ((2, 3), -1), ((2, 2), 2)])
def test_roi_align_matches_loop(aligned, output_size, sampling_ratio) -> None:
    features = torch.randn(3, 5, 6, 7, generator=torch.Generator().manual_seed(0))
    rois = random_rois(12, images=3, height=6, width=7, seed=1)
    ours = roi_align_torch(features, rois, output_size, 1.0, sampling_ratio, aligned)
    expected = loop_roi_align(features, rois, output_size, 1.0, sampling_ratio, aligned)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_roi_align_spatial_scale_and_gradient_match_loop() -> None:
    base = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(2))
    rois = random_rois(8, images=2, height=20, width=20, seed=3)
    ours_input, loop_input = base.clone().requires_grad_(), base.clone().requires_grad_()
    weights = torch.randn(8, 4, 1, 1)
    (roi_align_torch(ours_input, rois, (1, 1), 0.25, -1, True) * weights).sum().backward()
    (loop_roi_align(loop_input, rois, (1, 1), 0.25, -1, True) * weights).sum().backward()
    torch.testing.assert_close(ours_input.grad, loop_input.grad, rtol=0, atol=1e-5)


def test_roi_align_matches_torchvision_when_available() -> None:
    ops = pytest.importorskip("torchvision.ops")
    features = torch.randn(2, 3, 6, 6)
    rois = random_rois(10, images=2, height=6, width=6, seed=4)
    expected = ops.roi_align(features, rois, (1, 1), 1.0, -1, True)
    torch.testing.assert_close(roi_align_torch(features, rois, (1, 1), 1.0, -1, True), expected, atol=1e-5, rtol=0)


def test_no_boxes_give_an_empty_result() -> None:
    assert roi_align_torch(torch.randn(2, 3, 4, 4), torch.zeros(0, 5), (1, 1), 1.0, -1, True).shape == (0, 3, 1, 1)


def test_region_features_of_whole_image_and_single_cell() -> None:
    dense = torch.randn(2, 4, 4, 8)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.25, 0.5, 0.5, 0.75], [0.0, 0.0, 1.0, 1.0]])
    image_of_box = torch.tensor([1, 0, 0])
    features = region_features(dense, boxes, image_of_box)
    torch.testing.assert_close(features[0], dense[1].mean(dim=(0, 1)))
    torch.testing.assert_close(features[1], dense[0, 2, 1])  # row 2 (y), column 1 (x)
    torch.testing.assert_close(features[2], dense[0].mean(dim=(0, 1)))


def test_region_features_follow_their_image_in_any_order() -> None:
    dense = torch.randn(3, 4, 4, 8)
    generator = torch.Generator().manual_seed(5)
    corners = torch.rand(7, 2, 2, generator=generator)
    boxes = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values], dim=1)
    image_of_box = torch.tensor([2, 0, 2, 1, 0, 2, 2])
    features = region_features(dense, boxes, image_of_box)
    for box, image in zip(boxes, image_of_box):
        alone = region_features(dense[image : image + 1], box[None], torch.zeros(1, dtype=torch.long))
        torch.testing.assert_close(features[(boxes == box).all(dim=1)], alone)


def test_dense_features_follow_the_value_path(tiny_fgclip, pixel_values) -> None:
    model = tiny_fgclip
    vision = model.vision_model
    with torch.no_grad():
        last_input = vision(pixel_values, output_hidden_states=True).hidden_states[-2]
        block = vision.encoder.layers[-1]
        x = last_input + block.self_attn.out_proj(block.self_attn.v_proj(block.layer_norm1(last_input)))
        x = x + block.mlp(block.layer_norm2(x))
        expected = model.visual_projection(vision.post_layernorm(x[:, 1:])).reshape(2, 4, 4, -1)
        dense = model.get_dense_features(pixel_values)
    assert dense.shape == (2, 32 // 8, 32 // 8, model.config.projection_dim)
    torch.testing.assert_close(dense, expected, rtol=0, atol=1e-5)


def test_one_pass_gives_clip_image_features_and_dense(tiny_clip, tiny_fgclip, pixel_values) -> None:
    with torch.no_grad():
        image, dense = tiny_fgclip.get_image_and_dense_features(pixel_values)
        clip_image = tiny_clip.get_image_features(pixel_values=pixel_values).pooler_output
        torch.testing.assert_close(image, clip_image, rtol=0, atol=1e-5)
        torch.testing.assert_close(tiny_fgclip.get_image_features(pixel_values), clip_image, rtol=0, atol=1e-5)
        torch.testing.assert_close(dense, tiny_fgclip.get_dense_features(pixel_values), rtol=0, atol=0)


def test_region_features_backpropagate_into_the_vision_tower(tiny_fgclip, pixel_values) -> None:
    dense = tiny_fgclip.get_dense_features(pixel_values)
    boxes = torch.tensor([[0.1, 0.1, 0.6, 0.9], [0.0, 0.5, 1.0, 1.0]])
    region_features(dense, boxes, torch.tensor([0, 1])).sum().backward()
    last_block = tiny_fgclip.vision_model.encoder.layers[-1]
    assert last_block.self_attn.v_proj.weight.grad.abs().sum() > 0
    assert last_block.self_attn.q_proj.weight.grad is None  # the value path skips q and k
