"""The trainer: a tiny model trained on tiny shards with DeepSpeed ZeRO-2 on CPU (gloo).

Most runs use train.precision=fp32 (faster on CPU); the kill-and-resume test runs both
fp32 and bf16 (the default), and both resume exactly.
"""

from __future__ import annotations

import dataclasses
import math
import socket

import pytest
import torch
import yaml
from safetensors.torch import load_file

from fgclip.train.checkpoints import checkpoint_tags
from fgclip.train.data import DataPosition, list_shard_urls, make_loader, plan_epoch, real_batches
from fgclip.train.engine import deepspeed_config, warmup_cosine
from fgclip.train.examples import AnnotationDirs
from fgclip.train.job import TrainingError, TrainJob
from fgclip.train.loop import run_training
from tests.support.train_kit import build_tiny_model, one_step_on_global_batch, tiny_params, write_dataset


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    dirs = write_dataset(root, shards=4, per_shard=12)
    params = tiny_params(root)
    return root, dirs, build_tiny_model(root / "model", dirs, params), params


def with_recipe(params, stage: int, **changes):
    """params with the demo recipe of `stage` changed (and `train.*` via changes["train"])."""
    train_changes = changes.pop("train", {})
    demo = params.train.demo
    recipe = getattr(demo, f"stage{stage}").model_copy(update=changes)
    train = params.train.model_copy(update={"demo": demo.model_copy(update={f"stage{stage}": recipe}), **train_changes})
    return params.model_copy(update={"train": train})


def job_for(world, out, stage: int = 2, **changes) -> TrainJob:
    _, dirs, model_dir, _ = world
    annotations = AnnotationDirs(
        str(dirs["captions"]),
        str(dirs["regions"]) if stage == 2 else None,
        str(dirs["negatives"]) if stage == 2 else None,
    )
    return TrainJob(
        stage=stage, init=str(model_dir), images=str(dirs["images"]), annotations=annotations, out=str(out), **changes
    )


def no_tracking(params):
    return params.model_copy(update={"tracking": params.tracking.model_copy(update={"enabled": False})})


# ------------------------------------------------------------------------ pure parts


