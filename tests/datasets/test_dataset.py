"""`fgclip dataset`: named sources from params, the manifest that pins their shards, and
the stages reading through it (no truth outside the demo source)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from fgclip.config import load_params
from fgclip.core.dataset import DatasetManifest, changed_objects
from fgclip.core.shards import ShardSample, annotation_path, read_jsonl, write_image_shard
from tests.conftest import run_cli

TINY_DEMO = {
    "demo": {"train_shards": 2, "heldout_shards": 1, "samples_per_shard": 4},
    "tracking": {"enabled": False},
}


def _jpeg(colour: str, size: tuple[int, int] = (64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG")
    return out.getvalue()


def write_params(root: Path, params: dict) -> Path:
    import yaml

    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def own_shards(folder: Path, count: int = 3) -> None:
    for number in range(count):
        samples = [
            ShardSample(f"s{number}k{i}", _jpeg(colour), f"a {colour} square", {"width": 64, "height": 48})
            for i, colour in enumerate(("red", "blue", "green"))
        ]
        write_image_shard(folder, f"{number:05d}", samples)


def test_config_names_what_each_source_needs() -> None:
    with pytest.raises(ValueError, match="dataset.location"):
        load_params(None, {"dataset.source": "shards"})
    with pytest.raises(ValueError, match="urls.path"):
        load_params(None, {"dataset.source": "urls"})
    with pytest.raises(ValueError, match="finehard"):
        load_params(None, {"dataset.source": "finehard"})
    assert (
        load_params(None, {"dataset.source": "shards", "dataset.location": "s3://b/x"}).dataset.location == "s3://b/x"
    )


def test_demo_dataset_pins_the_world_and_names_its_truth(tmp_path: Path) -> None:
    params = write_params(tmp_path, TINY_DEMO)
    run_cli(
        ["--params", str(params), "--no-progress", "dataset", "--out", "data/dataset", "--report", "r.json"], tmp_path
    )
    manifest = DatasetManifest.from_json((tmp_path / "data/dataset/manifest.json").read_text())
    assert manifest.source == "demo" and sorted(manifest.shards) == ["00000", "00001"]
    assert set(manifest.sidecars) == {"truth", "heldout_images", "heldout_truth"}
    assert all(len(pin["tar"]["sha256"]) == 64 for pin in manifest.shards.values())
    assert json.loads((tmp_path / "r.json").read_text())["version"] == manifest.version
    # the demo backends find the truth through the manifest: no --truth flag anywhere
    run_cli(
        [
            "--params",
            str(params),
            "--no-progress",
            "recaption",
            "--dataset",
            "data/dataset/manifest.json",
            "--out",
            "captions",
        ],
        tmp_path,
    )
    assert len(read_jsonl(annotation_path(tmp_path / "captions", "00000"))) == 4


def test_own_shards_are_read_in_place_and_truth_backends_refuse_them(tmp_path: Path) -> None:
    source = tmp_path / "mine"
    own_shards(source)
    params = write_params(
        tmp_path,
        {**TINY_DEMO, "dataset": {"name": "mine", "source": "shards", "location": str(source), "heldout_shards": 1}},
    )
    run_cli(["--params", str(params), "--no-progress", "dataset", "--out", "data/dataset"], tmp_path)
    manifest = DatasetManifest.from_json((tmp_path / "data/dataset/manifest.json").read_text())
    assert manifest.images == str(source) and manifest.heldout == ("00002",)
    assert manifest.train_shards() == ["00000", "00001"]
    assert not (tmp_path / "data/dataset/images").exists()  # nothing copied into the workspace
    failed = run_cli(
        ["--params", str(params), "recaption", "--dataset", "data/dataset/manifest.json", "--out", "c"],
        tmp_path,
        check=False,
    )
    assert failed.returncode == 2 and "only dataset.source demo has" in failed.stderr
    qc = run_cli(
        [
            "--params",
            str(params),
            "qc",
            "--dataset",
            "data/dataset/manifest.json",
            "--captions",
            "c",
            "--regions",
            "r",
            "--negatives",
            "n",
        ],
        tmp_path,
        check=False,
    )
    assert qc.returncode == 2 and "qc.reviewer none" in qc.stderr
    # a shard object replaced behind the manifest's back is refused, not silently read
    assert changed_objects(manifest, ["00000"]) == []
    write_image_shard(source, "00001", [ShardSample("other", _jpeg("black", (80, 80)), "a black square", {})])
    assert changed_objects(manifest, ["00000", "00001"]) == [str(source / "00001.tar")]
    stale = run_cli(
        [
            "--params",
            str(params),
            "--set",
            "recaption.backend=openai",
            "recaption",
            "--dataset",
            "data/dataset/manifest.json",
            "--out",
            "c",
        ],
        tmp_path,
        check=False,
    )
    assert stale.returncode == 2 and "changed since the manifest pinned them" in stale.stderr


def test_finehard_dataset_passes_its_annotations_through(tmp_path: Path) -> None:
    images = tmp_path / "coco"
    images.mkdir()
    records = []
    for index, colour in enumerate(("red", "blue")):
        (images / f"{index}.jpg").write_bytes(_jpeg(colour))
        records.append(
            {
                "f_path": f"{index}.jpg",
                "caption": f"A {colour} square on a white table in a bright room.",
                "short_caption": f"{colour} square",
                "bbox_info": [
                    {
                        "bbox": [0.1, 0.1, 0.6, 0.7, 0.9],
                        "short_expr": f"a {colour} square",
                        "long_expr": f"a {colour} square on the table",
                        "flag_short_neg": 1,
                        "short_expr_negs": {str(i): f"a shade{i} square" for i in range(10)},
                    }
                ],
            }
        )
    annotations = tmp_path / "finehard.jsonl"
    annotations.write_text("".join(json.dumps(r) + "\n" for r in records))
    params = write_params(
        tmp_path,
        {
            **TINY_DEMO,
            "dataset": {
                "name": "fh",
                "source": "finehard",
                "finehard": {"annotations": [str(annotations)], "image_root": str(images), "shard_size": 10},
            },
        },
    )
    run_cli(["--params", str(params), "--no-progress", "dataset", "--out", "data/dataset"], tmp_path)
    manifest = "data/dataset/manifest.json"
    for argv in (
        ["recaption", "--dataset", manifest, "--out", "captions"],
        ["detect", "--dataset", manifest, "--captions", "captions", "--out", "regions"],
        ["negatives", "--regions", "regions", "--dataset", manifest, "--out", "negatives"],
    ):
        run_cli(["--params", str(params), "--no-progress", *argv], tmp_path)
    [first, _] = read_jsonl(annotation_path(tmp_path / "negatives", "00000"))
    assert first["regions"][0]["short_expr_negs"][0] == "a shade0 square"
    [caption, _] = read_jsonl(annotation_path(tmp_path / "captions", "00000"))
    assert caption["long_caption"].startswith("A red square")
