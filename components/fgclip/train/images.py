"""CLIP image preprocessing for training, with the box geometry that goes with it.

Resize (shortest edge, or to a fixed height x width), centre crop, rescale, normalise:
the arithmetic of transformers' CLIPImageProcessor, read from the model's saved
`preprocessor_config.json`. It is done here rather than by the processor because region
boxes must follow the crop: `map_box` moves a box of the original image into the output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class ImageTransform:
    """CLIP preprocessing from a saved `preprocessor_config.json`, plus the box geometry.

    Resize (shortest edge, or to a fixed height x width), centre crop, rescale, normalise:
    the same arithmetic as transformers' CLIPImageProcessor, done here because boxes must
    follow the crop.
    """

    shortest_edge: int | None
    resize_hw: tuple[int, int] | None
    crop_hw: tuple[int, int] | None
    resample: int
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> ImageTransform:
        config = json.loads((Path(model_dir) / PREPROCESSOR_FILE).read_text())
        size = config.get("size") or {}
        shortest = size.get("shortest_edge") if config.get("do_resize", True) else None
        resize_hw = (size["height"], size["width"]) if config.get("do_resize", True) and "height" in size else None
        crop = config.get("crop_size") if config.get("do_center_crop", False) else None
        crop_hw = (crop["height"], crop["width"]) if crop else None
        if shortest is None and resize_hw is None and crop_hw is None:
            raise ValueError(f"{model_dir}/{PREPROCESSOR_FILE}: neither resize nor crop gives a fixed image size")
        if crop_hw and shortest is not None and max(crop_hw) > shortest:
            raise ValueError(
                f"{model_dir}/{PREPROCESSOR_FILE}: crop {crop_hw} exceeds the resized shortest edge {shortest}"
            )
        return cls(
            shortest_edge=shortest,
            resize_hw=resize_hw,
            crop_hw=crop_hw,
            resample=int(config.get("resample", Image.Resampling.BICUBIC)),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0,
            mean=tuple(config["image_mean"]) if config.get("do_normalize", True) else (0.0, 0.0, 0.0),
            std=tuple(config["image_std"]) if config.get("do_normalize", True) else (1.0, 1.0, 1.0),
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step."""
        if self.resize_hw is not None:
            return self.resize_hw[1], self.resize_hw[0]
        if self.shortest_edge is None:
            return width, height
        if width <= height:
            return self.shortest_edge, int(self.shortest_edge * height / width)
        return int(self.shortest_edge * width / height), self.shortest_edge

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, crop width, crop height) in resized pixels."""
        if self.crop_hw is None:
            return 0, 0, width, height
        crop_h, crop_w = self.crop_hw
        return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Normalised float32 (3, H, W) array."""
        width, height = self.resized_size(*image.size)
        if (width, height) != image.size:
            image = image.resize((width, height), resample=self.resample)
        left, top, crop_w, crop_h = self.crop_box(width, height)
        image = image.crop((left, top, left + crop_w, top + crop_h))
        scaled = np.asarray(image, dtype=np.float32) * np.float32(self.rescale_factor)
        normalised = (scaled - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(normalised.transpose(2, 0, 1))

    def map_box(self, box: Sequence[float], width: int, height: int) -> tuple[tuple[float, float, float, float], float]:
        """A normalised x1, y1, x2, y2 box of the original image in the output image.

        Returns the box clipped to the crop (normalised to it) and the share of the box's
        area left inside the crop.
        """
        new_w, new_h = self.resized_size(width, height)
        left, top, crop_w, crop_h = self.crop_box(new_w, new_h)
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        px = [x1 * new_w - left, x2 * new_w - left]
        py = [y1 * new_h - top, y2 * new_h - top]
        area = max(px[1] - px[0], 0.0) * max(py[1] - py[0], 0.0)
        cx = [min(max(v, 0.0), crop_w) for v in px]
        cy = [min(max(v, 0.0), crop_h) for v in py]
        inside = max(cx[1] - cx[0], 0.0) * max(cy[1] - cy[0], 0.0)
        visible = inside / area if area > 0 else 0.0
        return (cx[0] / crop_w, cy[0] / crop_h, cx[1] / crop_w, cy[1] / crop_h), visible
