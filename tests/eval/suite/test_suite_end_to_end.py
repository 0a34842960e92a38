"""`fgclip eval --suite paper` end to end: every benchmark's fixture in its published layout,
a real tiny FG-CLIP built from config by `init-model` (its own trained tokenizer and image
processor), the printed paper table, the files, the MLflow run and the registry's gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fgclip.eval.benchmarks.config import PAPER_BENCHMARKS
from fgclip.registry.gate import decide_promotion, load_eval_metrics
from tests.support.benchmark_files import write_data_root
from tests.support.train_kit import build_tiny_model, tiny_params, write_dataset

TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    dirs = write_dataset(root / "data", shards=1, per_shard=8)
    return build_tiny_model(root / "model", dirs, tiny_params(root))


def suite_params(path: Path, image_size: int, uri: str) -> Path:
    """Params pinning every benchmark to the tiny model's 32 px (the paper's are 224)."""
    benchmarks: dict = {"batch_size": 8}
    for name in PAPER_BENCHMARKS:
        benchmarks[name] = {"image_size": image_size}
    for name in ("coco_boxes", "lvis_boxes", "imagenet_1k"):
        benchmarks[name]["templates"] = TEMPLATES
    path.write_text(yaml.safe_dump({"benchmarks": benchmarks, "tracking": {"uri": uri, "enabled": True}}))
    return path


@pytest.mark.slow
def test_fgclip_eval_suite_paper_runs_every_benchmark_prints_the_table_and_logs_every_metric(
    tmp_path: Path, tiny_model: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from fgclip.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data_root = tmp_path / "benchmarks"
    write_data_root(data_root)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = suite_params(tmp_path / "params.yaml", 32, uri)
    out = tmp_path / "reports" / "stage2"
    argv = ["--params", str(params), "--no-progress", "eval", "--suite", "paper", "--model", str(tiny_model)]
    code = main([*argv, "--data-root", str(data_root), "--out", str(out), "--model-name", "tiny stage 2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| model | FG-OVD hard |" in printed and "| tiny stage 2 |" in printed
    assert "| FG-CLIP (published) | 46.1 | 66.6 | 68.7 | 83.4 | 52.3 |" in printed
    assert "images decoded once" in printed and "images/s" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics) == 4 + 2 * 3 + 6 * 2 * 3  # FG-OVD, 3 classification tasks (top-1/5), 6 retrieval
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
    for name in PAPER_BENCHMARKS:
        result = json.loads((out / f"{name}.json").read_text())
        assert result["status"] == "scored" and result["settings"]["image_size"] == 32
        assert result["files"] and result["metrics"]
    assert json.loads((out / "sharegpt4v_1k.json").read_text())["settings"]["text_path"] == "long"
    assert json.loads((out / "coco_boxes.json").read_text())["extra"]["templates"] == 2
    suite = json.loads((out / "suite.json").read_text())
    assert suite["throughput"]["images_per_second"] > 0 and suite["model"]["image_size"] == 32
    assert (out / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tiny stage 2" in (out / "table.md").read_text()

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["fgclip-benchmarks"], output_format="list")
    assert len(runs) == 1
    logged = runs[0].data.metrics
    assert {name: logged[name] for name in metrics} == pytest.approx(metrics)
    assert logged["suite.images_per_second"] > 0 and logged["count.coco_5k.captions"] == 15
    assert runs[0].data.params["protocol.dci.text_path"] == "long" and runs[0].data.tags["model.digest"]

    # The registry's promotion gate reads the suite's metrics.json as it is.
    gated = load_eval_metrics(out / "metrics.json")
    decision = decide_promotion(
        gated, {**gated, "fgovd_hard_top1": gated["fgovd_hard_top1"] - 0.1}, {"fgovd_hard_top1": 0.05}
    )
    assert decision.promoted

    # --mlflow-run-id: the metrics go onto the model's own run (here: a stand-in training run).
    mlflow.set_experiment("fgclip-train")
    with mlflow.start_run(run_name="train-stage2") as training:
        pass
    again = tmp_path / "reports" / "again"
    argv_again = [*argv, "--data-root", str(data_root), "--out", str(again), "--benchmarks", "urban1k,coco_5k"]
    assert main([*argv_again, "--mlflow-run-id", training.info.run_id]) == 0
    training_metrics = mlflow.get_run(training.info.run_id).data.metrics
    assert training_metrics["urban1k_i2t_r1"] == json.loads((again / "metrics.json").read_text())["urban1k_i2t_r1"]
    assert len(mlflow.search_runs(experiment_names=["fgclip-benchmarks"], output_format="list")) == 1


def test_the_suite_refuses_a_model_at_another_resolution_and_names_missing_data(
    tmp_path: Path, tiny_model: Path, capsys
) -> None:
    from fgclip.cli import main

    data_root = tmp_path / "benchmarks"
    write_data_root(data_root)
    common = ["--set", "tracking.enabled=false", "eval", "--suite", "paper", "--model", str(tiny_model)]
    # the defaults pin the paper's 224 px; the tiny model runs at 32 px
    assert (
        main(
            [
                "--params",
                str(tmp_path / "none.yaml"),
                *common,
                "--data-root",
                str(data_root),
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 2
    )
    assert "pinned at 224 px but the model runs at 32 px" in capsys.readouterr().err
    params = suite_params(tmp_path / "params.yaml", 32, "sqlite:///unused.db")
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["--params", str(params), *common, "--data-root", str(empty), "--out", str(tmp_path / "b")])
    assert code == 2 and "fgovd: FG-OVD folder" in capsys.readouterr().err
    code = main(
        ["--params", str(params), *common, "--data-root", str(empty), "--out", str(tmp_path / "c"), "--skip-missing"]
    )
    assert code == 2 and "no benchmark to score" in capsys.readouterr().err
