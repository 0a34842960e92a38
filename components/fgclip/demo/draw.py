"""Pixels of the demo world: backgrounds, shape masks and fill patterns.

Every function here is deterministic in its arguments (no randomness): the scene
sampler in `fgclip.demo.world` decides *what* goes where, this module only decides
*how* it looks. Shapes are drawn as a binary mask in a square cell; the tight box of
that mask is the object's ground-truth box, so truth and pixels cannot disagree.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]

# Geometry that defines what each shape *is* (fractions of its cell), not tuning knobs.
STAR_POINTS = 5
STAR_INNER_RATIO = 0.45  # radius of the star's inner vertices / outer radius
RING_HOLE_RATIO = 0.55  # hole diameter / ring diameter
CROSS_ARM_RATIO = 1 / 3  # arm thickness / cell side
HEXAGON_SIDES = 6
DOT_RADIUS_RATIO = 0.3  # dot radius / pattern period

# Pattern marks lean towards a contrasting tone (dark on bright objects, light on dark
# ones) but only part of the way: full contrast would make a "white checkered" and a
# "black checkered" object the same picture, half-way keeps the colour recognisable.
PATTERN_LIGHT: RGB = (240, 240, 240)
PATTERN_DARK: RGB = (30, 30, 30)
PATTERN_MARK_STRENGTH = 0.6  # 0: marks in the object colour, 1: marks in the contrasting tone
BRIGHT_LUMA = 150  # ITU-R BT.601 luma above which an object counts as bright
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
WHITE: RGB = (255, 255, 255)
MASK_ON = 255

# skimage.data members that are helpers, not images: never call them as a photo loader.
NOT_PHOTO_LOADERS = frozenset({"download_all", "lbp_frontal_face_cascade_filename"})


# ---------------------------------------------------------------- shapes


def _circle(draw: ImageDraw.ImageDraw, last: int) -> None:
    draw.ellipse([0, 0, last, last], fill=MASK_ON)


def _square(draw: ImageDraw.ImageDraw, last: int) -> None:
    draw.rectangle([0, 0, last, last], fill=MASK_ON)


def _triangle(draw: ImageDraw.ImageDraw, last: int) -> None:
    draw.polygon([(last / 2, 0), (last, last), (0, last)], fill=MASK_ON)


def _diamond(draw: ImageDraw.ImageDraw, last: int) -> None:
    middle = last / 2
    draw.polygon([(middle, 0), (last, middle), (middle, last), (0, middle)], fill=MASK_ON)


def _hexagon(draw: ImageDraw.ImageDraw, last: int) -> None:
    middle = last / 2
    step = 2 * math.pi / HEXAGON_SIDES
    draw.polygon(
        [(middle + middle * math.cos(i * step), middle + middle * math.sin(i * step)) for i in range(HEXAGON_SIDES)],
        fill=MASK_ON,
    )


def _star(draw: ImageDraw.ImageDraw, last: int) -> None:
    middle = last / 2
    points = []
    for i in range(2 * STAR_POINTS):
        radius = middle if i % 2 == 0 else middle * STAR_INNER_RATIO
        angle = -math.pi / 2 + i * math.pi / STAR_POINTS  # first point straight up
        points.append((middle + radius * math.cos(angle), middle + radius * math.sin(angle)))
    draw.polygon(points, fill=MASK_ON)


def _ring(draw: ImageDraw.ImageDraw, last: int) -> None:
    draw.ellipse([0, 0, last, last], fill=MASK_ON)
    inset = last * (1 - RING_HOLE_RATIO) / 2
    draw.ellipse([inset, inset, last - inset, last - inset], fill=0)


def _cross(draw: ImageDraw.ImageDraw, last: int) -> None:
    arm = last * CROSS_ARM_RATIO
    low, high = (last - arm) / 2, (last + arm) / 2
    draw.rectangle([low, 0, high, last], fill=MASK_ON)
    draw.rectangle([0, low, last, high], fill=MASK_ON)


SHAPE_DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, int], None]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "diamond": _diamond,
    "hexagon": _hexagon,
    "star": _star,
    "ring": _ring,
    "cross": _cross,
}


@cache
def shape_mask(shape: str, side: int) -> Image.Image:
    """An L-mode mask (255 inside) of `shape` filling a side x side cell."""
    if shape not in SHAPE_DRAWERS:
        raise ValueError(f"no drawer for shape {shape!r}; known: {sorted(SHAPE_DRAWERS)}")
    mask = Image.new("L", (side, side), 0)
    SHAPE_DRAWERS[shape](ImageDraw.Draw(mask), side - 1)
    return mask


# ---------------------------------------------------------------- patterns


def pattern_colour(colour: RGB) -> RGB:
    luma = sum(weight * channel for weight, channel in zip(LUMA_WEIGHTS, colour))
    contrast = PATTERN_DARK if luma > BRIGHT_LUMA else PATTERN_LIGHT
    return tuple(round(c + (t - c) * PATTERN_MARK_STRENGTH) for c, t in zip(colour, contrast))  # type: ignore[return-value]


def _stripes(xs: np.ndarray, ys: np.ndarray, period: int) -> np.ndarray:
    return np.floor((xs + ys) / (period / 2)) % 2 == 1  # diagonal bands, half a period wide


def _dots(xs: np.ndarray, ys: np.ndarray, period: int) -> np.ndarray:
    centre = (period - 1) / 2
    return ((xs % period) - centre) ** 2 + ((ys % period) - centre) ** 2 <= (period * DOT_RADIUS_RATIO) ** 2


def _checkers(xs: np.ndarray, ys: np.ndarray, period: int) -> np.ndarray:
    half = period / 2
    return (np.floor(xs / half) + np.floor(ys / half)) % 2 == 1


PATTERN_MARKS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None] = {
    "solid": None,
    "striped": _stripes,
    "dotted": _dots,
    "checkered": _checkers,
}


def pattern_texture(colour: RGB, pattern: str, side: int, period: int) -> np.ndarray:
    """side x side x 3 texture: the object colour with pattern marks in a contrasting tone."""
    if pattern not in PATTERN_MARKS:
        raise ValueError(f"no drawer for pattern {pattern!r}; known: {sorted(PATTERN_MARKS)}")
    texture = np.empty((side, side, 3), dtype=np.uint8)
    texture[:] = colour
    marks = PATTERN_MARKS[pattern]
    if marks is not None:
        ys, xs = np.indices((side, side))
        texture[marks(xs, ys, period)] = pattern_colour(colour)
    return texture


def paste_object(
    canvas: Image.Image, shape: str, colour: RGB, pattern: str, side: int, period: int, origin: tuple[int, int]
) -> None:
    """Draw one object with its cell's top-left corner at `origin` (in place)."""
    texture = Image.fromarray(pattern_texture(colour, pattern, side, period), "RGB")
    canvas.paste(texture, origin, shape_mask(shape, side))


