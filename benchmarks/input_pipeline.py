"""Training input pipeline: our loader against a plain webdataset + PIL loader, same shards.

Both loaders read the same img2dataset-format shards of photo-like JPEGs (mosaics of the
real photos scikit-image ships, with sensor-like grain, at sizes drawn from 320-1024 px
each way), with the same number of DataLoader workers and the same output size, one
after the other in this process (their workers are its children), alternating, repeated.

plain  the usual loader (the shape of the shared anchor `loader_throughput.py`, written
       here): webdataset -> decode("pil") -> resize the shortest edge (bicubic) -> centre
       crop -> float tensor rescaled and normalised -> batched; it ignores the
       annotations and returns the caption as a string.
ours   `fgclip.train.data.make_loader`, the trainer's loader as it runs: shards split by
       rank and worker, annotation join, shuffle buffer, decode (reduced-scale for large
       JPEGs), resize + crop, tokenised and padded texts, exact-resume positions, uint8
       pixels that the training step normalises on its device. Stage 1 joins the long
       captions (two texts per image, like the plain loader's one caption); stage 2 also
       the regions and their hard negatives (about 40 more texts per image to tokenise,
       boxes mapped through the crop, masks): work the plain loader does not do at all.

Per loader and worker count it prints images/s, images/s per worker (wall time) and
images per CPU second (the workers' and this process's CPU time: images/s per core, which
other processes on a shared machine distort far less than wall time), the best of the
passes, then the ratios ours / plain. `--resized` adds the
same measurement on a copy of the shards resized at ingest (shortest edge = the output
size), reported beside the main ratio, not in it.

    python benchmarks/input_pipeline.py                     # 2048 samples, workers 1 and 2
    python benchmarks/input_pipeline.py --workers 1,4,8,16 --samples 8000 --resized
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

try:
    import fgclip  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "components"))

from fgclip.core.shards import (
    ShardSample,
    annotation_path,
    write_image_shard,
    write_jsonl_atomic,
)
from fgclip.text.lexicon import ATTRIBUTE_LEXICON, OBJECT_NOUNS

#: Colour photos of scikit-image's bundled data (no download needed).
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "cat",
)
#: CLIP's normalisation (the plain loader's constants; ours reads them from the model folder).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FILLER = (
    "with",
    "and",
    "near",
    "on",
    "under",
    "beside",
    "in",
    "front",
    "of",
    "behind",
    "while",
    "the",
    "a",
    "its",
    "bright",
    "dark",
    "soft",
    "light",
    "shadow",
    "background",
    "scene",
    "photo",
    "showing",
    "standing",
    "sitting",
    "lying",
    "holding",
    "next",
    "to",
    "at",
    "edge",
    "corner",
    "surface",
    "outdoor",
    "indoor",
)


# ----------------------------------------------------------------------- the data


def load_photos() -> list[np.ndarray]:
    import skimage.data

    return [np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in PHOTOS]


def photo_like(photos: list[np.ndarray], width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """A width x height picture: a 2 x 2 mosaic of crops of real photos near their native
    scale (not upscaled: that would make smooth, cheap-to-decode images) plus grain."""
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    half_w, half_h = (width + 1) // 2, (height + 1) // 2
    for top in (0, half_h):
        for left in (0, half_w):
            tile_w, tile_h = min(half_w, width - left), min(half_h, height - top)
            photo = photos[int(rng.integers(len(photos)))]
            scale = float(rng.uniform(0.8, 1.25))
            # never smaller than the tile: upscale only as much as needed to cover it
            scale = max(scale, tile_w / photo.shape[1], tile_h / photo.shape[0])
            size = (
                max(tile_w, round(photo.shape[1] * scale)),
                max(tile_h, round(photo.shape[0] * scale)),
            )
            source = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BILINEAR))
            y = int(rng.integers(0, source.shape[0] - tile_h + 1))
            x = int(rng.integers(0, source.shape[1] - tile_w + 1))
            canvas[top : top + tile_h, left : left + tile_w] = source[y : y + tile_h, x : x + tile_w]
    grain = rng.normal(0.0, 3.0, canvas.shape)
    return Image.fromarray(np.clip(canvas + grain, 0, 255).astype(np.uint8))


def words(rng: random.Random, count: int) -> str:
    pool = rng.choice((FILLER, tuple(OBJECT_NOUNS), *ATTRIBUTE_LEXICON.values()))
    return " ".join(rng.choice(pool) for _ in range(count))


def expression(rng: random.Random) -> tuple[str, list[str]]:
    """A referring expression (attribute words + a noun) and 10 hard negatives, each one
    attribute swapped, as the negatives stage writes them."""
    classes = rng.sample(sorted(ATTRIBUTE_LEXICON), rng.randint(1, 3))
    chosen = {name: rng.choice(ATTRIBUTE_LEXICON[name]) for name in classes}
    noun = rng.choice(sorted(OBJECT_NOUNS))
    text = "a " + " ".join(chosen.values()) + " " + noun
    negatives = []
    for index in range(10):
        name = classes[index % len(classes)]
        swapped = dict(
            chosen,
            **{name: rng.choice([w for w in ATTRIBUTE_LEXICON[name] if w != chosen[name]])},
        )
        negatives.append("a " + " ".join(swapped.values()) + " " + noun)
    return text, negatives


def sample_annotations(key: str, rng: random.Random) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(alt text, captions record, regions record, negatives record) of one sample, sized
    like FineHARD's: a long caption of 60-150 words, 1-6 regions with 10 negatives each."""
    alt = words(rng, rng.randint(5, 15))
    caption = {
        "key": key,
        "long_caption": ". ".join(words(rng, rng.randint(8, 20)) for _ in range(rng.randint(5, 9))),
    }
    regions, negatives = [], []
    for _ in range(rng.randint(1, 6)):
        short, negs = expression(rng)
        x1, y1 = rng.uniform(0.0, 0.7), rng.uniform(0.0, 0.7)
        box = [
            round(x1, 4),
            round(y1, 4),
            round(min(1.0, x1 + rng.uniform(0.1, 0.4)), 4),
            round(min(1.0, y1 + rng.uniform(0.1, 0.4)), 4),
        ]
        regions.append(
            {
                "bbox": box,
                "score": 0.9,
                "short_expr": short,
                "long_expr": short + " " + words(rng, rng.randint(6, 16)),
            }
        )
        negatives.append({"short_expr_negs": negs})
    return (
        alt,
        caption,
        {"key": key, "regions": regions},
        {"key": key, "regions": negatives},
    )


