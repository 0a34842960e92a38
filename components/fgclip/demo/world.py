"""demo-world: the project's embedded default dataset.

Real JPEG images of procedurally drawn scenes: a few attributed objects (shape, colour,
fill pattern, size) on a plain, gradient or photo background, written as img2dataset
image shards with a short, lossy, web-like alt-text per image, plus a ground-truth
sidecar per shard (`<out>/<split>/truth/NNNNN.jsonl`) that only demo teachers and the QC
truth reviewer read.

Truth record: {"key", "width", "height",
  "background": {"kind": "plain"|"gradient"|"photo", "description", ...},
  "objects": [{"id", "shape", "colour", "pattern", "size", "bbox": [x1, y1, x2, y2]
               normalised (tight box of the drawn pixels), "position"}],
  "relations": [{"subject": id, "predicate": "left of"|"right of"|"above"|"below", "object": id}]}
`position` is the cell of a 3x3 grid holding the box centre: "top left", "top",
"top right", "left", "center", "right", "bottom left", "bottom", "bottom right".
A relation is recorded only when the two boxes are fully separated along that axis.

Every sample is drawn from its own random stream seeded by (seed, split, key), so the
output is byte-identical for the same config and independent of generation order.
"""

from __future__ import annotations

import io
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from fgclip.core.seeding import seeded_random
from fgclip.core.shards import SHARD_PATTERN, ShardSample, write_image_shard, write_jsonl_atomic
from fgclip.core.storage import local_path
from fgclip.demo import draw as demo_draw
from fgclip.demo.config import DemoWorldConfig
from fgclip.text.lexicon import COLOURS, SHAPES, SIZES

log = logging.getLogger(__name__)


SPLIT_KEY_PREFIX = {"train": "tr", "heldout": "ho"}
KEY_DIGITS = 9
SHARD_DIGITS = 5
BOX_DECIMALS = 6  # normalised boxes are rounded so the truth files stay short and stable
URL_SCHEME = "demo"
SOURCE = "fgclip-demo-world"
SMALL, LARGE = SIZES

# What a photo background shows, for captions. Worded without OBJECT_NOUNS so a caption's
# backdrop never becomes a referring expression of something that has no box.
PHOTO_DESCRIPTIONS: dict[str, str] = {
    "astronaut": "a photograph of an astronaut in a spacesuit",
    "coffee": "a close-up photograph of coffee on a saucer",
    "chelsea": "a photograph of a tabby kitten",
    "cat": "a photograph of a tabby kitten",
    "rocket": "a photograph of a rocket on its launch pad",
    "hubble_deep_field": "a telescope image of distant galaxies",
    "immunohistochemistry": "a microscope image of stained tissue",
    "camera": "a black and white photograph of a photographer with a tripod",
    "brick": "a black and white photograph of brickwork",
    "grass": "a black and white photograph of grass",
    "gravel": "a black and white photograph of gravel",
    "colorwheel": "an image of a colour wheel",
}
GENERIC_PHOTO_DESCRIPTION = "a photograph"
TINT_WORD = "light"  # how backdrop colours are named: they are tints, not the lexicon colours

# Short and lossy on purpose, like real alt-text: (objects the text names, template).
ALT_TEXTS: tuple[tuple[int, str], ...] = (
    (2, "{colour0} {shape0} and {colour1} {shape1} on {backdrop}"),
    (2, "{shape0} and {shape1}"),
    (1, "{colour0} {shape0}"),
    (1, "{colour0} {shape0} clip art"),
    (0, "abstract geometric shapes on {backdrop}"),
    (0, "{count} shapes"),
    (0, "colorful shapes illustration"),
)

GRID_THIRDS = 3  # positions name the cell of a 3x3 grid
ROW_WORDS = ("top", "", "bottom")
COLUMN_WORDS = ("left", "", "right")
CENTER = "center"


