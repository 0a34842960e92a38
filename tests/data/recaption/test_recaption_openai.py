"""recaption backend `openai` against real servers on loopback: `transformers serve` with a
tiny LLaVA built from config (images go through its vision tower), and Python's static
web server (not an endpoint: every request fails, each a counted reject)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fgclip.demo.world import generate_split
from fgclip.data.recaption.cli import command
from fgclip.config import load_params
from fgclip.data.recaption.config import RecaptionConfig, RecaptionEndpointConfig
from fgclip.demo.config import DemoWorldConfig
from fgclip.data.recaption.stage import RecaptionStage
from fgclip.core.shards import RawShardReader, read_jsonl
from fgclip.core.stage import run_stage
from tests.support.llm_models import build_tiny_vlm
from tests.support.servers import DelayingProxy, ManagedServer, free_port, static_web_server, transformers_server

SHARDS = ["00000", "00001"]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate_split(DemoWorldConfig(train_shards=2, heldout_shards=0, samples_per_shard=3), out, "train",
                              progress=False)
    return out / "train" / "images"


@pytest.fixture(scope="module")
def vlm_server(tmp_path_factory: pytest.TempPathFactory) -> ManagedServer:
    model = build_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))
    with transformers_server(model, tmp_path_factory.mktemp("serve")) as server:
        yield server


def served_model(server: ManagedServer) -> str:
    return server.command[2]  # transformers serve <model>


def config(url: str, model: str, **changes) -> RecaptionConfig:
    settings = {"base_url": url + "/v1", "model": model, "api_key_env": None, "concurrency": 3, "max_tokens": 16,
                "backoff_s": 0.05, "backoff_max_s": 0.2, **changes}
    endpoint = RecaptionEndpointConfig(**settings)
    return RecaptionConfig(backend="openai", batch_size=4, openai=endpoint)


def test_captions_from_a_vision_language_server(vlm_server: ManagedServer, images: Path, tmp_path: Path) -> None:
    stage = RecaptionStage(images, None, config(vlm_server.url, served_model(vlm_server)), seed=0)
    summary = run_stage(stage, SHARDS, tmp_path / "captions", progress=False)
    keys = {s.key for shard in SHARDS for s in RawShardReader(images / f"{shard}.tar")}
    written = {r["key"]: r for shard in SHARDS for r in read_jsonl(tmp_path / "captions" / f"{shard}.jsonl")}
    # every image is captioned or a counted reject (a random model may write only whitespace)
    assert set(written) <= keys and len(written) + sum(summary.rejected.values()) == len(keys) == 6
    assert set(summary.rejected) <= {"empty_caption"}
    metrics = stage.metrics()
    assert metrics["recaption.backend.images"] == 6 and metrics["recaption.backend.tokens"] == 6 * 16
    assert metrics["recaption.backend.images_per_second"] > 0 and metrics["recaption.backend.tokens_per_second"] > 0
    # the image reached the model: its prompt is longer than the prompt text alone
    text_only = stage.backend.endpoint.chat([[{"role": "user", "content": stage.backend.prompt.text}]])[0]
    assert metrics["recaption.backend.prompt_tokens"] / 6 > text_only.prompt_tokens + 1
    settings = stage.settings()
    assert settings["backend"]["model"] == served_model(vlm_server) and settings["backend"]["prompt"] == "recaption.v1"
    assert vlm_server.url not in str(settings)
    # the same model behind another URL (here a proxy) makes the same data: nothing reruns
    with DelayingProxy(vlm_server.url, delays=[]) as proxy:
        again = RecaptionStage(images, None, config(proxy.url, served_model(vlm_server), concurrency=1), seed=0)
        assert run_stage(again, SHARDS, tmp_path / "captions", progress=False).shards_skipped == 2


def test_a_server_that_is_not_an_endpoint_rejects_each_image(images: Path, tmp_path: Path) -> None:
    with static_web_server(tmp_path / "site") as site:
        stage = RecaptionStage(images, None, config(site.url, "any", max_retries=1), seed=0)
        summary = run_stage(stage, SHARDS, tmp_path / "captions", progress=False)
    assert summary.items_out == 0 and summary.rejected == {"server_error": 6}
    rejects = read_jsonl(tmp_path / "captions" / "00000.rejects.jsonl")
    assert all("HTTP 501" in r["detail"] and "after 1 retries" in r["detail"] for r in rejects)


def test_the_cli_stops_clearly_when_nobody_listens(images: Path, tmp_path: Path) -> None:
    from fgclip.cli import ComponentError

    params = load_params(None, {"tracking.enabled": False, "recaption.backend": "openai",
                                "recaption.openai.base_url": f"http://127.0.0.1:{free_port()}/v1",
                                "recaption.openai.model": "m", "recaption.openai.max_retries": 0})
    args = argparse.Namespace(images=str(images), truth=None, out=str(tmp_path / "out"), report=None, shards=None,
                              no_progress=True)
    with pytest.raises(ComponentError, match="recaption stopped: .* cannot be reached"):
        command(args, params)
    assert not list((tmp_path / "out").glob("*.manifest.json"))


def test_an_empty_model_name_is_a_config_error(images: Path) -> None:
    with pytest.raises(ValueError, match="served model name"):
        RecaptionStage(images, None, RecaptionConfig(backend="openai"), seed=0)