def test_warmup_then_cosine_schedule():
    factor = warmup_cosine(warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == pytest.approx(1.0)
    assert factor(9) == pytest.approx(0.1 + 0.9 * 0.5)
    assert factor(14) == pytest.approx(0.1) and factor(100) == pytest.approx(0.1)
    assert all(factor(s) >= factor(s + 1) for s in range(4, 20))


def test_deepspeed_config_follows_the_recipe(world):
    params = world[3]
    recipe = params.train.stage2
    config = deepspeed_config(recipe, params.train.model_copy(update={"precision": "bf16"}), world_size=4)
    assert config["bf16"] == {"enabled": True}
    assert config["zero_optimization"]["stage"] == 2
    assert config["train_batch_size"] == 4 * recipe.batch_size == 4 * 512
    assert config["gradient_clipping"] == recipe.grad_clip
    assert deepspeed_config(recipe, params.train, 1)["bf16"] == {"enabled": False}  # fp32 flag
    paper = params.train.model_copy(update={"recipe": "paper"})
    assert (paper.recipe_for(1).lr, paper.recipe_for(1).warmup_steps, paper.recipe_for(1).betas) == (
        1e-4,
        200,
        (0.9, 0.98),
    )
    assert (paper.recipe_for(2).lr, paper.recipe_for(2).weight_decay, paper.recipe_for(2).warmup_steps) == (
        1e-6,
        0.001,
        50,
    )
    assert (paper.stage2.regional_weight, paper.stage2.hard_weight) == (0.1, 0.5)


# ---------------------------------------------------------------------- training runs


def test_stage2_training_lowers_the_loss_and_saves_a_loadable_model(world, tmp_path, monkeypatch):
    import mlflow

    from fgclip.model import FGCLIPModel
    from fgclip.train.images import ImageTransform
    from fgclip.train.tokenizer import load_tokenizer

    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI, which then wins over params
    # for every later run in this process (another test's run may have set it).
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root, _, _, params = world
    params = with_recipe(params, 2, lr=2e-3, warmup_steps=2, batch_size=8, epochs=4)
    result = run_training(job_for(world, tmp_path / "stage2"), params, progress=False)
    assert result.finished and result.step == result.total_steps == 4 * (48 // 8)
    losses = [result.losses[step]["loss"] for step in sorted(result.losses)]
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses
    parts = result.losses[result.step]
    assert {"loss_global", "loss_regional", "loss_hard_negative"} <= set(parts)
    recipe = params.train.recipe_for(2)
    assert parts["loss"] == pytest.approx(
        parts["loss_global"]
        + recipe.regional_weight * parts["loss_regional"]
        + recipe.hard_weight * parts["loss_hard_negative"],
        rel=1e-5,
    )

    model, info = FGCLIPModel.from_pretrained(result.final_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.fgclip_training_stage == 2
    assert model.dtype == torch.float32
    initial = FGCLIPModel.from_pretrained(world[2])
    assert not torch.equal(model.logit_scale_hardneg, initial.logit_scale_hardneg)  # temperatures are learned
    load_tokenizer(result.final_dir)
    ImageTransform.from_pretrained(result.final_dir)

    client = mlflow.MlflowClient(tracking_uri=params.tracking.uri)
    run = client.search_runs([client.get_experiment_by_name("fgclip-train").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, result.step + 1))
    assert [m.value for m in history] == pytest.approx(losses)
    for name in (
        "lr",
        "temperature_global",
        "temperature_regional",
        "temperature_hard_negative",
        "images_per_s",
        "loss_hard_negative",
    ):
        assert name in run.data.metrics, name
    assert run.data.params["stage"] == "2"
    inputs = {dataset.dataset.name for dataset in run.inputs.dataset_inputs}
    assert inputs == {"images", "captions", "regions", "negatives", "init_model"}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_killed_run_resumes_exactly(world, tmp_path, precision):
    root, _, _, params = world
    params = no_tracking(
        with_recipe(
            params,
            2,
            batch_size=8,
            epochs=2,
            warmup_steps=2,
            train={"workers": 2, "checkpoint_every": 4, "keep_checkpoints": 2, "precision": precision},
        )
    )
    full = run_training(job_for(world, tmp_path / "full"), params, progress=False)
    assert full.finished and full.total_steps == 12

    # killed at step 9 (epoch 2, an odd batch: the loader's worker cycle must line up again)
    job = job_for(world, tmp_path / "part")
    part = run_training(dataclasses.replace(job, stop_after_steps=9), params, progress=False)
    assert not part.finished and part.final_dir is None and part.step == 9
    assert checkpoint_tags(job.checkpoints) == ["step000000008", "step000000009"]  # keep_checkpoints = 2
    with pytest.raises(TrainingError, match="pass --resume"):
        run_training(job, params, progress=False)

    resumed = run_training(dataclasses.replace(job, resume=True), params, progress=False)
    assert resumed.resumed_from == 9 and resumed.finished
    for step in range(1, 13):
        before = (part.losses if step <= 9 else resumed.losses)[step]["loss"]
        assert before == pytest.approx(full.losses[step]["loss"], abs=1e-5), step
    assert set(resumed.losses) == set(range(10, 13))
    uninterrupted = load_file(full.final_dir / "model.safetensors")
    continued = load_file(resumed.final_dir / "model.safetensors")
    assert uninterrupted.keys() == continued.keys()
    for name, tensor in uninterrupted.items():  # the exported fp32 weights agree too
        torch.testing.assert_close(continued[name], tensor, atol=1e-6, rtol=0, msg=name)

    if precision == "fp32":  # resuming under another stage is refused (independent of precision)
        stage1 = with_recipe(params, 1, batch_size=8)
        with pytest.raises(TrainingError, match="stage 2 run, not stage 1"):
            run_training(
                dataclasses.replace(job_for(world, tmp_path / "part", stage=1), resume=True), stage1, progress=False
            )


def test_resume_refuses_checkpoints_of_other_inputs(world, tmp_path):
    """A TrainJob always passes --resume (a retry continues); checkpoints an earlier run left
    for another dataset must then not be continued."""
    import shutil

    root, dirs, _, params = world
    params = no_tracking(with_recipe(params, 1, batch_size=8, epochs=1, warmup_steps=1, train={"checkpoint_every": 1}))
    images = tmp_path / "images"
    shutil.copytree(dirs["images"], images)
    job = dataclasses.replace(job_for(world, tmp_path / "out", stage=1), images=str(images))
    assert run_training(dataclasses.replace(job, stop_after_steps=1), params, progress=False).step == 1
    resumed = run_training(dataclasses.replace(job, resume=True, stop_after_steps=2), params, progress=False)
    assert resumed.resumed_from == 1  # the same inputs: continued
    (images / "00003.tar").unlink()  # another dataset in the same place
    (images / "00003.parquet").unlink(missing_ok=True)
    with pytest.raises(TrainingError, match="trained from other inputs"):
        run_training(dataclasses.replace(job, resume=True), params, progress=False)


def test_cli_trains_stage1_stops_and_resumes(world, tmp_path, clip_factory, capsys):
    from fgclip.cli import main
    from fgclip.model import FGCLIPModel

    root, dirs, model_dir, params = world
    params = no_tracking(with_recipe(params, 1, batch_size=8, epochs=1))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    common = [
        "--params",
        str(params_file),
        "--no-progress",
        "train",
        "--stage",
        "1",
        "--init",
        str(model_dir),
        "--images",
        str(dirs["images"]),
        "--captions",
        str(dirs["captions"]),
        "--out",
        str(tmp_path / "s1"),
    ]
    assert main([*common, "--stop-after-steps", "2"]) == 0
    assert not (tmp_path / "s1" / "config.json").exists()
    assert main([*common, "--resume"]) == 0
    model = FGCLIPModel.from_pretrained(tmp_path / "s1")
    assert model.config.fgclip_training_stage == 1
    assert (
        main(
            [
                "--params",
                str(params_file),
                "train",
                "--stage",
                "2",
                "--init",
                str(model_dir),
                "--images",
                str(dirs["images"]),
                "--captions",
                str(dirs["captions"]),
                "--out",
                str(tmp_path / "s2"),
            ]
        )
        == 2
    )
    clip_factory().save_pretrained(tmp_path / "plain-clip")  # not converted: refused with a hint
    common[common.index("--init") + 1] = str(tmp_path / "plain-clip")
    assert main([*common[:-1], str(tmp_path / "s3")]) == 2
    assert "fgclip init-model --base" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_gloo_ranks_match_one_process_on_the_same_global_batch(world, tmp_path):
    import torch.multiprocessing as mp

    root, dirs, model_dir, params = world
    params = with_recipe(params, 1, lr=1e-3, warmup_steps=0, batch_size=4, grad_clip=1.0)
    settings_params = with_recipe(params, 1, batch_size=8)
    from fgclip.train.loop import _stream_settings

    settings = _stream_settings(job_for(world, tmp_path, stage=1), settings_params, settings_params.train.recipe_for(1))
    plan = plan_epoch(list_shard_urls(dirs["images"]), world_size=1, workers=0, batch_size=8, samples_per_epoch=None)
    batch = next(real_batches(make_loader(settings, plan, DataPosition(0))))
    torch.save(batch, tmp_path / "batch.pt")

    results = {}
    for world_size in (1, 2):
        out = tmp_path / f"world{world_size}.pt"
        one_proc_params = with_recipe(params, 1, batch_size=8 // world_size)
        mp.spawn(
            one_step_on_global_batch,
            nprocs=world_size,
            join=True,
            args=(
                world_size,
                _free_port(),
                str(model_dir),
                str(tmp_path / "batch.pt"),
                str(out),
                one_proc_params.model_dump_json(),
            ),
        )
        results[world_size] = torch.load(out, weights_only=False)
    single, double = results[1], results[2]
    assert math.isfinite(single["loss"])
    assert double["loss"] == pytest.approx(single["loss"], abs=1e-5)
    initial = {
        k: v
        for k, v in __import__("fgclip.model", fromlist=["FGCLIPModel"])
        .FGCLIPModel.from_pretrained(model_dir)
        .state_dict()
        .items()
    }
    changed = 0
    for name, tensor in single["state"].items():
        torch.testing.assert_close(double["state"][name], tensor, atol=2e-6, rtol=1e-5, msg=name)
        changed += int(not torch.equal(tensor, initial[name]))
    assert changed > len(single["state"]) // 2  # the step really updated the weights