@dataclass(frozen=True)
class SceneObject:
    id: int
    shape: str
    colour: str
    pattern: str
    size: str
    side: int  # side of the square cell the shape is drawn in, px
    origin: tuple[int, int]  # top-left corner of that cell, px
    box: tuple[int, int, int, int]  # tight box of the drawn pixels, px, x2/y2 exclusive


@dataclass(frozen=True)
class Scene:
    key: str
    width: int
    height: int
    background: dict[str, Any]
    objects: tuple[SceneObject, ...]


@dataclass
class SplitSummary:
    split: str
    shards: int = 0
    samples: int = 0
    objects: int = 0
    photo_backgrounds: int = 0
    photo_fallbacks: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "seconds": round(self.seconds, 3)}


def sample_key(split: str, index: int) -> str:
    return f"{SPLIT_KEY_PREFIX[split]}{index:0{KEY_DIGITS}d}"


def shard_name(number: int) -> str:
    return f"{number:0{SHARD_DIGITS}d}"


# ---------------------------------------------------------------- scene sampling


def _sample_background(config: DemoWorldConfig, rng: random.Random) -> dict[str, Any]:
    # Every draw happens whatever is chosen, so a missing photo changes only its own sample.
    wants_photo = rng.random() < config.photo_background_rate
    photo = rng.choice(config.photo_backgrounds) if config.photo_backgrounds else None
    crop = [round(rng.random(), BOX_DECIMALS), round(rng.random(), BOX_DECIMALS)]
    first, second = rng.sample(config.background_colours, 2)
    gradient = rng.random() < config.gradient_rate
    vertical = rng.choice((True, False))
    if wants_photo and photo is not None and demo_draw.photo_available(photo):
        return {
            "kind": "photo",
            "photo": photo,
            "crop": crop,
            "description": PHOTO_DESCRIPTIONS.get(photo, GENERIC_PHOTO_DESCRIPTION),
        }
    if gradient:
        ends = ("at the top", "at the bottom") if vertical else ("on the left", "on the right")
        background = {
            "kind": "gradient",
            "colours": [first, second],
            "direction": "vertical" if vertical else "horizontal",
            "description": f"a gradient from {TINT_WORD} {first} {ends[0]} to {TINT_WORD} {second} {ends[1]}",
        }
    else:
        background = {"kind": "plain", "colours": [first], "description": f"a plain {TINT_WORD} {first} background"}
    if wants_photo and photo is not None:
        background["fallback_from"] = photo  # the photo was chosen but is not available here
    return background


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection area over the smaller box's area."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return width * height / smaller


def _place(
    config: DemoWorldConfig, rng: random.Random, shape: str, side: int, taken: list[tuple[int, int, int, int]]
) -> tuple[tuple[int, int], tuple[int, int, int, int]] | None:
    """A cell origin whose drawn box stays inside the margins and overlaps little; None if none found."""
    rel = demo_draw.shape_mask(shape, side).getbbox()
    if rel is None:
        return None
    margin_x = round(config.edge_margin * config.image_width)
    margin_y = round(config.edge_margin * config.image_height)
    low_x, high_x = margin_x - rel[0], config.image_width - margin_x - rel[2]
    low_y, high_y = margin_y - rel[1], config.image_height - margin_y - rel[3]
    if low_x > high_x or low_y > high_y:
        return None
    for _ in range(config.placement_attempts):
        x, y = rng.randint(low_x, high_x), rng.randint(low_y, high_y)
        box = (x + rel[0], y + rel[1], x + rel[2], y + rel[3])
        if all(_overlap(box, other) <= config.max_overlap for other in taken):
            return (x, y), box
    return None


