"""CLIP image preprocessing for training, with the box geometry that goes with it.

Resize (shortest edge, or to a fixed height x width), centre crop, rescale, normalise:
the arithmetic of transformers' CLIPImageProcessor, read from the model's saved
`preprocessor_config.json`. It is done here rather than by the processor because region
boxes must follow the crop: `map_box` moves a box of the original image into the output.

The training loader splits it in two for speed: `decode` + `pixels` in the DataLoader
workers (uint8, a quarter of the bytes to hand over), `PixelNormalisation` batched where
the pixels are used (on the accelerator). A large JPEG is decoded at a reduced scale, and
the resize runs torch's antialiased uint8 kernel, which implements Pillow's filters (in
other fixed-point arithmetic: a level or two apart on a fraction of a percent of the
pixels); `__call__` keeps Pillow's exact arithmetic (the processor's).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PREPROCESSOR_FILE = "preprocessor_config.json"
#: Pillow filters that torch's antialiased interpolation implements (uint8, channels last).
_TORCH_MODES = {
    int(Image.Resampling.BICUBIC): "bicubic",
    int(Image.Resampling.BILINEAR): "bilinear",
}


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
        scaled = np.asarray(self.exact_pixels(image), dtype=np.float32) * np.float32(self.rescale_factor)
        normalised = (scaled - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(normalised.transpose(2, 0, 1))

    @property
    def normalisation(self) -> PixelNormalisation:
        return PixelNormalisation(self.rescale_factor, self.mean, self.std)

    def decode(self, data: bytes) -> tuple[Image.Image, tuple[int, int]]:
        """An encoded image, decoded for this transform: (RGB image, the image's full size).

        A JPEG at least twice the resized size both ways is decoded at a reduced scale
        (libjpeg's DCT scaling, 1/2 to 1/8: a fraction of a full decode's work), never
        below the resized size. Boxes are mapped with the full size, so they stay exact.
        Raises what PIL raises for data it cannot decode.
        """
        raw = Image.open(io.BytesIO(data))
        full_size = raw.size
        width, height = self.resized_size(*full_size)
        if raw.format == "JPEG" and min(full_size[0] // width, full_size[1] // height) >= 2:
            raw.draft(raw.mode, (width, height))
        image = raw if raw.mode == "RGB" else raw.convert("RGB")
        image.load()
        return image, full_size

    def pixels(self, image: Image.Image, full_size: tuple[int, int]) -> np.ndarray:
        """The output image as uint8 (H, W, 3): resize, then centre crop (no rescale, no
        normalisation). `full_size` is the image's size before a reduced-scale decode.

        The resize runs torch's antialiased uint8 kernel (Pillow's bicubic / bilinear
        filter, vectorised: about 4x faster than Pillow's; a level or two apart on a
        fraction of a percent of the pixels); `__call__` keeps Pillow's exact arithmetic.
        """
        width, height = self.resized_size(*full_size)
        left, top, crop_w, crop_h = self.crop_box(width, height)
        inside = left >= 0 and top >= 0 and left + crop_w <= width and top + crop_h <= height
        if image.size == (width, height) and inside:
            return np.asarray(image)[top : top + crop_h, left : left + crop_w]
        if self.resample in _TORCH_MODES and inside:
            array = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0)  # channels-last uint8
            resized = torch.nn.functional.interpolate(
                array,
                size=(height, width),
                mode=_TORCH_MODES[self.resample],
                antialias=True,
            )
            return resized[0, :, top : top + crop_h, left : left + crop_w].permute(1, 2, 0).numpy()
        if (width, height) != image.size:
            image = image.resize((width, height), resample=self.resample)
        return np.asarray(image.crop((left, top, left + crop_w, top + crop_h)))

    def exact_pixels(self, image: Image.Image) -> np.ndarray:
        """uint8 (H, W, 3) by Pillow's resize and crop: exactly what `__call__` normalises."""
        width, height = self.resized_size(*image.size)
        if (width, height) != image.size:
            image = image.resize((width, height), resample=self.resample)
        left, top, crop_w, crop_h = self.crop_box(width, height)
        return np.asarray(image.crop((left, top, left + crop_w, top + crop_h)))

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


@dataclass(frozen=True)
class PixelNormalisation:
    """Rescale and normalise uint8 pixels batched, where they are used (on the device).

    The same float32 operations in the same order as `ImageTransform.__call__`, so the
    values are identical to normalising in the loader.
    """

    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, H, W) -> contiguous float32 (..., 3, H, W) on the same device."""
        values = pixels.to(torch.float32) * self.rescale_factor
        mean = torch.tensor(self.mean, dtype=torch.float32, device=values.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=values.device).view(3, 1, 1)
        return ((values - mean) / std).contiguous()