@dataclass(frozen=True)
class Dataset:
    images: Path
    captions: Path
    regions: Path
    negatives: Path
    model_dir: Path  # tokenizer + preprocessor_config.json: all a loader needs of a model
    samples: int
    bytes_per_pixel: float


def build_dataset(
    root: Path,
    samples: int,
    shards: int,
    min_side: int,
    max_side: int,
    output_size: int,
    seed: int,
) -> Dataset:
    """Shards + annotations + a tokenizer under `root` (reused when already built)."""
    folders = {name: root / name for name in ("images", "captions", "regions", "negatives", "model")}
    done = root / "built.json"
    if done.is_file():
        info = json.loads(done.read_text())
        return Dataset(
            folders["images"],
            folders["captions"],
            folders["regions"],
            folders["negatives"],
            folders["model"],
            info["samples"],
            info["bytes_per_pixel"],
        )
    photos = load_photos()
    np_rng, rng = np.random.default_rng(seed), random.Random(seed)
    per_shard = -(-samples // shards)
    texts: list[str] = []
    encoded_bytes = pixels = 0
    for shard in range(shards):
        name = f"{shard:05d}"
        images, captions, regions, negatives = [], [], [], []
        for index in range(shard * per_shard, min(samples, (shard + 1) * per_shard)):
            key = f"s{index:08d}"
            width, height = (int(v) for v in np_rng.integers(min_side, max_side + 1, size=2))
            buffer = io.BytesIO()
            photo_like(photos, width, height, np_rng).save(buffer, "JPEG", quality=90)
            alt, caption, region, negative = sample_annotations(key, rng)
            images.append(ShardSample(key, buffer.getvalue(), alt, {"width": width, "height": height}))
            captions.append(caption)
            regions.append(region)
            negatives.append(negative)
            texts += [alt, caption["long_caption"]] + [r["long_expr"] for r in region["regions"]]
            encoded_bytes += len(buffer.getvalue())
            pixels += width * height
        write_image_shard(folders["images"], name, images)
        for kind, records in (
            ("captions", captions),
            ("regions", regions),
            ("negatives", negatives),
        ):
            write_jsonl_atomic(annotation_path(folders[kind], name), records)
    write_model_folder(folders["model"], texts, output_size)
    info = {"samples": samples, "bytes_per_pixel": round(encoded_bytes / pixels, 3)}
    done.write_text(json.dumps(info))
    return build_dataset(root, samples, shards, min_side, max_side, output_size, seed)


def write_model_folder(folder: Path, texts: list[str], output_size: int) -> None:
    """What the loader reads of a model: a CLIP BPE tokenizer (trained here on the
    captions: no hub) and a CLIP image processor config at `output_size`."""
    from transformers import CLIPImageProcessor

    from fgclip.train.tokenizer import train_clip_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    train_clip_tokenizer(texts, folder, vocab_size=4000, min_frequency=2, model_max_length=77)
    CLIPImageProcessor(
        size={"shortest_edge": output_size},
        crop_size={"height": output_size, "width": output_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    ).save_pretrained(str(folder))


def resized_copy(data: Dataset, root: Path, edge: int) -> Dataset:
    """The same shards with every image resized so its shortest edge is `edge` (what an
    ingest step that resizes writes), same keys and annotations."""
    import tarfile

    from fgclip.core.shards import list_shards

    out = root / "images"
    done = root / "built.json"
    if not done.is_file():
        encoded_bytes = pixels = 0
        for shard in list_shards(data.images):
            samples = []
            with tarfile.open(data.images / f"{shard}.tar") as archive:
                members = {m.name: m for m in archive.getmembers()}
                for name in sorted(members):
                    if not name.endswith(".jpg"):
                        continue
                    key = name[: -len(".jpg")]
                    image = Image.open(io.BytesIO(archive.extractfile(members[name]).read())).convert("RGB")
                    scale = edge / min(image.size)
                    if scale < 1:
                        image = image.resize(
                            (round(image.width * scale), round(image.height * scale)),
                            Image.Resampling.BICUBIC,
                        )
                    buffer = io.BytesIO()
                    image.save(buffer, "JPEG", quality=90)
                    caption = archive.extractfile(members[key + ".txt"]).read().decode("utf-8")
                    samples.append(
                        ShardSample(
                            key,
                            buffer.getvalue(),
                            caption,
                            {"width": image.width, "height": image.height},
                        )
                    )
                    encoded_bytes += len(buffer.getvalue())
                    pixels += image.width * image.height
            write_image_shard(out, shard, samples)
        done.write_text(json.dumps({"bytes_per_pixel": round(encoded_bytes / pixels, 3)}))
    info = json.loads(done.read_text())
    return Dataset(
        out,
        data.captions,
        data.regions,
        data.negatives,
        data.model_dir,
        data.samples,
        info["bytes_per_pixel"],
    )


# -------------------------------------------------------------------- the loaders


def plain_transform(output_size: int) -> Callable[[Image.Image], torch.Tensor]:
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)

    def transform(image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        scale = output_size / min(image.size)
        size = (
            max(output_size, round(image.width * scale)),
            max(output_size, round(image.height * scale)),
        )
        image = image.resize(size, Image.Resampling.BICUBIC)
        left, top = (image.width - output_size) // 2, (image.height - output_size) // 2
        image = image.crop((left, top, left + output_size, top + output_size))
        values = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)
        return (values - mean) / std

    return transform


def _caption(text: str) -> str:
    return text


def plain_loader(data: Dataset, workers: int, batch_size: int, output_size: int) -> Iterable[Any]:
    import webdataset as wds

    from fgclip.train.data import list_shard_urls

    dataset = (
        wds.WebDataset(
            list_shard_urls(data.images),
            shardshuffle=False,
            nodesplitter=wds.split_by_node,
            workersplitter=wds.split_by_worker,
            empty_check=False,
        )
        .decode("pil")
        .to_tuple("jpg", "txt")
        .map_tuple(plain_transform(output_size), _caption)
        .batched(batch_size, partial=False)
    )
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers)