def sample_scene(config: DemoWorldConfig, split: str, key: str) -> Scene:
    """What one image shows: background and objects with their boxes (no pixels yet)."""
    rng = seeded_random(config.seed, split, key)
    background = _sample_background(config, rng)
    shorter = min(config.image_width, config.image_height)
    objects: list[SceneObject] = []
    seen: set[tuple[str, str, str, str]] = set()
    # A scene draws its objects' colours and patterns from small palettes: objects that
    # share them can only be told apart by shape or size, so region-level training has to
    # learn shapes too instead of separating every region by colour alone.
    palette = tuple(rng.sample(config.object_colours, min(config.scene_colours, len(config.object_colours))))
    fills = tuple(rng.sample(config.object_patterns, min(config.scene_patterns, len(config.object_patterns))))
    for _ in range(rng.randint(config.min_objects, config.max_objects)):
        size = LARGE if rng.random() < config.large_rate else SMALL
        low, high = config.large_side if size == LARGE else config.small_side
        side = round(rng.uniform(low, high) * shorter)
        attributes = (size, rng.choice(palette), rng.choice(fills), rng.choice(SHAPES))
        if attributes in seen:
            continue  # two identical objects could not be told apart by any caption
        placed = _place(config, rng, attributes[3], side, [o.box for o in objects])
        if placed is None:
            log.debug("%s: no room for a %s object; left out", key, size)
            continue
        seen.add(attributes)
        objects.append(SceneObject(len(objects), attributes[3], attributes[1], attributes[2], size, side, *placed))
    return Scene(key, config.image_width, config.image_height, background, tuple(objects))


# ---------------------------------------------------------------- truth and alt-text


def _position(box: tuple[int, int, int, int], width: int, height: int) -> str:
    column = min(GRID_THIRDS - 1, int((box[0] + box[2]) / 2 / width * GRID_THIRDS))
    row = min(GRID_THIRDS - 1, int((box[1] + box[3]) / 2 / height * GRID_THIRDS))
    return " ".join(word for word in (ROW_WORDS[row], COLUMN_WORDS[column]) if word) or CENTER


def relations(objects: tuple[SceneObject, ...]) -> list[dict[str, Any]]:
    """Spatial relations between every pair whose boxes are separated along an axis."""
    found = []
    for index, a in enumerate(objects):
        for b in objects[index + 1 :]:
            if a.box[2] <= b.box[0]:
                found.append({"subject": a.id, "predicate": "left of", "object": b.id})
            elif b.box[2] <= a.box[0]:
                found.append({"subject": a.id, "predicate": "right of", "object": b.id})
            if a.box[3] <= b.box[1]:
                found.append({"subject": a.id, "predicate": "above", "object": b.id})
            elif b.box[3] <= a.box[1]:
                found.append({"subject": a.id, "predicate": "below", "object": b.id})
    return found


def truth_record(scene: Scene) -> dict[str, Any]:
    def normalised(box: tuple[int, int, int, int]) -> list[float]:
        x1, y1, x2, y2 = box
        return [
            round(x1 / scene.width, BOX_DECIMALS),
            round(y1 / scene.height, BOX_DECIMALS),
            round(x2 / scene.width, BOX_DECIMALS),
            round(y2 / scene.height, BOX_DECIMALS),
        ]

    return {
        "key": scene.key,
        "width": scene.width,
        "height": scene.height,
        "background": scene.background,
        "objects": [
            {
                "id": o.id,
                "shape": o.shape,
                "colour": o.colour,
                "pattern": o.pattern,
                "size": o.size,
                "bbox": normalised(o.box),
                "position": _position(o.box, scene.width, scene.height),
            }
            for o in scene.objects
        ],
        "relations": relations(scene.objects),
    }


def alt_text(scene: Scene, rng: random.Random) -> str:
    """A short web-like alt-text that names at most two objects, by colour and shape only."""
    usable = [template for needs, template in ALT_TEXTS if needs <= len(scene.objects)]
    template = rng.choice(usable)
    named = rng.sample(scene.objects, min(2, len(scene.objects)))
    background = scene.background
    backdrop = (
        "a photo"
        if background["kind"] == "photo"
        else (
            "a gradient background" if background["kind"] == "gradient" else f"a {background['colours'][0]} background"
        )
    )
    fields: dict[str, Any] = {"backdrop": backdrop, "count": len(scene.objects)}
    for index, obj in enumerate(named):
        fields[f"colour{index}"], fields[f"shape{index}"] = obj.colour, obj.shape
    return template.format(**fields)


