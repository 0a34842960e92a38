"""Versioned prompts and the backend throughput meter."""

from __future__ import annotations

import hashlib
import time

import pytest

from fgclip.core.prompts import builtin_prompts, load_prompt
from fgclip.core.throughput import Throughput
from fgclip.data.negatives.interface import PROMPT_PACKAGE as NEGATIVES
from fgclip.data.recaption.interface import PROMPT_PACKAGE as RECAPTION


def test_builtin_prompts_load_with_their_hash():
    assert builtin_prompts(RECAPTION) == ["recaption.v1"] and builtin_prompts(NEGATIVES) == ["negatives.v1"]
    prompt = load_prompt("negatives.v1", NEGATIVES)
    assert prompt.ref == "negatives.v1" and prompt.identity() == {
        "prompt": "negatives.v1",
        "prompt_sha256": prompt.sha256,
    }
    text = prompt.render(expression="a red striped circle", count="10", noun="circle")
    assert '"a red striped circle"' in text and "exactly 10" in text and "{" not in text


def test_prompt_file_hash_is_of_its_bytes_and_changes_with_them(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Describe {thing}.\n", encoding="utf-8")
    first = load_prompt(str(path), NEGATIVES)
    assert first.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and first.text == "Describe {thing}."
    path.write_text("Describe {thing} in detail.\n", encoding="utf-8")
    assert load_prompt(str(path), NEGATIVES).sha256 != first.sha256
    with pytest.raises(KeyError, match="thing"):
        first.render(other="x")


def test_bad_prompt_references_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="no built-in prompt 'negatives.v9'"):
        load_prompt("negatives.v9", NEGATIVES)
    with pytest.raises(ValueError, match="does not exist"):
        load_prompt(str(tmp_path / "missing.txt"), NEGATIVES)
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="is empty"):
        load_prompt(str(tmp_path / "empty.txt"), NEGATIVES)


def test_throughput_rates_cover_the_timed_work_only():
    meter = Throughput("images")
    assert meter.metrics("x")["x.images_per_second"] == 0.0  # no time yet: no division by zero
    with meter.timed():
        time.sleep(0.05)
        meter.add(items=10, tokens=200)
    time.sleep(0.05)  # untimed: must not dilute the rate
    with meter.timed():
        meter.add(items=10)
    metrics = meter.metrics("detect.backend", expressions=30)
    assert metrics["detect.backend.images"] == 20 and metrics["detect.backend.tokens"] == 200
    assert 0.05 <= metrics["detect.backend.seconds"] < 0.095
    seconds = meter.seconds
    assert metrics["detect.backend.images_per_second"] == pytest.approx(20 / seconds, rel=1e-3)
    assert metrics["detect.backend.expressions_per_second"] == pytest.approx(30 / seconds, rel=1e-3)
    assert metrics["detect.backend.tokens_per_second"] == pytest.approx(200 / seconds, rel=1e-3)


def test_throughput_counts_time_even_when_the_call_fails():
    meter = Throughput()
    with pytest.raises(RuntimeError), meter.timed():
        time.sleep(0.02)
        raise RuntimeError("backend down")
    assert meter.seconds >= 0.02 and meter.items == 0
