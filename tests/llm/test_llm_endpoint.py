"""The OpenAI-compatible backends against real servers on loopback: llama.cpp's server
with SmolLM2-135M-Instruct, a delaying proxy in front of it (a slow endpoint), Python's
static web server (not an LLM endpoint at all), a port nobody listens on, and a server
killed in the middle of a run."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from fgclip.core import schema
from fgclip.core.shards import annotation_path, read_jsonl, write_jsonl_atomic
from fgclip.core.stage import run_stage
from fgclip.data.negatives.config import NegativesConfig, NegativesEndpointConfig
from fgclip.data.negatives.stage import NegativesStage
from fgclip.data.negatives.validation import validate_negatives
from fgclip.llm.chat import ChatReply, EndpointDown
from fgclip.llm.config import EndpointConfig
from fgclip.llm.endpoint import ChatEndpoint, parse_completion
from tests.conftest import run_cli
from tests.support.llm_models import demo_expressions, smollm2_gguf
from tests.support.records import write_records
from tests.support.servers import DelayingProxy, ManagedServer, free_port, llama_cpp_server, static_web_server

K = 10
SHORTS = [["large red striped circle", "small blue dotted square"], ["wooden chair", "man"]]
FAST_RETRY = {"backoff_s": 0.05, "backoff_max_s": 0.2}


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> ManagedServer:
    with llama_cpp_server(smollm2_gguf(), tmp_path_factory.mktemp("llama")) as server:
        yield server


def endpoint(url: str, model: str, **changes) -> NegativesEndpointConfig:
    settings = {
        "base_url": url + "/v1",
        "model": model,
        "api_key_env": None,
        "concurrency": 2,
        "max_tokens": 160,
        **FAST_RETRY,
        **changes,
    }
    return NegativesEndpointConfig(**settings)


def model_name(server: ManagedServer) -> str:
    return server.command[server.command.index("--model") + 1]


def write_regions(folder: Path, shard: str = "00000", shorts: list[list[str]] = SHORTS) -> None:
    records = [
        {
            "key": f"{shard}-{i}",
            "width": 64,
            "height": 48,
            "regions": [{"bbox": [0.1, 0.1, 0.5, 0.5], "score": 0.9, "short_expr": s, "long_expr": s} for s in group],
        }
        for i, group in enumerate(shorts)
    ]
    write_jsonl_atomic(annotation_path(folder, shard), records)


def negatives_stage(folder: Path, config: NegativesEndpointConfig, **changes) -> NegativesStage:
    return NegativesStage(
        folder, NegativesConfig(**{"backend": "openai", "batch_size": 4, "openai": config, **changes}), seed=0
    )


# ---------------------------------------------------------------- a working server


def test_negatives_from_llama_cpp_are_validated_and_repairs_counted(llama: ManagedServer, tmp_path: Path) -> None:
    write_regions(tmp_path / "regions")
    stage = negatives_stage(tmp_path / "regions", endpoint(llama.url, model_name(llama)))
    summary = run_stage(stage, ["00000"], tmp_path / "out", progress=False)
    for record, shorts in zip(read_jsonl(annotation_path(tmp_path / "out", "00000")), SHORTS):
        schema.validate("negatives_record", record)
        for region, positive in zip(record["regions"], shorts):
            assert validate_negatives(positive, region["short_expr_negs"], K) == []
    metrics = stage.metrics()
    assert metrics["negatives.regions"] == 4 and not summary.rejected
    assert metrics["negatives.regions_own_negatives"] + metrics["negatives.regions_fallback_negatives"] == 4 * K
    assert summary.ignored.get("negatives_repaired", 0) == metrics["negatives.regions_repaired"]
    # the server's usage block is counted
    assert metrics["negatives.backend.tokens"] > 0 and metrics["negatives.backend.prompt_tokens"] > 0
    assert metrics["negatives.backend.expressions"] == 4
    identity = stage.settings()
    assert identity["generator"]["engine"] == "openai" and "base_url" not in str(identity)


def test_the_cli_switches_to_the_endpoint_by_params_alone(llama: ManagedServer, tmp_path: Path) -> None:
    records = [
        {
            "key": "k0",
            "width": 64,
            "height": 48,
            "regions": [
                {"bbox": [0.1, 0.1, 0.5, 0.5], "score": 0.9, "short_expr": "large red striped circle", "long_expr": "x"}
            ],
        }
    ]
    write_records(records, tmp_path / "regions")
    overrides = {
        "tracking.enabled": "false",
        "negatives.backend": "openai",
        "negatives.openai.base_url": llama.url + "/v1",
        "negatives.openai.model": model_name(llama),
        "negatives.openai.max_tokens": "96",
    }
    run_cli(
        [
            "--params",
            str(tmp_path / "none.yaml"),
            *[a for k, v in overrides.items() for a in ("--set", f"{k}={v}")],
            "--no-progress",
            "negatives",
            "--regions",
            str(tmp_path / "regions"),
            "--out",
            str(tmp_path / "out"),
            "--report",
            str(tmp_path / "report.json"),
        ],
        cwd=tmp_path,
    )
    [record] = read_jsonl(annotation_path(tmp_path / "out", "00000"))
    assert validate_negatives("large red striped circle", record["regions"][0]["short_expr_negs"], K) == []
    manifest = json.loads(annotation_path(tmp_path / "out", "00000", "manifest").read_text())
    assert manifest["settings"]["generator"]["name"] == "openai"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["items_out"] == 1 and set(report["ignored"]) <= {"negatives_repaired"}


def test_wrong_path_or_model_stops_at_once(llama: ManagedServer) -> None:
    chat = ChatEndpoint(EndpointConfig(base_url=llama.url, model="x", api_key_env=None, **FAST_RETRY))  # no /v1
    with pytest.raises(EndpointDown, match="answered 404"):
        chat.chat([[{"role": "user", "content": "hi"}]])
    chat.close()


@pytest.mark.slow
def test_smollm2_negatives_for_fifty_demo_world_expressions(llama: ManagedServer, tmp_path: Path) -> None:
    """The real model on the demo world: exactly K validated negatives per expression, the
    model's share and the repairs counted (the figures are printed for the README)."""
    expressions = demo_expressions(50)
    write_regions(tmp_path / "regions", shorts=[expressions[i : i + 5] for i in range(0, 50, 5)])
    stage = negatives_stage(tmp_path / "regions", endpoint(llama.url, model_name(llama), max_tokens=200), batch_size=10)
    summary = run_stage(stage, ["00000"], tmp_path / "out", progress=False)
    records = read_jsonl(annotation_path(tmp_path / "out", "00000"))
    for record in records:
        for region in record["regions"]:
            assert len(region["short_expr_negs"]) == K
    for expression, region in zip(expressions, [r for record in records for r in record["regions"]]):
        assert validate_negatives(expression, region["short_expr_negs"], K) == []
    metrics = stage.metrics()
    print(json.dumps(metrics, indent=1))
    assert metrics["negatives.regions"] == 50 and not summary.rejected
    assert metrics["negatives.regions_own_negatives"] + metrics["negatives.regions_fallback_negatives"] == 50 * K
    assert metrics["negatives.regions_repaired"] + metrics["negatives.regions_from_model_only"] == 50
    assert summary.ignored.get("negatives_repaired", 0) == metrics["negatives.regions_repaired"]
    assert metrics["negatives.reply_phrases"] >= metrics["negatives.regions_own_negatives"]


