"""The whole pipeline on real photos from params alone, with `dvc repro`: a URL parquet of
a loopback site (the photos scikit-image, scikit-learn and matplotlib ship, plus hostile
URLs) -> ingest (img2dataset) -> recaption (a Hugging Face captioner) -> detect (spaCy +
OWLv2) -> negatives (SmolLM2 through llama.cpp's OpenAI-compatible server) -> qc (no
truth) -> stages 1 and 2 from a Hugging Face CLIP converted once -> eval on the held-out
shard -> register. The models are tiny (their outputs are noise); the test checks the
mechanics: every good photo arrives, every bad URL is a counted failure of its kind, and
nothing reads the demo world's truth."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from fgclip.core.shards import RawShardReader
from fgclip.data.ingest.urls import stable_key
from tests.conftest import REPO_ROOT, dvc_workspace, tool_env
from tests.support.llm_models import smollm2_gguf
from tests.support.photo_server import HOSTILE, photo_site
from tests.support.real_data import merged, real_params, save_tiny_hf_clip, url_rows, write_url_list
from tests.support.servers import llama_cpp_server
from tests.support.tiny_vision_models import WORDS, save_tiny_llava, save_tiny_owlv2

pytestmark = pytest.mark.slow

#: A real run on real data must never open the demo world's truth.
TRUTH_MARKERS = ("truth",)


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    return result


def test_real_photos_from_a_url_parquet_to_a_registered_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    captioner = save_tiny_llava(models / "captioner")
    detector = save_tiny_owlv2(models / "owlv2")
    with photo_site(slow_s=4.0, huge_side=5000) as site, llama_cpp_server(smollm2_gguf(), tmp_path / "llm") as llm:
        rows = url_rows(site)
        clip = save_tiny_hf_clip(models / "clip", [row["caption"] for row in rows] + [" ".join(WORDS)] * 3)
        urls = write_url_list(tmp_path / "urls.parquet", rows)
        params = merged(
            yaml.safe_load((REPO_ROOT / "params.yaml").read_text()),
            real_params(
                urls=str(urls),
                captioner=captioner,
                detector=detector,
                clip=clip,
                llm_url=llm.url + "/v1",
                llm_model=str(smollm2_gguf()),
            ),
        )
        params["registry"]["gate"] = {"long_i2t_r1": 0.0}  # the demo's gated metrics do not exist on real data
        project = dvc_workspace(tmp_path / "project", params)
        env = {**tool_env(), "FGCLIP_IMG2DATASET_ENV": str(REPO_ROOT / ".venv-img2dataset")}
        started = time.perf_counter()
        _run(["dvc", "repro"], project, env)
        seconds = time.perf_counter() - started

    dataset = json.loads((project / "reports/dataset.json").read_text())
    ingest = dataset["ingest"]
    good = [row for row in rows if "broken link" not in row["caption"]]
    print(f"\nreal-photo pipeline: {seconds:.0f} s; ingest report: {json.dumps(ingest)}")
    assert ingest["planned"] == len(rows) and ingest["successes"] == len(good)
    assert ingest["failures_by_kind"] == {kind: 1 for kind in HOSTILE.values()}
    manifest = json.loads((project / "data/dataset/manifest.json").read_text())
    assert manifest["source"] == "urls" and not manifest["sidecars"] and len(manifest["heldout"]) == 1
    stored = {s.key for tar in sorted((project / "data/dataset/images").glob("*.tar")) for s in RawShardReader(tar)}
    assert stored == {stable_key(row["url"], row["caption"], 20) for row in good}

    captions = sum(
        len((project / "data/build/captions" / f).read_text().splitlines())
        for f in os.listdir(project / "data/build/captions")
        if f.endswith(".jsonl") and "." not in f[:-6]
    )
    assert captions > 0
    qc = json.loads((project / "reports/qc/report.json").read_text())
    assert qc["reviewer"]["identity"]["name"] == "none" and "truth" not in qc
    for stage in ("stage1", "stage2"):
        metrics = json.loads((project / f"reports/eval/{stage}/metrics.json").read_text())
        assert {"long_i2t_r1", "short_i2t_r1"} <= set(metrics)
    decision = json.loads((project / "reports/register.json").read_text())
    assert decision["decision"] in ("first model", "promoted")
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    every_path = json.dumps(lock)
    assert not any(marker in every_path for marker in TRUTH_MARKERS), "a stage read the demo truth"
