"""The suite on every benchmark's tiny fixture with an embedder whose similarities are fixed:
an oracle scores exactly 1 everywhere, one deliberate mistake costs exactly 1/N, and the
mistakes that broke the reference scripts (a second pixel normalisation, a wrong
resolution, a truncated long caption, the short text path for long captions) fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fgclip.eval.benchmarks.base import BenchmarkMissing, IncompleteBenchmark
from fgclip.eval.benchmarks.config import PAPER_BENCHMARKS, BenchmarkSuiteConfig
from fgclip.eval.suite.features import box_key
from fgclip.eval.suite.run import SCORED, SKIPPED, SuiteError, run_suite
from tests.support.benchmark_files import Truth, file_fingerprint, write_data_root
from tests.support.table_embedder import TableEmbedder, oracle_for

RETRIEVAL = ("sharegpt4v_1k", "dci", "docci", "urban1k", "coco_5k", "flickr30k_1k")
LONG = ("sharegpt4v_1k", "dci", "docci", "urban1k")
#: two templates keep the 1000 ImageNet classes' prompts few; CLIP's 80 are tested in test_readers
TEMPLATES = ("a photo of a {}.", "a drawing of a {}.")


def small_config(**changes: object) -> BenchmarkSuiteConfig:
    base = BenchmarkSuiteConfig()
    data = base.model_dump()
    data["batch_size"] = 4
    for name in ("coco_boxes", "lvis_boxes", "imagenet_1k"):
        data[name]["templates"] = TEMPLATES
    data.update(changes)
    return BenchmarkSuiteConfig.model_validate(data)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    root = tmp_path_factory.mktemp("benchmarks")
    return root, write_data_root(root)


def oracle(data_root: tuple[Path, Truth], config: BenchmarkSuiteConfig) -> tuple[TableEmbedder, dict]:
    root, truth = data_root
    return oracle_for(truth, config, root)


def test_an_oracle_scores_exactly_one_on_every_benchmark_and_each_image_is_embedded_once(data_root) -> None:
    root, truth = data_root
    config = small_config()
    embedder, _ = oracle(data_root, config)
    result = run_suite(embedder, config, data_root=root)
    assert [r.name for r in result.results] == list(PAPER_BENCHMARKS)
    assert all(r.status == SCORED for r in result.results)
    metrics = result.metrics()
    expected = (
        {f"fgovd_{d}_top1" for d in ("hard", "medium", "easy", "trivial")}
        | {f"{b}_top{k}" for b in ("coco_boxes", "lvis_boxes", "imagenet_1k") for k in (1, 5)}
        | {f"{b}_{d}_r{k}" for b in RETRIEVAL for d in ("i2t", "t2i") for k in (1, 5, 10)}
    )
    assert set(metrics) == expected
    assert metrics == {name: 1.0 for name in metrics}
    # every image file decoded and embedded once per view, every box once, whatever the
    # number of benchmarks sharing it (COCO image 139: boxes, LVIS, FG-OVD, COCO 5k)
    assert embedder.image_calls and set(embedder.image_calls.values()) == {1}
    assert embedder.region_calls and set(embedder.region_calls.values()) == {1}
    coco = file_fingerprint(root / "coco" / "val2017" / "000000000139.jpg")
    assert embedder.image_calls[(coco, "processor")] == 1  # COCO 5k's view
    assert sum(key == coco for key, _ in embedder.region_calls) == 7  # 3 COCO + 2 LVIS + 2 FG-OVD boxes
    assert result.throughput["images"] == len(embedder.pixels) and result.throughput["images_per_second"] > 0
    texts = [text for text, _ in embedder.text_calls]
    assert len(texts) == len(set(embedder.text_calls))  # each (text, path) encoded once
    counts = {r.name: r.counts for r in result.results}
    assert counts["coco_5k"]["captions"] == 15 and counts["coco_boxes"]["boxes"] == 7
    assert {r.name: r.rejects for r in result.results}["coco_boxes"] == {
        "bad_bbox": 1,
        "unknown_category": 1,
        "unknown_image": 1,
    }


@pytest.mark.parametrize("benchmark", RETRIEVAL)
def test_ranking_one_right_caption_second_costs_exactly_one_over_n(data_root, benchmark: str) -> None:
    root, truth = data_root
    config = small_config(suite=(benchmark,))
    embedder, axes = oracle(data_root, config)
    images = truth.images[benchmark]
    n = len(images)
    # image 0 now looks more like image 1's captions (0.8) than like its own (0.6)
    embedder.set_image(images[0], 0.6 * axes[benchmark][0] + 0.8 * axes[benchmark][1])
    metrics = run_suite(embedder, config, data_root=root).metrics()
    assert metrics[f"{benchmark}_i2t_r1"] == pytest.approx(1 - 1 / n)
    assert metrics[f"{benchmark}_i2t_r10"] == 1.0  # behind image 1's (up to 5) captions, within 10
    assert metrics[f"{benchmark}_t2i_r1"] == 1.0  # its captions still find it first (0.6 against 0)


@pytest.mark.parametrize("benchmark", RETRIEVAL)
def test_ranking_one_right_image_second_costs_exactly_one_over_the_captions(data_root, benchmark: str) -> None:
    root, truth = data_root
    config = small_config(suite=(benchmark,))
    embedder, axes = oracle(data_root, config)
    caption = truth.captions[benchmark][0][0]
    long = config.settings(benchmark).text_path == "long"
    embedder.set_text(caption, 0.6 * axes[benchmark][0] + 0.8 * axes[benchmark][1], long)
    metrics = run_suite(embedder, config, data_root=root).metrics()
    captions = sum(len(c) for c in truth.captions[benchmark])
    assert metrics[f"{benchmark}_t2i_r1"] == pytest.approx(1 - 1 / captions)
    assert metrics[f"{benchmark}_t2i_r5"] == 1.0
    # image 0 keeps a caption of its own on top when it has several; with one, that caption
    # (0.6) still beats every other image's caption (0)
    assert metrics[f"{benchmark}_i2t_r1"] == 1.0


@pytest.mark.parametrize("benchmark", ["coco_boxes", "lvis_boxes"])
def test_one_box_classified_wrong_costs_exactly_one_over_the_boxes(data_root, benchmark: str) -> None:
    root, truth = data_root
    config = small_config(suite=(benchmark,))
    embedder, axes = oracle(data_root, config)
    path, box, label = truth.boxes[benchmark][0]
    wrong = (label + 1) % len(truth.classes[benchmark])
    embedder.set_region(path, box, 0.6 * axes[benchmark]["classes"][label] + 0.8 * axes[benchmark]["classes"][wrong])
    metrics = run_suite(embedder, config, data_root=root).metrics()
    assert metrics[f"{benchmark}_top1"] == pytest.approx(1 - 1 / len(truth.boxes[benchmark]))
    assert metrics[f"{benchmark}_top5"] == 1.0


def test_one_image_classified_wrong_costs_exactly_one_over_the_images(data_root) -> None:
    root, truth = data_root
    config = small_config(suite=("imagenet_1k",))
    embedder, axes = oracle(data_root, config)
    images, labels = truth.images["imagenet_1k"], truth.labels["imagenet_1k"]
    other = next(label for label in axes["imagenet_1k"] if label != labels[0])
    embedder.set_image(images[0], 0.6 * axes["imagenet_1k"][labels[0]] + 0.8 * axes["imagenet_1k"][other])
    metrics = run_suite(embedder, config, data_root=root).metrics()
    assert metrics["imagenet_1k_top1"] == pytest.approx(1 - 1 / len(images))
    assert metrics["imagenet_1k_top5"] == 1.0


def test_fgovd_one_region_closer_to_a_negative_costs_exactly_one_over_n(data_root) -> None:
    root, truth = data_root
    config = small_config(suite=("fgovd",))
    embedder, _ = oracle(data_root, config)
    line = truth.fgovd[0]
    x, y, w, h = line["bbox"]
    box = (x / line["width"], y / line["height"], (x + w) / line["width"], (y + h) / line["height"])
    negative = line["neg_expression"][0]
    embedder.set_text(
        negative, embedder.regions[(file_fingerprint(root / "coco" / line["img_path"]), box_key(box))] * 2, False
    )
    metrics = run_suite(embedder, config, data_root=root).metrics()
    assert metrics["fgovd_hard_top1"] == pytest.approx(1 - 1 / len(truth.fgovd))  # a tie is not a win
    assert metrics["fgovd_medium_top1"] == 1.0


def test_the_suite_passes_decoded_pixels_never_normalised_ones(data_root) -> None:
    """The reference DCI script normalised pixels twice (about 55 instead of 66): here the
    images reach the model adapter as decoded 0-255 RGB, which normalises them once."""
    root, _ = data_root
    config = small_config(suite=("dci", "coco_boxes"))
    embedder, _ = oracle(data_root, config)
    run_suite(embedder, config, data_root=root)
    photos = sorted((root / "dci" / "densely_captioned_images" / "photos").glob("*.jpg"))
    for path in [*photos, root / "coco" / "val2017" / "000000000285.jpg"]:
        received = embedder.pixels[file_fingerprint(path)]
        with __import__("PIL.Image").Image.open(path) as opened:
            assert received.dtype == np.uint8 and np.array_equal(received, np.asarray(opened.convert("RGB")))


def test_a_benchmark_pinned_at_another_resolution_refuses_to_run(data_root) -> None:
    """FG-OVD at 224 instead of 336 (a flag that silently fell back): never silently."""
    root, _ = data_root
    config = small_config(suite=("fgovd",), fgovd={**BenchmarkSuiteConfig().fgovd.model_dump(), "image_size": 336})
    embedder, _ = oracle(data_root, config)
    with pytest.raises(SuiteError, match="pinned at 336 px but the model runs at 224 px"):
        run_suite(embedder, config, data_root=root)
    assert not embedder.image_calls and not embedder.region_calls  # checked before any work


def test_long_captions_reach_the_long_path_whole(data_root) -> None:
    root, truth = data_root
    config = small_config(suite=LONG)
    embedder, _ = oracle(data_root, config)
    result = run_suite(embedder, config, data_root=root)
    for name in LONG:
        for captions in truth.captions[name]:
            assert (captions[0], True) in embedder.text_calls  # the full caption, on the long path
            assert (captions[0], False) not in embedder.text_calls
            assert len(captions[0].split()) > 77  # past the short path: truncation would show
    assert all(r.counts["texts_truncated"] == 0 for r in result.results)
    # a model whose long path holds fewer tokens than pinned is refused ...
    with pytest.raises(SuiteError, match="pinned to 248 tokens on the long text path"):
        run_suite(TableEmbedder(long_capacity=77), config, data_root=root)
    # ... and captions past the pinned 248 tokens are counted as cut
    short = TableEmbedder()
    short.token_counts = lambda texts, long: [300 for _ in texts]  # type: ignore[method-assign]
    counts = {r.name: r.counts for r in run_suite(short, small_config(suite=("urban1k",)), data_root=root).results}
    assert counts["urban1k"]["texts_truncated"] == 3


def test_long_captions_through_the_short_path_would_score_differently(data_root) -> None:
    """The oracle holds the right vectors on the long path only: a harness that sent long
    captions through the short path would score 0 there, not 1."""
    root, _ = data_root
    config = small_config(suite=LONG)
    embedder, _ = oracle(data_root, config)
    assert set(run_suite(embedder, config, data_root=root).metrics().values()) == {1.0}
    wrong = small_config(
        suite=("urban1k",),
        urban1k={**BenchmarkSuiteConfig().urban1k.model_dump(), "text_path": "short", "max_text_tokens": 77},
    )
    metrics = run_suite(embedder, wrong, data_root=root).metrics()
    assert metrics["urban1k_i2t_r1"] == metrics["urban1k_t2i_r1"] == 0.0


def test_a_missing_benchmark_fails_clearly_or_is_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    truth = write_data_root(tmp_path)
    (tmp_path / "docci" / "docci_descriptions.jsonlines").unlink()
    config = small_config(suite=("urban1k", "docci"))
    embedder, _ = oracle_for(truth, config, tmp_path)
    with pytest.raises(
        BenchmarkMissing, match=r"docci: descriptions file .*docci_descriptions.jsonlines does not exist"
    ):
        run_suite(embedder, config, data_root=tmp_path)
    result = run_suite(embedder, config, data_root=tmp_path, skip_missing=True)
    assert [(r.name, r.status) for r in result.results] == [("urban1k", SCORED), ("docci", SKIPPED)]
    assert "skipping docci" in caplog.text and set(result.metrics()) == {
        f"urban1k_{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)
    }


def test_missing_images_fail_unless_allowed(tmp_path: Path) -> None:
    truth = write_data_root(tmp_path)
    config = small_config(suite=("urban1k",))
    embedder, _ = oracle_for(truth, config, tmp_path)
    truth.images["urban1k"][0].unlink()
    with pytest.raises(IncompleteBenchmark, match="1 of 3 images not found"):
        run_suite(embedder, config, data_root=tmp_path)
    allowed = small_config(suite=("urban1k",), allow_missing_images=True)
    result = run_suite(embedder, allowed, data_root=tmp_path).results[0]
    assert result.counts["images"] == 2 and result.rejects == {"image_missing": 1, "no_caption": 1}
    assert result.metrics["i2t_r1"] == 1.0


def test_an_unreadable_image_is_counted_and_left_out(tmp_path: Path) -> None:
    truth = write_data_root(tmp_path)
    config = small_config(suite=("docci",))
    embedder, _ = oracle_for(truth, config, tmp_path)
    truth.images["docci"][1].write_bytes(b"not a jpeg")
    result = run_suite(embedder, config, data_root=tmp_path)
    assert result.results[0].counts["images_unreadable"] == 1 and result.results[0].counts["images"] == 2
    assert result.throughput["images_unreadable"] == 1.0 and result.metrics()["docci_i2t_r1"] == 1.0


def test_a_collapsed_model_gets_no_credit(data_root) -> None:
    root, _ = data_root

    class Collapsed(TableEmbedder):
        def encode_images(self, images, boxes, with_global=True, view=None):
            return np.ones((len(images), 4)), [np.ones((len(b), 4)) for b in boxes]

        def encode_texts(self, texts, long):
            return np.ones((len(texts), 4))

    metrics = run_suite(Collapsed(), small_config(), data_root=root).metrics()
    firsts = [value for name, value in metrics.items() if name.endswith(("_top1", "_r1"))]
    assert firsts and set(firsts) == {0.0}


def test_eval_table_paper_puts_any_number_of_models_beside_the_published_rows(tmp_path: Path, capsys) -> None:
    from fgclip.cli import main

    for name, value in (("stage1", 0.25), ("stage2", 0.5), ("finetuned", 0.75)):
        (tmp_path / name).mkdir()
        metrics = {"fgovd_hard_top1": value, "lvis_boxes_top1": value / 2}
        (tmp_path / name / "metrics.json").write_text(__import__("json").dumps(metrics))
    reports = [str(tmp_path / name) for name in ("stage1", "stage2", "finetuned")]
    plot = tmp_path / "table.png"
    args = ["--params", str(tmp_path / "none.yaml"), "eval-table", "--paper", "--reports", *reports]
    assert main([*args, "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| model | FG-OVD hard |") and "LVIS box top-1" in lines[0]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in lines[2:]
        if line.startswith("|")
    }
    assert rows["CLIP (published)"][0] == "12.0" and rows["FG-CLIP (published)"][0] == "46.1"
    lvis = [c.strip() for c in lines[0].split("|")[2:-1]].index("LVIS box top-1")
    assert rows["stage1"][0] == "25.0" and rows["finetuned"][0] == "75.0" and rows["stage2"][lvis] == "25.0"
    assert rows["FG-CLIP (published)"][lvis] == "–"  # LVIS: no published number in the reference
    assert rows["stage2"][-1] == "–"  # IN-1K: not measured
    assert any("not measured here" in line for line in lines) and plot.read_bytes()[:4] == b"\x89PNG"
    assert main([*args, "--no-published"]) == 0
    assert "published" not in capsys.readouterr().out