# ---------------------------------------------------------------- pixels


def render(scene: Scene, config: DemoWorldConfig) -> Image.Image:
    background = scene.background
    if background["kind"] == "photo":
        pixels = demo_draw.photo_background(background["photo"], scene.width, scene.height, tuple(background["crop"]))
    else:
        colours = [demo_draw.tint(COLOURS[name], config.background_tint) for name in background["colours"]]
        if background["kind"] == "gradient":
            pixels = demo_draw.gradient_background(
                scene.width, scene.height, colours[0], colours[1], background["direction"] == "vertical"
            )
        else:
            pixels = demo_draw.plain_background(scene.width, scene.height, colours[0])
    canvas = Image.fromarray(pixels, "RGB")
    for obj in scene.objects:
        period = max(config.pattern_min_period_px, round(config.pattern_period * obj.side))
        demo_draw.paste_object(canvas, obj.shape, COLOURS[obj.colour], obj.pattern, obj.side, period, obj.origin)
    return canvas


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def generate_sample(config: DemoWorldConfig, split: str, index: int) -> tuple[ShardSample, dict[str, Any], Scene]:
    key = sample_key(split, index)
    scene = sample_scene(config, split, key)
    caption = alt_text(scene, seeded_random(config.seed, split, key, "alt-text"))
    meta = {"width": scene.width, "height": scene.height, "url": f"{URL_SCHEME}://{split}/{key}", "source": SOURCE}
    sample = ShardSample(key, encode_jpeg(render(scene, config), config.jpeg_quality), caption, meta)
    return sample, truth_record(scene), scene


# ---------------------------------------------------------------- splits


def split_dirs(out: str | Path, split: str) -> tuple[Path, Path]:
    """(images folder, truth folder) of one split."""
    root = local_path(out) / split
    return root / "images", root / "truth"


def _remove_stale(folder: Path, keep: int, suffixes: tuple[str, ...]) -> None:
    """Delete shards numbered `keep` and above (left from a run with more shards)."""
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        stem, _, suffix = path.name.partition(".")
        if f".{suffix}" in suffixes and SHARD_PATTERN.match(stem) and int(stem) >= keep:
            log.info("removing stale shard file %s", path)
            path.unlink()


def generate_split(config: DemoWorldConfig, out: str | Path, split: str, *, progress: bool = True) -> SplitSummary:
    """Write all image shards and truth sidecars of `split` ("train" or "heldout")."""
    if split not in SPLIT_KEY_PREFIX:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_KEY_PREFIX)}")
    shards = config.train_shards if split == "train" else config.heldout_shards
    images_dir, truth_dir = split_dirs(out, split)
    summary = SplitSummary(split)
    started = time.perf_counter()
    bar = tqdm(total=shards * config.samples_per_shard, desc=f"demo-world {split}", unit="img", disable=not progress)
    with bar:
        for number in range(shards):
            samples, truths = [], []
            for offset in range(config.samples_per_shard):
                sample, truth, scene = generate_sample(config, split, number * config.samples_per_shard + offset)
                samples.append(sample)
                truths.append(truth)
                summary.objects += len(scene.objects)
                summary.photo_backgrounds += scene.background["kind"] == "photo"
                summary.photo_fallbacks += "fallback_from" in scene.background
                bar.update()
            summary.samples += write_image_shard(images_dir, shard_name(number), samples)
            write_jsonl_atomic(truth_dir / f"{shard_name(number)}.jsonl", truths)
            summary.shards += 1
    _remove_stale(images_dir, shards, (".tar", ".parquet"))
    _remove_stale(truth_dir, shards, (".jsonl",))
    summary.seconds = time.perf_counter() - started
    log.info("demo-world %s: %s", split, summary.as_dict())
    return summary