def our_loader(data: Dataset, workers: int, batch_size: int, stage: int) -> Iterable[Any]:
    from fgclip.train.data import (
        DataPosition,
        list_shard_urls,
        make_loader,
        plan_epoch,
        real_batches,
    )
    from fgclip.train.examples import AnnotationDirs, StreamSettings

    dirs = AnnotationDirs(
        str(data.captions),
        str(data.regions) if stage == 2 else None,
        str(data.negatives) if stage == 2 else None,
    )
    settings = StreamSettings(
        model_dir=str(data.model_dir),
        dirs=dirs,
        stage=stage,
        seed=0,
        batch_size=batch_size,
        max_boxes=4,
        max_negatives=10,
        short_prefix="a photo of ",
        short_text_length=77,
        long_text_length=248,
        min_box_visible_fraction=0.5,
        long_expression_rate=0.5,
        shuffle_buffer=256,
        log_skipped_samples=20,
    )
    plan = plan_epoch(
        list_shard_urls(data.images),
        world_size=1,
        workers=workers,
        batch_size=batch_size,
        samples_per_epoch=None,
    )

    class Loader:
        def __iter__(self) -> Iterator[dict[str, Any]]:
            return real_batches(make_loader(settings, plan, DataPosition(0)))

    return Loader()


def batch_images(batch: Any) -> int:
    return len(batch["keys"]) if isinstance(batch, dict) else int(batch[0].shape[0])