# ---------------------------------------------------------------- a slow server


def test_a_slow_answer_is_retried(llama: ManagedServer) -> None:
    with DelayingProxy(llama.url, delays=[3.0]) as proxy:
        chat = ChatEndpoint(
            EndpointConfig(
                **endpoint(proxy.url, model_name(llama), timeout_s=1.0, max_tokens=8, concurrency=1).model_dump()
            )
        )
        replies = chat.chat([[{"role": "user", "content": "Say hello."}]] * 2)
        chat.close()
    assert all(reply.ok for reply in replies), replies
    assert proxy.requests == 3  # the first timed out and was sent again


def test_an_always_slow_server_gives_counted_rejects_or_stops(llama: ManagedServer, tmp_path: Path) -> None:
    write_regions(tmp_path / "regions", shorts=[["red circle", "blue square"]])
    with DelayingProxy(llama.url, delays=[], then=2.0) as proxy:
        slow = endpoint(proxy.url, model_name(llama), timeout_s=0.4, max_retries=1, max_tokens=4)
        stage = negatives_stage(tmp_path / "regions", slow)
        result = stage.process_shard("00000")
        assert [r.reason for r in result.rejects] == ["negatives_failed"] * 2
        assert all("timeout" in r.detail and "after 1 retries" in r.detail for r in result.rejects)
        assert result.records[0]["regions"] == [{"short_expr_negs": []}] * 2  # written, flag 0
        # ... unless that many failures in a row mean the endpoint is unusable: then the stage stops.
        stopping = negatives_stage(tmp_path / "regions", slow.model_copy(update={"max_consecutive_failures": 2}))
        with pytest.raises(EndpointDown, match="2 requests failed in a row"):
            run_stage(stopping, ["00000"], tmp_path / "out", progress=False)
        assert not annotation_path(tmp_path / "out", "00000", "manifest").exists()


