"""What happens to a downloaded file before it is stored: it must be an image that
decodes whole, within the size limits; it is turned upright (EXIF), flattened to RGB
(transparency on white), downscaled so its shorter side is the stored side (resolution x
margin; smaller images are kept as they are) and encoded as JPEG.

Pillow reads the size from the header before decoding, so a decompression bomb is refused
without being decoded, and a truncated file fails here (Pillow never pads a cut JPEG
with grey, as OpenCV does), not at training time."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from fgclip.data.ingest.config import IngestConfig

_MARKUP = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")


@dataclass(frozen=True)
class Prepared:
    """A stored image (jpeg set) or the failure kind and detail (jpeg None)."""

    jpeg: bytes | None
    width: int = 0
    height: int = 0
    original_width: int = 0
    original_height: int = 0
    failure: str | None = None
    detail: str = ""


def _failed(kind: str, detail: str, width: int = 0, height: int = 0) -> Prepared:
    return Prepared(None, original_width=width, original_height=height, failure=kind, detail=detail)


def prepare_image(data: bytes, config: IngestConfig) -> Prepared:
    """The stored JPEG of one downloaded file, or why it is not stored."""
    if not data:
        return _failed("not_an_image", "empty response body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            image: Image.Image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        return _failed("too_large", str(error))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        head = data[:256].lstrip().lower()
        what = "an HTML/XML page" if head.startswith(_MARKUP) else f"{len(data)} bytes of unknown type"
        return _failed("not_an_image", f"{what}: {error}")
    width, height = image.size
    if width * height > config.max_megapixels * 1_000_000:
        return _failed("too_large", f"{width}x{height} is over {config.max_megapixels} megapixels", width, height)
    if min(width, height) < config.min_side:
        return _failed("too_small", f"{width}x{height}: shorter side under {config.min_side} px", width, height)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            image = ImageOps.exif_transpose(image) or image
            rgb = _flatten(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return _failed("decode_error", f"{image.format or 'image'} {width}x{height}: {error}", width, height)
    side = config.stored_side
    if min(rgb.size) > side:
        scale = side / min(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=config.jpeg_quality, optimize=True)
    return Prepared(out.getvalue(), rgb.width, rgb.height, width, height)


def _flatten(image: Image.Image) -> Image.Image:
    """RGB; transparent pixels become white (as img2dataset does), palettes are expanded."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