# ---------------------------------------------------------------- backgrounds


def tint(colour: RGB, amount: float) -> RGB:
    """`colour` mixed towards white by `amount` (0: unchanged, 1: white)."""
    return tuple(round(c + (w - c) * amount) for c, w in zip(colour, WHITE))  # type: ignore[return-value]


def plain_background(width: int, height: int, colour: RGB) -> np.ndarray:
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = colour
    return canvas


def gradient_background(width: int, height: int, start: RGB, end: RGB, vertical: bool) -> np.ndarray:
    """A linear blend from `start` (top or left) to `end` (bottom or right)."""
    steps = height if vertical else width
    ramp = np.linspace(0.0, 1.0, steps)[:, None]
    line = np.asarray(start, dtype=np.float64) * (1 - ramp) + np.asarray(end, dtype=np.float64) * ramp
    line = np.round(line).astype(np.uint8)
    if vertical:
        return np.broadcast_to(line[:, None, :], (height, width, 3)).copy()
    return np.broadcast_to(line[None, :, :], (height, width, 3)).copy()


@cache
def load_photo(name: str) -> Image.Image | None:
    """An RGB photo that scikit-image ships, or None (logged) when it is not available.

    Some skimage.data images are fetched on first use; offline they fail, and a
    configured name may simply not exist in the installed version. Either way the
    demo world falls back to a drawn background instead of stopping.
    """
    import skimage.data
    from skimage.util import img_as_ubyte

    loader = getattr(skimage.data, name, None)
    if name.startswith("_") or name in NOT_PHOTO_LOADERS or not callable(loader):
        log.warning("photo background %r is not an image of skimage.data; using a drawn background instead", name)
        return None
    try:
        pixels = np.asarray(loader())
    except (OSError, ValueError, ImportError, RuntimeError) as error:
        log.warning("photo background %r could not be loaded (%s); using a drawn background instead", name, error)
        return None
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[:, :, :3]  # drop alpha
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        log.warning(
            "photo background %r has shape %s, not an image; using a drawn background instead", name, pixels.shape
        )
        return None
    return Image.fromarray(img_as_ubyte(pixels), "RGB")


@cache
def _photo_cover(name: str, width: int, height: int) -> Image.Image | None:
    """The photo scaled (aspect kept) so it covers width x height."""
    photo = load_photo(name)
    if photo is None:
        return None
    scale = max(width / photo.width, height / photo.height)
    size = (max(width, math.ceil(photo.width * scale)), max(height, math.ceil(photo.height * scale)))
    return photo.resize(size, Image.Resampling.BILINEAR)


def photo_available(name: str) -> bool:
    return load_photo(name) is not None


def photo_background(name: str, width: int, height: int, crop: tuple[float, float]) -> np.ndarray:
    """A width x height crop of the covering photo; `crop` places it (0..1 along x, y)."""
    cover = _photo_cover(name, width, height)
    if cover is None:
        raise ValueError(f"photo background {name!r} is not available")
    left = round(crop[0] * (cover.width - width))
    top = round(crop[1] * (cover.height - height))
    return np.asarray(cover.crop((left, top, left + width, top + height)))
