"""`fgclip register`: the promotion gate, real MLflow registries (SQLite and a live server),
and the logged pyfunc model loading back and embedding."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow  # noqa: E402
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient  # noqa: E402

from fgclip.config import Params
from fgclip.core.config import TrackingConfig
from fgclip.registry.cli import add_arguments, command
from fgclip.registry.config import RegisterConfig  # noqa: E402
from fgclip.registry.gate import (
    DECISION_FIRST,
    DECISION_PROMOTED,
    DECISION_REJECTED,
    RegisterError,
    decide_promotion,
    load_eval_metrics,
)
from fgclip.registry.registration import register_model

GATE = {"fgovd_demo_top1": 0.0, "box_cls_top1": 0.0}
WORDS = "a photo of red blue green circle square triangle striped dotted small large".split()


# ------------------------------------------------------------------------ pure gate logic


def test_first_model_becomes_champion_without_comparison():
    decision = decide_promotion({"fgovd_demo_top1": 0.3, "box_cls_top1": 0.2}, None, GATE)
    assert (decision.decision, decision.promoted, decision.comparisons) == (DECISION_FIRST, True, [])


def test_gate_needs_every_metric_to_improve_by_its_margin():
    champion = {"fgovd_demo_top1": 0.50, "box_cls_top1": 0.40}
    gate = {"fgovd_demo_top1": 0.02, "box_cls_top1": 0.0}
    better = decide_promotion({"fgovd_demo_top1": 0.53, "box_cls_top1": 0.40}, champion, gate)
    assert better.promoted and better.decision == DECISION_PROMOTED
    assert [round(c.improvement, 6) for c in better.comparisons] == [0.03, 0.0]

    too_small = decide_promotion({"fgovd_demo_top1": 0.51, "box_cls_top1": 0.45}, champion, gate)
    assert not too_small.promoted and too_small.decision == DECISION_REJECTED
    assert "fgovd_demo_top1" in too_small.reason.split(":")[0]
    assert [c.passed for c in too_small.comparisons] == [False, True]


def test_lower_is_better_metrics_flip_the_direction():
    gate = {"loss": 0.0}
    assert decide_promotion({"loss": 0.9}, {"loss": 1.0}, gate, lower_is_better=["loss"]).promoted
    assert not decide_promotion({"loss": 1.1}, {"loss": 1.0}, gate, lower_is_better=["loss"]).promoted


def test_champion_without_a_gated_metric_is_not_replaced_automatically():
    decision = decide_promotion({"fgovd_demo_top1": 0.9, "box_cls_top1": 0.9}, {"fgovd_demo_top1": 0.1}, GATE)
    assert not decision.promoted
    assert "champion has no value" in decision.reason


def test_challenger_must_report_every_gated_metric():
    with pytest.raises(RegisterError, match="box_cls_top1"):
        decide_promotion({"fgovd_demo_top1": 0.9}, None, GATE)


def test_eval_metrics_are_flattened_numeric_and_at_free(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(
        json.dumps({"fgovd_demo_top1": 0.5, "retrieval": {"i2t_recall@1": 0.25, "n": 10}, "model": "x", "ok": True})
    )
    assert load_eval_metrics(path) == {"fgovd_demo_top1": 0.5, "retrieval.i2t_recall_at_1": 0.25, "retrieval.n": 10.0}
    path.write_text("[1, 2]")
    with pytest.raises(RegisterError, match="JSON object"):
        load_eval_metrics(path)
    with pytest.raises(RegisterError, match="does not exist"):
        load_eval_metrics(tmp_path / "missing.json")


# ---------------------------------------------------------------- a tiny real FG-CLIP model


def _save_tokenizer(folder: Path) -> int:
    """A word-level tokenizer with CLIP's special tokens; returns the EOS id."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    bos, eos, unk = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
    vocab = {token: index for index, token in enumerate([bos, eos, unk, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=eos, unk_token=unk
    )
    tokenizer.save_pretrained(folder)
    return vocab[eos]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from transformers import CLIPImageProcessor

    from fgclip.model.modeling import FGCLIPConfig, FGCLIPModel

    folder = tmp_path_factory.mktemp("tiny-fgclip")
    eos = _save_tokenizer(folder)
    config = FGCLIPConfig(
        text_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            max_position_embeddings=16,
            vocab_size=3 + len(WORDS),
            eos_token_id=eos,
            pad_token_id=eos,
            bos_token_id=0,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            patch_size=8,
            image_size=16,
        ),
        projection_dim=8,
        long_text_max_position_embeddings=28,
        long_text_kept_positions=4,
        long_text_positions_stretched=True,
    )
    torch.manual_seed(0)
    FGCLIPModel(config).save_pretrained(folder)
    side = config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    # One store for the module: creating the SQLite schema costs seconds; every test
    # registers under its own model name instead.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch, tmp_path):
    # A SQLite store puts run artifacts under ./mlruns: keep them out of the repository.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _metrics(folder: Path, name: str, **values: float) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(values))
    return path


def _register(model_dir: Path, metrics: Path, uri: str, name: str, **kwargs):
    return register_model(
        model_dir, metrics, config=RegisterConfig(gate=GATE), tracking=TrackingConfig(uri=uri), name=name, **kwargs
    )


def _cli(argv: list[str], uri: str) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    params = Params(tracking=TrackingConfig(uri=uri), registry=RegisterConfig(gate=GATE))
    return command(parser.parse_args(argv), params)


# ----------------------------------------------------------------- registry on SQLite


def test_first_registration_becomes_champion(model_dir, sqlite_uri, tmp_path):
    metrics = _metrics(tmp_path, "m", fgovd_demo_top1=0.4, box_cls_top1=0.3)
    decision_file = tmp_path / "reports" / "register.json"
    assert (
        _cli(
            [
                "--model",
                str(model_dir),
                "--metrics",
                str(metrics),
                "--name",
                "first",
                "--decision-out",
                str(decision_file),
            ],
            sqlite_uri,
        )
        == 0
    )

    decision = json.loads(decision_file.read_text())
    assert decision["decision"] == DECISION_FIRST and decision["promoted"] is True
    assert decision["version"] == "1" and decision["champion_before"] is None
    client = MlflowClient(tracking_uri=sqlite_uri)
    assert str(client.get_model_version_by_alias("first", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("first", "challenger").version) == "1"
    tags = client.get_model_version("first", "1").tags
    assert float(tags["metric.fgovd_demo_top1"]) == 0.4 and tags["gate.decision"] == DECISION_FIRST


def test_better_challenger_is_promoted(model_dir, sqlite_uri, tmp_path):
    _register(model_dir, _metrics(tmp_path, "a", fgovd_demo_top1=0.4, box_cls_top1=0.3), sqlite_uri, "better")
    result = _register(model_dir, _metrics(tmp_path, "b", fgovd_demo_top1=0.5, box_cls_top1=0.3), sqlite_uri, "better")
    assert (result.version, result.decision, result.champion_before, result.champion_after) == (
        "2",
        DECISION_PROMOTED,
        "1",
        "2",
    )
    client = MlflowClient(tracking_uri=sqlite_uri)
    assert str(client.get_model_version_by_alias("better", "champion").version) == "2"
    tags = client.get_model_version("better", "2").tags
    assert tags["gate.champion_version"] == "1" and float(tags["gate.champion.fgovd_demo_top1"]) == 0.4


def test_worse_challenger_stays_challenger_and_the_decision_is_logged(model_dir, sqlite_uri, tmp_path):
    _register(model_dir, _metrics(tmp_path, "a", fgovd_demo_top1=0.5, box_cls_top1=0.3), sqlite_uri, "worse")
    result = _register(model_dir, _metrics(tmp_path, "b", fgovd_demo_top1=0.6, box_cls_top1=0.2), sqlite_uri, "worse")
    assert result.decision == DECISION_REJECTED and not result.promoted
    assert result.champion_after == "1" and "box_cls_top1" in result.reason

    client = MlflowClient(tracking_uri=sqlite_uri)
    assert str(client.get_model_version_by_alias("worse", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("worse", "challenger").version) == "2"
    assert sorted(str(v.version) for v in client.search_model_versions("name='worse'")) == ["1", "2"]  # kept
    tags = client.get_model_version("worse", "2").tags
    assert tags["gate.decision"] == DECISION_REJECTED and tags["gate.promoted"] == "false"
    assert tags["gate.reason"] == result.reason
    gate = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/gate.json")
    assert gate["decision"] == DECISION_REJECTED
    assert gate["champion_metrics"] == {"fgovd_demo_top1": 0.5, "box_cls_top1": 0.3}
    assert gate["challenger_metrics"] == {"fgovd_demo_top1": 0.6, "box_cls_top1": 0.2}
    assert [c["passed"] for c in gate["comparisons"]] == [True, False]


def test_champion_metrics_fall_back_to_its_run(model_dir, sqlite_uri, tmp_path):
    """A champion registered by hand (no metric.* tags) is judged by its run's metrics."""
    mlflow.set_tracking_uri(sqlite_uri)
    with mlflow.start_run() as run:
        mlflow.log_metrics({"fgovd_demo_top1": 0.7, "box_cls_top1": 0.7})
    client = MlflowClient(tracking_uri=sqlite_uri)
    client.create_registered_model("by-hand")
    version = client.create_model_version("by-hand", source=str(model_dir), run_id=run.info.run_id).version
    client.set_registered_model_alias("by-hand", "champion", str(version))

    result = _register(model_dir, _metrics(tmp_path, "m", fgovd_demo_top1=0.6, box_cls_top1=0.8), sqlite_uri, "by-hand")
    assert result.champion_metrics == {"fgovd_demo_top1": 0.7, "box_cls_top1": 0.7}
    assert result.decision == DECISION_REJECTED


def test_registration_can_join_an_existing_run(model_dir, sqlite_uri, tmp_path):
    mlflow.set_tracking_uri(sqlite_uri)
    with mlflow.start_run() as run:
        mlflow.set_tag("stage", "train-stage2")
    result = _register(
        model_dir,
        _metrics(tmp_path, "m", fgovd_demo_top1=0.4, box_cls_top1=0.3),
        sqlite_uri,
        "joined",
        run_id=run.info.run_id,
    )
    assert result.run_id == run.info.run_id
    assert MlflowClient(tracking_uri=sqlite_uri).get_model_version("joined", "1").run_id == run.info.run_id


def test_bad_inputs_register_nothing(model_dir, sqlite_uri, tmp_path):
    with pytest.raises(RegisterError, match="box_cls_top1"):
        _register(model_dir, _metrics(tmp_path, "m", fgovd_demo_top1=0.4), sqlite_uri, "bad")
    good = _metrics(tmp_path, "n", fgovd_demo_top1=0.4, box_cls_top1=0.3)
    with pytest.raises(RegisterError, match="config.json"):
        _register(tmp_path, good, sqlite_uri, "bad")
    incomplete = tmp_path / "incomplete"
    shutil.copytree(model_dir, incomplete, ignore=shutil.ignore_patterns("preprocessor_config.json"))
    with pytest.raises(RegisterError, match="preprocessor_config.json"):
        _register(incomplete, good, sqlite_uri, "bad")
    assert MlflowClient(tracking_uri=sqlite_uri).search_model_versions("name='bad'") == []


def test_logged_model_loads_back_and_embeds(model_dir, sqlite_uri, tmp_path):
    from PIL import Image

    from fgclip.model.modeling import FGCLIPModel

    _register(model_dir, _metrics(tmp_path, "m", fgovd_demo_top1=0.4, box_cls_top1=0.3), sqlite_uri, "served")
    mlflow.set_tracking_uri(sqlite_uri)
    served = mlflow.pyfunc.load_model("models:/served@champion")
    png = io.BytesIO()
    Image.new("RGB", (24, 20), "red").save(png, format="PNG")
    rows = pd.DataFrame({"text": ["a red circle", None, "blue striped square"], "image": [None, png.getvalue(), None]})
    embeddings = served.predict(rows)
    assert embeddings.shape == (3, 8) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)

    # The same numbers as FGCLIPModel itself (short texts, first-EOS pooling).
    from transformers import AutoTokenizer

    model = FGCLIPModel.from_pretrained(model_dir).eval()
    tokens = AutoTokenizer.from_pretrained(model_dir)(["a red circle"], return_tensors="pt")
    with torch.no_grad():
        direct = torch.nn.functional.normalize(
            model.get_text_features(tokens["input_ids"], tokens["attention_mask"]), dim=-1
        )
    np.testing.assert_allclose(embeddings[0], direct[0].numpy(), atol=1e-5)

    # Images go through the eval adapter, so they embed exactly as eval scored them.
    from fgclip.model.embedder import FGCLIPEmbedder

    scored = FGCLIPEmbedder(model_dir, device="cpu").encode_images([Image.open(png)], [np.zeros((0, 4))])[0][0]
    np.testing.assert_allclose(embeddings[1], scored / np.linalg.norm(scored), atol=1e-5)

    long = served.predict(pd.DataFrame({"text": ["a red circle"]}), params={"long": True})
    assert not np.allclose(long[0], embeddings[0])  # the long path has its own positions and projection
    with pytest.raises(Exception, match="exactly one"):
        served.predict(pd.DataFrame({"text": ["a red circle"], "image": [png.getvalue()]}))


# --------------------------------------------------------------- a live MLflow server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def _mlflow_server_process(tmp_path_factory):
    """A real `mlflow server` on a free loopback port, started when the module starts so
    its ~10 s start overlaps the other tests; yields (process, url)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder}/server.db",
            "--artifacts-destination",
            str(folder / "art"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(folder / "server.log").open("wb"),
        start_new_session=True,  # its own process group: the server and its workers stop together
    )
    yield server, f"http://127.0.0.1:{port}", folder / "server.log"
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.fixture
def mlflow_server(_mlflow_server_process) -> str:
    server, url, log_file = _mlflow_server_process
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return url
        except OSError:
            pass
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited ({server.returncode}): {log_file.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail("mlflow server did not answer /health within 90 s")
        time.sleep(0.5)


def test_registry_on_a_live_mlflow_server(model_dir, mlflow_server, tmp_path, monkeypatch):
    # MLFLOW_TRACKING_URI wins over params.tracking.uri (which points nowhere useful here).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    unused = f"sqlite:///{tmp_path}/unused.db"
    decision_file = tmp_path / "register.json"
    for name, values in (("a", (0.5, 0.5)), ("b", (0.6, 0.6)), ("c", (0.4, 0.9))):
        metrics = _metrics(tmp_path, name, fgovd_demo_top1=values[0], box_cls_top1=values[1])
        assert (
            _cli(
                [
                    "--model",
                    str(model_dir),
                    "--metrics",
                    str(metrics),
                    "--name",
                    "remote",
                    "--decision-out",
                    str(decision_file),
                ],
                unused,
            )
            == 0
        )
    assert not (tmp_path / "unused.db").exists()

    client = MlflowClient(tracking_uri=mlflow_server)
    assert str(client.get_model_version_by_alias("remote", "champion").version) == "2"
    assert str(client.get_model_version_by_alias("remote", "challenger").version) == "3"
    decisions = [client.get_model_version("remote", v).tags["gate.decision"] for v in ("1", "2", "3")]
    assert decisions == [DECISION_FIRST, DECISION_PROMOTED, DECISION_REJECTED]
    assert json.loads(decision_file.read_text())["champion_after"] == "2"

    mlflow.set_tracking_uri(mlflow_server)
    served = mlflow.pyfunc.load_model("models:/remote@champion")
    assert served.predict(pd.DataFrame({"text": ["a green triangle"]})).shape == (1, 8)


# ------------------------------------------------------------ lineage, files, approval


def test_the_model_is_registered_from_its_training_run_without_optimiser_states(model_dir, sqlite_uri, tmp_path):
    """A trained model folder (the trainer's summary names its MLflow run, checkpoints beside
    the Hugging Face files): its version's run is the training run, its artifact the Hugging
    Face files alone, with an input example."""
    folder = tmp_path / "stage2"
    shutil.copytree(model_dir, folder)
    (folder / "checkpoints" / "step-10").mkdir(parents=True)
    (folder / "checkpoints" / "step-10" / "optim_states.pt").write_bytes(b"\0" * 1024)
    mlflow.set_tracking_uri(sqlite_uri)
    mlflow.set_experiment("fgclip-train")
    with mlflow.start_run(run_name="train-stage2") as training:
        mlflow.set_tag("component", "train")
    (folder / "training.json").write_text(json.dumps({"stage": 2, "mlflow_run_id": training.info.run_id}))

    result = _register(folder, _metrics(tmp_path, "m", fgovd_demo_top1=0.4, box_cls_top1=0.3), sqlite_uri, "lineage")
    client = MlflowClient(tracking_uri=sqlite_uri)
    version = client.get_model_version("lineage", result.version)
    assert version.run_id == training.info.run_id == result.training_run_id
    assert client.get_run(training.info.run_id).data.tags["component"] == "train"
    assert client.get_run(result.run_id).data.tags["training.run_id"] == training.info.run_id
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(tmp_path / "dl")))
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert any(name.endswith("fgclip_model/config.json") for name in files), files
    assert any(name.endswith("fgclip_model/training.json") for name in files)
    weights = [name for name in files if not name.startswith("code/")]  # code/: the fgclip package
    assert not [name for name in weights if "checkpoint" in name or "optim" in name], files
    assert "input_example.json" in files or any(name.endswith("input_example.json") for name in files), files


def test_with_approval_required_the_gate_leaves_the_champion_to_a_person(model_dir, sqlite_uri, tmp_path):
    config = RegisterConfig(gate=GATE, require_approval=True)
    first = register_model(
        model_dir,
        _metrics(tmp_path, "a", fgovd_demo_top1=0.4, box_cls_top1=0.3),
        config=config,
        tracking=TrackingConfig(uri=sqlite_uri),
        name="approval",
    )
    assert first.gate_passed and first.approval_required and not first.promoted
    assert first.champion_after is None and "waiting for approval" in first.reason
    client = MlflowClient(tracking_uri=sqlite_uri)
    assert "champion" not in client.get_registered_model("approval").aliases
    assert str(client.get_model_version_by_alias("approval", "challenger").version) == first.version