def measure(loader: Iterable[Any], workers: int) -> dict[str, float]:
    """One pass: images, wall seconds and the CPU seconds of this process and its
    (joined) workers."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = time.process_time()
    start = time.perf_counter()
    images = sum(batch_images(batch) for batch in loader)
    seconds = time.perf_counter() - start
    own = time.process_time() - own
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    cpu = own + worker_cpu
    return {
        "images": images,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "images_per_s": round(images / seconds, 1),
        "images_per_s_per_worker": round(images / seconds / max(1, workers), 1),
        "images_per_cpu_s": round(images / cpu, 1),
    }


def normalisation_cost(data: Dataset, output_size: int, batch_size: int) -> float:
    """ms per image of the normalisation ours leaves to the training step, done on this CPU."""
    from fgclip.train.images import ImageTransform

    normalise = ImageTransform.from_pretrained(data.model_dir).normalisation
    pixels = torch.randint(0, 256, (batch_size, output_size, output_size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    normalise(pixels)
    start = time.perf_counter()
    for _ in range(5):
        normalise(pixels)
    return (time.perf_counter() - start) / 5 / batch_size * 1000


def compare(data: Dataset, label: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    loaders: dict[str, Callable[[int], Iterable[Any]]] = {
        "plain": lambda w: plain_loader(data, w, args.batch, args.size)
    }
    for stage in args.stages:
        loaders[f"ours_stage{stage}"] = lambda w, stage=stage: our_loader(data, w, args.batch, stage)
    for workers in args.workers:
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in loaders}
        for _ in range(args.repeats):  # alternate, so a change in the machine's load hits every loader
            for name, make in loaders.items():
                runs[name].append(measure(make(workers), workers))
        # the best pass of each loader, by wall time and by CPU time separately
        best = {
            name: {
                "images_per_s": max(r["images_per_s"] for r in results),
                "images_per_s_per_worker": max(r["images_per_s_per_worker"] for r in results),
                "images_per_cpu_s": max(r["images_per_cpu_s"] for r in results),
            }
            for name, results in runs.items()
        }
        for name in loaders:
            row = {
                "shards": label,
                "loader": name,
                "workers": workers,
                **best[name],
                "runs": [{k: r[k] for k in ("seconds", "cpu_seconds", "images")} for r in runs[name]],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
        for name in loaders:
            if name == "plain":
                continue
            ratio = {
                "shards": label,
                "loader": "ratio",
                "of": f"{name}/plain",
                "workers": workers,
                **{
                    key: round(best[name][key] / best["plain"][key], 2)
                    for key in ("images_per_s_per_worker", "images_per_cpu_s")
                },
            }
            print(json.dumps(ratio), flush=True)
            rows.append(ratio)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--shards", type=int, default=16, help="at least the largest worker count")
    parser.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224, help="output image size (both loaders)")
    parser.add_argument(
        "--stages",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[1, 2],
        help="our loader's stages to run (1: captions; 2: + regions and hard negatives)",
    )
    parser.add_argument("--min-side", type=int, default=320)
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="passes per loader and worker count (best is reported)",
    )
    parser.add_argument(
        "--resized",
        action="store_true",
        help="also measure shards resized at ingest (reported beside)",
    )
    parser.add_argument("--work", default=None, help="folder for the generated shards (kept and reused)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if max(args.workers) > args.shards:
        parser.error("every worker needs a shard: --shards must be >= the largest --workers")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)  # the main process only receives batches; workers do the work
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fgclip-input-bench-"))
    tag = f"n{args.samples}-s{args.shards}-{args.min_side}-{args.max_side}-{args.size}-seed{args.seed}"
    started = time.perf_counter()
    data = build_dataset(
        work / tag,
        args.samples,
        args.shards,
        args.min_side,
        args.max_side,
        args.size,
        args.seed,
    )
    print(
        json.dumps(
            {
                "setup": "shards",
                "samples": data.samples,
                "shards": args.shards,
                "sides_px": [args.min_side, args.max_side],
                "jpeg_bytes_per_pixel": data.bytes_per_pixel,
                "output_px": args.size,
                "batch": args.batch,
                "our_stages": args.stages,
                "cpus": os.cpu_count(),
                "load_avg": [round(v, 2) for v in os.getloadavg()],
                "folder": str(work / tag),
                "build_s": round(time.perf_counter() - started, 1),
            }
        ),
        flush=True,
    )
    compare(data, "original", args)
    print(
        json.dumps(
            {
                "note": "ours hands uint8 to the step, which normalises on its device",
                "normalise_ms_per_image_on_this_cpu": round(normalisation_cost(data, args.size, args.batch), 3),
            }
        ),
        flush=True,
    )
    if args.resized:
        resized = resized_copy(data, work / f"{tag}-resized{args.size}", args.size)
        print(
            json.dumps(
                {
                    "setup": "resized at ingest",
                    "shortest_edge_px": args.size,
                    "jpeg_bytes_per_pixel": resized.bytes_per_pixel,
                }
            ),
            flush=True,
        )
        compare(resized, f"resized{args.size}", args)
    print(json.dumps({"load_avg_end": [round(v, 2) for v in os.getloadavg()]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
