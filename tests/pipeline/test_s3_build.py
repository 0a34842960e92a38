"""A whole data build and a training run with every path on a real S3 server on loopback
(`rclone serve s3`): the source shards, the dataset manifest, every stage's output, the
QC report and the models. Each command runs in a fresh empty folder, as a pod with no
shared volume would: whatever one step hands the next travels through S3 alone."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from fgclip.core.shards import ShardSample, write_image_shard
from tests.conftest import REPO_ROOT, tool_env
from tests.support.real_data import merged, save_tiny_hf_clip, tiny_captioner_recaption
from tests.support.servers import s3_server
from tests.support.tiny_vision_models import WORDS, save_tiny_llava, save_tiny_owlv2

pytestmark = pytest.mark.slow

COLOURS = ("red", "blue", "green", "yellow", "orange", "purple")
DATA_SUFFIXES = (".tar", ".jsonl", ".parquet", ".safetensors", ".html")


def _jpeg(colour: str, size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG")
    return out.getvalue()


def test_data_build_and_training_with_every_path_on_s3(tmp_path: Path) -> None:
    models = tmp_path / "models"
    captioner, detector = save_tiny_llava(models / "captioner"), save_tiny_owlv2(models / "owlv2")
    captions = [f"a {colour} square on a white table" for colour in COLOURS]
    clip = save_tiny_hf_clip(models / "clip", captions + [" ".join(WORDS)] * 3)
    params = {
        "dataset": {"name": "s3-squares", "source": "shards", "location": "s3://fgclip/source", "heldout_shards": 1},
        "recaption": tiny_captioner_recaption(captioner),
        "detect": {
            "backend": "owlv2",
            "min_confidence": 0.0,
            "max_regions": 2,
            "min_box_side_px": 1.0,
            "min_box_area_fraction": 0.0,
            "owlv2": {"model": str(detector), "local_files_only": True, "device": "cpu"},
        },
        "negatives": {"backend": "rules", "count": 3},
        "qc": {
            "reviewer": "none",
            "sample_size": 10,
            "max_noise_upper": 1.0,
            "min_caption_words": 1,
            "min_box_area_fraction": 0.0,
            "gallery_items": 3,
        },
        "model": {"base": str(clip)},
        "tracking": {"enabled": False},
        "train": {
            "recipe": "demo",
            "workers": 0,
            "checkpoint_every": 1000,
            "log_system_metrics": False,
            "demo": {
                "stage1": {"batch_size": 4, "epochs": 1, "warmup_steps": 1, "samples_per_epoch": 8},
                "stage2": {"batch_size": 4, "epochs": 1, "warmup_steps": 1, "samples_per_epoch": 8},
            },
        },
    }
    params_file = tmp_path / "params.yaml"  # settings, not data: a pod gets them from a ConfigMap
    params_file.write_text(yaml.safe_dump(merged(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), params)))
    run = "s3://fgclip/runs/r1"
    steps = [
        ["dataset", "--out", f"{run}/dataset", "--report", f"{run}/reports/dataset.json"],
        [
            "recaption",
            "--dataset",
            f"{run}/dataset/manifest.json",
            "--out",
            f"{run}/build/captions",
            "--report",
            f"{run}/reports/recaption.json",
        ],
        [
            "detect",
            "--dataset",
            f"{run}/dataset/manifest.json",
            "--captions",
            f"{run}/build/captions",
            "--out",
            f"{run}/build/regions",
        ],
        [
            "negatives",
            "--regions",
            f"{run}/build/regions",
            "--dataset",
            f"{run}/dataset/manifest.json",
            "--out",
            f"{run}/build/negatives",
        ],
        [
            "qc",
            "--dataset",
            f"{run}/dataset/manifest.json",
            "--captions",
            f"{run}/build/captions",
            "--regions",
            f"{run}/build/regions",
            "--negatives",
            f"{run}/build/negatives",
            "--out",
            f"{run}/qc",
        ],
        ["init-model", "--out", f"{run}/models/base"],
        [
            "train",
            "--stage",
            "1",
            "--init",
            f"{run}/models/base",
            "--dataset",
            f"{run}/dataset/manifest.json",
            "--captions",
            f"{run}/build/captions",
            "--out",
            f"{run}/models/stage1",
        ],
        [
            "train",
            "--stage",
            "2",
            "--init",
            f"{run}/models/stage1",
            "--dataset",
            f"{run}/dataset/manifest.json",
            "--captions",
            f"{run}/build/captions",
            "--regions",
            f"{run}/build/regions",
            "--negatives",
            f"{run}/build/negatives",
            "--out",
            f"{run}/models/stage2",
        ],
    ]
    with s3_server(tmp_path / "s3" / "root") as server:
        server.bucket("fgclip")
        env = {**tool_env(), **server.env()}
        with pytest.MonkeyPatch.context() as patch:
            for name, value in server.env().items():
                patch.setenv(name, value)
            for number in range(4):  # the source: img2dataset-format shards already in the bucket
                samples = [
                    ShardSample(f"sq{number}x{i}", _jpeg(colour, (96, 72)), captions[i], {"width": 96, "height": 72})
                    for i, colour in enumerate(COLOURS)
                ]
                write_image_shard("s3://fgclip/source", f"{number:05d}", samples)
        for index, step in enumerate(steps):
            pod = tmp_path / f"pod{index}"  # a fresh, empty working folder per step
            pod.mkdir()
            step_env = {**env, "FGCLIP_MODEL_CACHE": str(pod / "model-cache")}
            argv = [sys.executable, "-m", "fgclip.cli", "--params", str(params_file), "--no-progress", *step]
            result = subprocess.run(argv, cwd=pod, env=step_env, capture_output=True, text=True, timeout=1500)
            assert result.returncode == 0, f"{' '.join(step)}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
            left = [
                p for p in pod.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES and "model-cache" not in p.parts
            ]
            assert not left, f"{step[0]} left data in its working folder: {left[:5]}"
        bucket = server.root / "fgclip"
        manifest = json.loads((bucket / "runs/r1/dataset/manifest.json").read_text())
        assert manifest["images"] == "s3://fgclip/source" and manifest["heldout"] == ["00003"]
        assert all(pin["tar"]["etag"] for pin in manifest["shards"].values())
        assert not (bucket / "runs/r1/dataset/images").exists()  # read in place, never copied
        for stage in ("captions", "regions", "negatives"):
            assert sorted(p.name for p in (bucket / "runs/r1/build" / stage).glob("*.manifest.json")) == [
                f"{n:05d}.manifest.json" for n in range(4)
            ]
        assert (bucket / "runs/r1/qc/report.json").is_file() and (bucket / "runs/r1/qc/gallery/index.html").is_file()
        for model in ("base", "stage1", "stage2"):
            assert (bucket / "runs/r1/models" / model / "config.json").is_file(), model
        summary = json.loads((bucket / "runs/r1/models/stage2/training.json").read_text())
        assert summary  # the trainer's summary travelled with the model
