"""Smoke test of benchmarks/train_step.py: both stage-2 steps run at tiny size on CPU and
the output is one JSON line per variant plus a ratio line (not a timing test)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_step.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("fgclip_train_step_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def benchmark():
    threads = torch.get_num_threads()
    yield _load_benchmark()
    torch.set_num_threads(threads)  # the script sets it for the whole process


def test_tiny_benchmark_runs_on_cpu_and_prints_json_lines(benchmark, capsys):
    # One thread: on a shared 2-core machine two threads contend and a step takes seconds.
    # Short long-captions keep it quick; everything else is the default shape.
    assert (
        benchmark.main(
            [
                "--size",
                "tiny",
                "--device",
                "cpu",
                "--batch",
                "2",
                "--steps",
                "1",
                "--warmup",
                "1",
                "--long-len",
                "20,40",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    stdout = capsys.readouterr().out
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    by_variant = {line["variant"]: line for line in lines}
    assert [line["variant"] for line in lines] == ["reference", "ours", "ratio"]

    reference, ours, ratio = by_variant["reference"], by_variant["ours"], by_variant["ratio"]
    for line in (reference, ours):
        assert line["device"] == "cpu" and line["batch"] == 2 and line["negatives"] == 10
        assert line["images_per_s"] > 0 and line["step_ms"] > 0 and math.isfinite(line["loss"])
        assert line["memory"].startswith("cpu_") and line["memory"].endswith("approx")
    # Same weights, same batch, same loss terms: only bf16 rounding tells the losses apart.
    assert reference["loss"] == pytest.approx(ours["loss"], rel=0.03)
    # The reference pads every text to 77 / 248 positions; ours trims to the longest.
    assert ours["text_tokens_per_step"] < reference["text_tokens_per_step"]
    assert ratio["of"] == "ours/reference"
    assert ratio["images_per_s"] == pytest.approx(ours["images_per_s"] / reference["images_per_s"], rel=0.01)


def test_anchor_result_is_cross_checked_in_the_ratio_line(benchmark, tmp_path):
    stub = tmp_path / "anchor.py"  # stands in for the shared anchor's run() interface
    stub.write_text(
        "def run(variant, batch, steps):\n"
        "    return dict(variant=variant, batch=batch, step_ms=80.0, img_per_s=50.0, peak_mem_gib=2.0)\n"
    )
    args = benchmark.build_parser().parse_args(["--batch", "4", "--steps", "2"])
    anchor = benchmark.run_anchor(str(stub), args)
    assert (anchor["variant"], anchor["images_per_s"], anchor["peak_mem_gib"]) == ("anchor-ref", 50.0, 2.0)

    line = benchmark.ratio_line(
        {
            "reference": {"images_per_s": 40.0, "peak_mem_gib": 8.0},
            "ours": {"images_per_s": 100.0, "peak_mem_gib": 4.0},
            "anchor-ref": anchor,
        }
    )
    assert line["images_per_s"] == 2.5 and line["peak_mem"] == 0.5
    assert line["reference_vs_anchor_images_per_s"] == 0.8


def test_a_failed_variant_leaves_the_ratio_empty(benchmark):
    line = benchmark.ratio_line(
        {
            "reference": {"variant": "reference", "error": "out of memory"},
            "ours": {"images_per_s": 100.0, "peak_mem_gib": 4.0},
        }
    )
    assert line["images_per_s"] is None and line["peak_mem"] is None
