"""Smoke test of benchmarks/input_pipeline.py on a few tiny images: both loaders read the
same shards, every line is JSON, the ratios are the loaders' figures divided (not a
timing test)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "input_pipeline.py"


@pytest.fixture
def benchmark():
    spec = importlib.util.spec_from_file_location("fgclip_input_pipeline_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)  # the script sets it for the whole process


def test_tiny_run_compares_both_loaders_on_the_same_shards(benchmark, tmp_path, capsys):
    args = [
        "--samples",
        "24",
        "--shards",
        "2",
        "--workers",
        "1",
        "--batch",
        "4",
        "--size",
        "32",
        "--min-side",
        "48",
        "--max-side",
        "160",
        "--repeats",
        "1",
        "--resized",
        "--work",
        str(tmp_path),
    ]
    assert benchmark.main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    setup = lines[0]
    assert setup["samples"] == 24 and setup["jpeg_bytes_per_pixel"] > 0
    for shards in ("original", "resized32"):
        rows = {
            row["loader"] if row["loader"] != "ratio" else row["of"]: row
            for row in lines
            if row.get("shards") == shards
        }
        assert set(rows) == {
            "plain",
            "ours_stage1",
            "ours_stage2",
            "ours_stage1/plain",
            "ours_stage2/plain",
        }
        # plain: every full batch of 4; ours: the epoch plan's full batches (all 24 here)
        assert rows["plain"]["runs"][0]["images"] == 24 and rows["ours_stage2"]["runs"][0]["images"] == 24
        for name in ("ours_stage1", "ours_stage2"):
            ratio = rows[f"{name}/plain"]
            assert ratio["images_per_cpu_s"] == pytest.approx(
                rows[name]["images_per_cpu_s"] / rows["plain"]["images_per_cpu_s"],
                abs=0.01,
            )
    # a second run reuses the shards it built
    assert benchmark.main(args[:-2] + ["--work", str(tmp_path), "--workers", "1"]) == 0
    assert (tmp_path / "n24-s2-48-160-32-seed0" / "built.json").is_file()