# ---------------------------------------------------------------- not an LLM server, or none at all


def test_a_web_server_that_is_not_an_endpoint_gives_per_request_errors(tmp_path: Path) -> None:
    with static_web_server(tmp_path / "site") as site:
        chat = ChatEndpoint(EndpointConfig(**endpoint(site.url, "any", max_retries=1).model_dump()))
        replies = chat.chat([[{"role": "user", "content": "hi"}]] * 3)
        chat.close()
    assert [reply.error for reply in replies] == ["server_error"] * 3
    assert "HTTP 501" in replies[0].detail and "<html" in replies[0].detail.lower()


def test_nobody_listening_stops_with_a_clear_error(tmp_path: Path) -> None:
    write_regions(tmp_path / "regions")
    stage = negatives_stage(tmp_path / "regions", endpoint(f"http://127.0.0.1:{free_port()}", "m", max_retries=1))
    with pytest.raises(EndpointDown, match="cannot be reached: all 4 requests"):
        run_stage(stage, ["00000"], tmp_path / "out", progress=False)


# ---------------------------------------------------------------- a server that goes away


def test_a_server_killed_mid_run_stops_the_stage_and_a_rerun_resumes(llama: ManagedServer, tmp_path: Path) -> None:
    shards = ["00000", "00001", "00002"]
    for shard in shards:
        write_regions(tmp_path / "regions", shard, [["red circle"], ["blue square"]])
    config = endpoint(llama.url, model_name(llama), max_retries=1, max_tokens=96)
    first_done = annotation_path(tmp_path / "out", "00000", "manifest")

    def kill_after_first_shard() -> None:
        deadline = time.monotonic() + 120
        while not first_done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        llama.kill()

    killer = threading.Thread(target=kill_after_first_shard)
    killer.start()
    try:
        with pytest.raises(EndpointDown, match="cannot be reached"):
            run_stage(negatives_stage(tmp_path / "regions", config), shards, tmp_path / "out", progress=False)
    finally:
        killer.join()
        llama.start()  # back on the same port for the rerun (and the other tests)
    assert first_done.exists()
    assert not annotation_path(tmp_path / "out", "00002", "manifest").exists()
    summary = run_stage(negatives_stage(tmp_path / "regions", config), shards, tmp_path / "out", progress=False)
    assert summary.shards_skipped >= 1 and summary.items_out == 6
    for shard in shards:
        for record in read_jsonl(annotation_path(tmp_path / "out", shard)):
            assert all(len(region["short_expr_negs"]) == K for region in record["regions"])


# ---------------------------------------------------------------- reading answers


def test_completion_bodies() -> None:
    body = {
        "choices": [{"message": {"content": "a caption"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5},
    }
    assert parse_completion(body) == ChatReply(text="a caption", prompt_tokens=12, completion_tokens=5, truncated=True)
    assert parse_completion({"choices": []}).error == "bad_response"
    assert parse_completion({"error": "overloaded"}).error == "bad_response"
    assert (
        parse_completion({"choices": [{"message": {"content": None}, "finish_reason": "tool_calls"}]}).error
        == "empty_reply"
    )


def test_retry_after_is_honoured_and_backoff_grows() -> None:
    import email.utils

    import httpx

    from fgclip.llm.endpoint import _retry_after

    assert _retry_after(httpx.Response(429, headers={"Retry-After": "3"})) == 3.0
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= _retry_after(httpx.Response(503, headers={"Retry-After": in_ten})) <= 10.0
    assert _retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None
    assert _retry_after(httpx.Response(500)) is None
    chat = ChatEndpoint(EndpointConfig(model="m", api_key_env=None, backoff_s=1.0, backoff_max_s=5.0, timeout_s=60.0))
    assert [0.5 <= chat._delay(r, None) / min(5.0, 2**r) <= 1.0 for r in range(5)] == [True] * 5
    assert chat._delay(0, 7.0) == 7.0 and chat._delay(0, 600.0) == 60.0  # capped at one request's timeout
    chat.close()
