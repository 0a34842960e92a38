"""The demo world: reproducible, decodable scenes whose truth matches their pixels."""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fgclip.config import Params
from fgclip.core.shards import RawShardReader, read_jsonl
from fgclip.demo import draw as demo_draw
from fgclip.demo.cli import add_arguments, command
from fgclip.demo.config import DemoWorldConfig
from fgclip.demo.world import generate_sample, generate_split
from fgclip.text.lexicon import COLOURS, PATTERNS, SHAPES, SIZES
from tests.conftest import tool_env

POSITIONS = {"top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"}
PREDICATES = {"left of", "right of", "above", "below"}
SMALL_WORLD = dict(train_shards=2, heldout_shards=1, samples_per_shard=12)
JPEG_TOLERANCE = 40  # max channel difference between a drawn colour and its decoded JPEG pixel
PATTERN_WINDOW = 0.14  # half-width of the pattern probe, fraction of the object side (period: 0.25)


def small_config(**changes) -> DemoWorldConfig:
    return DemoWorldConfig(**{**SMALL_WORLD, **changes})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    for split in ("train", "heldout"):
        generate_split(small_config(), out, split, progress=False)
    return out


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def samples_and_truth(world: Path, split: str, shard: str = "00000"):
    reader = RawShardReader(world / split / "images" / f"{shard}.tar")
    samples = list(reader)
    truth = {record["key"]: record for record in read_jsonl(world / split / "truth" / f"{shard}.jsonl")}
    return samples, reader.rejects, truth


def test_same_config_gives_byte_identical_files(world: Path, tmp_path: Path) -> None:
    for split in ("train", "heldout"):
        generate_split(small_config(), tmp_path, split, progress=False)
    first, second = files_of(world), files_of(tmp_path)
    assert sorted(first) == sorted(second)
    assert len(first) == 3 * 3  # per shard: tar, parquet, truth
    assert first == second


def test_output_does_not_depend_on_the_python_hash_seed(tmp_path: Path) -> None:
    config = small_config(train_shards=1, heldout_shards=0, samples_per_shard=4)
    generate_split(config, tmp_path / "here", "train", progress=False)
    script = (
        "import sys; from fgclip.demo.world import generate_split; from fgclip.demo.config import DemoWorldConfig; "
        "generate_split(DemoWorldConfig.model_validate_json(sys.argv[1]), sys.argv[2], 'train', progress=False)"
    )
    env = {**tool_env(), "PYTHONHASHSEED": "12345"}
    subprocess.run(
        [sys.executable, "-c", script, config.model_dump_json(), str(tmp_path / "there")],
        env=env,
        check=True,
        timeout=60,
    )
    assert files_of(tmp_path / "here") == files_of(tmp_path / "there")


def test_images_decode_with_img2dataset_metadata(world: Path) -> None:
    config = small_config()
    samples, rejects, truth = samples_and_truth(world, "train", "00001")
    assert rejects == []
    assert [s.key for s in samples] == [f"tr{i:09d}" for i in range(12, 24)]
    for sample in samples:
        assert sample.open_image().size == (config.image_width, config.image_height)
        assert sample.meta["width"] == config.image_width and sample.meta["height"] == config.image_height
        assert sample.meta["url"] == f"demo://train/{sample.key}"
        assert sample.caption and len(sample.caption.split()) <= 12  # alt-text is short
    table = pq.read_table(world / "train" / "images" / "00001.parquet").to_pylist()
    assert [row["key"] for row in table] == [s.key for s in samples]
    assert set(truth) == {s.key for s in samples}


def test_alt_text_names_only_things_that_are_in_the_image(world: Path) -> None:
    samples, _, truth = samples_and_truth(world, "train")
    for sample in samples:
        words = set(re.findall(r"[a-z]+", sample.caption.lower()))
        objects = truth[sample.key]["objects"]
        assert words & set(SHAPES) <= {o["shape"] for o in objects}
        assert words & set(COLOURS) <= {o["colour"] for o in objects} | set(
            truth[sample.key]["background"].get("colours", [])
        )


def test_truth_boxes_positions_and_relations_are_consistent(world: Path) -> None:
    config = small_config()
    _, _, truth = samples_and_truth(world, "train")
    for record in truth.values():
        assert config.min_objects <= len(record["objects"]) <= config.max_objects
        boxes = {}
        for obj in record["objects"]:
            x1, y1, x2, y2 = obj["bbox"]
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            assert (obj["shape"], obj["colour"], obj["pattern"], obj["size"]) in {
                (s, c, p, z) for s in SHAPES for c in COLOURS for p in PATTERNS for z in SIZES
            }
            assert obj["position"] in POSITIONS
            boxes[obj["id"]] = obj["bbox"]
        for relation in record["relations"]:
            a, b = boxes[relation["subject"]], boxes[relation["object"]]
            assert relation["predicate"] in PREDICATES
            separated = {
                "left of": a[2] <= b[0],
                "right of": b[2] <= a[0],
                "above": a[3] <= b[1],
                "below": b[3] <= a[1],
            }
            assert separated[relation["predicate"]], relation


def test_large_objects_are_larger_than_small_ones(world: Path) -> None:
    _, _, truth = samples_and_truth(world, "train")
    sides = {size: [] for size in SIZES}
    for record in truth.values():
        for obj in record["objects"]:
            x1, y1, x2, y2 = obj["bbox"]
            sides[obj["size"]].append(max((x2 - x1) * record["width"], (y2 - y1) * record["height"]))
    assert sides["small"] and sides["large"]
    assert max(sides["small"]) < min(sides["large"])


def _visible_centres(record: dict):
    """(object, centre px) for objects whose box centre no later-drawn object covers."""
    objects = record["objects"]
    for index, obj in enumerate(objects):
        x1, y1, x2, y2 = obj["bbox"]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        if obj["shape"] == "ring" or any(
            o["bbox"][0] <= cx <= o["bbox"][2] and o["bbox"][1] <= cy <= o["bbox"][3] for o in objects[index + 1 :]
        ):
            continue  # a ring's centre is its hole
        yield obj, (int(cx * record["width"]), int(cy * record["height"]))


def test_pixels_match_truth_colour_and_pattern(world: Path) -> None:
    samples, _, truth = samples_and_truth(world, "train")
    checked = {"solid": 0, "patterned": 0}
    for sample in samples:
        pixels = np.asarray(sample.open_image()).astype(int)
        for obj, (x, y) in _visible_centres(truth[sample.key]):
            if obj["pattern"] == "solid":
                flat = pixels[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3)
                assert np.abs(pixels[y, x] - COLOURS[obj["colour"]]).max() <= JPEG_TOLERANCE, (sample.key, obj)
                assert flat.std(axis=0).max() < 12, (sample.key, obj)
                checked["solid"] += 1
            else:
                # a window wider than one pattern period (a quarter of the side) must hold both tones
                x1, y1, x2, y2 = obj["bbox"]
                half = int(PATTERN_WINDOW * max((x2 - x1) * sample.width, (y2 - y1) * sample.height))
                window = pixels[y - half : y + half + 1, x - half : x + half + 1].reshape(-1, 3)
                assert window.std(axis=0).max() > 20, (sample.key, obj)
                checked["patterned"] += 1
    assert checked["solid"] >= 3 and checked["patterned"] >= 3


def test_heldout_differs_from_train(world: Path) -> None:
    train, _, train_truth = samples_and_truth(world, "train")
    heldout, rejects, heldout_truth = samples_and_truth(world, "heldout")
    assert rejects == []
    assert [s.key for s in heldout] == [f"ho{i:09d}" for i in range(12)]
    assert heldout[0].meta["url"] == "demo://heldout/ho000000000"
    assert {s.image_bytes for s in heldout}.isdisjoint({s.image_bytes for s in train})
    assert [r["objects"] for r in heldout_truth.values()] != [r["objects"] for r in train_truth.values()]


def test_missing_photo_falls_back_to_a_drawn_background(tmp_path: Path) -> None:
    config = small_config(
        train_shards=1, samples_per_shard=3, photo_background_rate=1.0, photo_backgrounds=("no_such_photo",)
    )
    summary = generate_split(config, tmp_path, "train", progress=False)
    assert summary.samples == 3 and summary.photo_backgrounds == 0 and summary.photo_fallbacks == 3
    for record in read_jsonl(tmp_path / "train" / "truth" / "00000.jsonl"):
        assert record["background"]["kind"] in ("plain", "gradient")
        assert record["background"]["fallback_from"] == "no_such_photo"


def test_photo_backgrounds_are_used_at_the_configured_rate(tmp_path: Path) -> None:
    config = small_config(train_shards=1, samples_per_shard=6, photo_background_rate=1.0, photo_backgrounds=("coffee",))
    summary = generate_split(config, tmp_path, "train", progress=False)
    assert summary.photo_backgrounds == 6
    record = read_jsonl(tmp_path / "train" / "truth" / "00000.jsonl")[0]
    assert record["background"]["kind"] == "photo" and record["background"]["photo"] == "coffee"


@pytest.mark.parametrize("shape", SHAPES)
def test_every_lexicon_shape_is_drawable(shape: str) -> None:
    mask = np.asarray(demo_draw.shape_mask(shape, 40)) > 0
    assert 0.2 < mask.mean() < 1.0 or shape == "square"
    assert mask[20, 20] == (shape != "ring")


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_lexicon_pattern_is_drawable(pattern: str) -> None:
    texture = demo_draw.pattern_texture(COLOURS["red"], pattern, 40, 8).reshape(-1, 3)
    tones = {tuple(t) for t in texture}
    assert len(tones) == (1 if pattern == "solid" else 2)
    assert (texture == COLOURS["red"]).all(axis=1).mean() >= 0.5  # the object keeps its colour


def test_fewer_shards_remove_stale_ones(tmp_path: Path) -> None:
    generate_split(small_config(train_shards=2, samples_per_shard=2), tmp_path, "train", progress=False)
    generate_split(small_config(train_shards=1, samples_per_shard=2), tmp_path, "train", progress=False)
    assert sorted(p.name for p in (tmp_path / "train" / "images").iterdir()) == ["00000.parquet", "00000.tar"]
    assert sorted(p.name for p in (tmp_path / "train" / "truth").iterdir()) == ["00000.jsonl"]


def test_cli_generates_one_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "demo"), "--split", "heldout"])
    args.no_progress = True
    params = Params.model_validate(
        {"demo": {"heldout_shards": 1, "samples_per_shard": 2}, "tracking": {"enabled": False}}
    )
    assert command(args, params) == 0
    assert not (tmp_path / "demo" / "train").exists()
    assert (tmp_path / "demo" / "heldout" / "images" / "00000.tar").is_file()
    assert '"samples": 2' in capsys.readouterr().out


def test_sample_jpeg_is_a_real_jpeg() -> None:
    sample, truth, scene = generate_sample(small_config(), "train", 0)
    with Image.open(io.BytesIO(sample.jpeg)) as image:
        assert image.format == "JPEG"
    assert truth["key"] == sample.key == scene.key == "tr000000000"
