"""qc: sampling design, validators, the truth judge, the Wilson interval, the gate, the
labels reviewer, and one whole CLI run over tiny shards built here."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import random
import re
from pathlib import Path

import pytest
from PIL import Image
from scipy.stats import norm

from fgclip.data.qc.cli import add_arguments, command
from fgclip.data.qc.estimate import Assessment, NoiseEstimate, apply_gate, assess, estimate_noise, wilson_interval, z_value
from fgclip.data.qc.population import RegionItem
from fgclip.data.qc.report import gallery_cards
from fgclip.data.qc.reviewers import BAD, LabelsReviewer, OK, TruthReviewer, UNREVIEWED, Verdict, load_labels
from fgclip.data.qc.sampling import allocate, stratified_sample
from fgclip.data.qc.validators import Failure, ValidationRules, check_negatives, validate_item
from fgclip.demo.truth import TruthUnavailable
from fgclip.demo.judge import judge_region, modifiers, named_shape
from fgclip.errors import ExitCode
from fgclip.config import load_params
from fgclip.text.lexicon import COLOURS
from fgclip.core.shards import ShardSample, annotation_path, write_image_shard, write_jsonl_atomic


def colour_negatives(positive: str, colour: str, count: int = 10) -> tuple[str, ...]:
    """Hard negatives the way the paper makes them: swap the colour, keep the noun."""
    others = [name for name in COLOURS if name != colour][:count]
    return tuple(positive.replace(colour, other, 1) for other in others)


def stub_negatives_check(positive: str, negatives: list[str], count: int) -> list[str]:
    """Stands in for fgclip.data.negatives.core.validate_negatives where negatives are not the topic."""
    return [] if len(negatives) == count else [f"expected {count} negatives, got {len(negatives)}"]


RULES = ValidationRules(min_box_area_fraction=0.0005, max_box_area_fraction=0.9, min_caption_words=8,
                           max_caption_words=40, negatives_count=10, negatives_check=stub_negatives_check)
CAPTION = "a small red striped circle sits on the left of a large blue square"


def judge(item: RegionItem, truth: dict, match_iou: float) -> Verdict:
    """The truth judge on a QC item, as the truth reviewer asks it."""
    right, why = judge_region(item.bbox, item.short_expr, item.long_expr, truth, match_iou)
    return Verdict(OK if right else BAD, why)


def make_item(**changes) -> RegionItem:
    fields = dict(shard="00000", key="k0", region=0, width=320, height=240, bbox=(0.1, 0.1, 0.4, 0.4),
                  short_expr="a red striped circle", long_expr="a small red striped circle on the left",
                  negatives=colour_negatives("a red striped circle", "red"), caption=CAPTION)
    fields.update(changes)
    return RegionItem(**fields)


TRUTH = {"key": "k0", "width": 320, "height": 240, "background": "plain", "objects": [
    {"id": 0, "shape": "circle", "colour": "red", "pattern": "striped", "size": "small", "bbox": [0.1, 0.1, 0.4, 0.4], "position": "left"},
    {"id": 1, "shape": "square", "colour": "blue", "pattern": "solid", "size": "large", "bbox": [0.5, 0.5, 0.9, 0.9], "position": "right"},
]}


# ---------------------------------------------------------------- sampling

def test_allocation_sums_exactly_and_is_proportional():
    rng = random.Random(0)
    for _ in range(200):
        sizes = {f"{i:05d}": rng.choice([0, 1, 2, 7, 50, 333]) for i in range(rng.randint(1, 9))}
        population = sum(sizes.values())
        total = rng.randint(0, population)
        quota = allocate(sizes, total)
        assert sum(quota.values()) == total
        for shard, size in sizes.items():
            exact = total * size / population if population else 0.0
            assert abs(quota[shard] - exact) < 1.0 and 0 <= quota[shard] <= size
    assert allocate({"a": 1, "b": 1, "c": 2}, 2) == {"a": 1, "b": 0, "c": 1}  # remainder tie -> smaller id
    assert allocate({"a": 10, "b": 30}, 40) == {"a": 10, "b": 30}
    with pytest.raises(ValueError):
        allocate({"a": 3}, 4)


def test_stratified_sample_is_seeded_proportional_and_order_free():
    population = {f"{s:05d}": [make_item(shard=f"{s:05d}", key=f"k{s}_{i}") for i in range(size)]
                  for s, size in enumerate([10, 40, 50])}
    sample = stratified_sample(population, 20, seed=3)
    per_shard = {shard: sum(item.shard == shard for item in sample) for shard in population}
    assert per_shard == {"00000": 2, "00001": 8, "00002": 10}
    assert len({item.item_id for item in sample}) == 20
    assert stratified_sample(dict(reversed(list(population.items()))), 20, seed=3) == sample
    assert stratified_sample(population, 20, seed=4) != sample
    assert len(stratified_sample(population, 1000, seed=3)) == 100  # min(sample_size, N)


# ---------------------------------------------------------------- validators

@pytest.mark.parametrize(("changes", "check"), [
    ({"bbox": (0.5, 0.1, 0.4, 0.5)}, "box_geometry"),  # x1 > x2
    ({"bbox": (0.1, 0.3, 0.5, 0.3)}, "box_geometry"),  # y1 == y2
    ({"bbox": (0.1, 0.1, 1.2, 0.5)}, "box_geometry"),  # leaves the image
    ({"bbox": (0.1, math.nan, 0.5, 0.5)}, "box_geometry"),
    ({"bbox": (0.1, 0.1, 0.5)}, "box_geometry"),
    ({"width": 0}, "box_geometry"),
    ({"bbox": (0.1, 0.1, 0.101, 0.101)}, "box_area"),  # 0.0001% of the image
    ({"bbox": (0.0, 0.0, 1.0, 1.0)}, "box_area"),  # above max 0.9
    ({"short_expr": "   "}, "expressions"),
    ({"long_expr": ""}, "expressions"),
    ({"negatives": None}, "negatives"),
    ({"negatives": colour_negatives("a red striped circle", "red", 9)}, "negatives"),
    ({"caption": None}, "caption_length"),
    ({"caption": "a red circle"}, "caption_length"),
    ({"caption": " ".join(["word"] * 41)}, "caption_length"),
])
def test_each_validator_catches_its_defect(changes, check):
    assert validate_item(make_item(), RULES) == []
    failures = validate_item(make_item(**changes), RULES)
    assert {f.check for f in failures} == {check}
    assert all(f.reason for f in failures)


def test_negatives_validator_uses_validate_negatives():
    rules = ValidationRules(0.0005, 1.0, 8, 400, 10)  # the real validator, imported lazily
    good = colour_negatives("a red striped circle", "red")
    assert check_negatives(make_item(negatives=good), rules) == []
    defects = {
        "wrong_count": good[:9],
        "duplicate": good[:9] + good[:1],
        "equals_positive": good[:9] + ("a red striped circle",),
        "head_noun_missing": good[:9] + ("a red striped square",),
        "empty": good[:9] + ("",),
    }
    for code, negatives in defects.items():
        problems = check_negatives(make_item(negatives=negatives), rules)
        assert any(problem.startswith(code) for problem in problems), (code, problems)
        assert {f.check for f in validate_item(make_item(negatives=negatives), rules)} == {"negatives"}


# ---------------------------------------------------------------- truth judge

def test_truth_judge_accepts_a_correct_item_and_ignores_other_objects_in_the_long_expression():
    item = make_item(long_expr="a small red striped circle left of a large blue square")
    verdict = judge(item, TRUTH, match_iou=0.5)
    assert verdict.label == OK, verdict.reason
    assert judge(make_item(short_expr="a tiny red circle", long_expr="a tiny red circle"), TRUTH, 0.5).label == OK
    # the detect stage's forms: no determiner, a locative or relational tail naming other objects
    plain = make_item(short_expr="small red striped circle", long_expr="small red striped circle between a blue square and a cross")
    assert judge(plain, TRUTH, 0.5).label == OK
    assert named_shape("two red circles") == "circle" and modifiers("two red circles", "circle") == ["two", "red"]


@pytest.mark.parametrize(("changes", "expected"), [
    ({"short_expr": "a green striped circle"}, "'green' contradicts the circle's colour 'red'"),
    ({"long_expr": "a small red dotted circle"}, "'dotted' contradicts the circle's pattern 'striped'"),
    ({"long_expr": "a large red circle"}, "'large' contradicts the circle's size 'small'"),
    ({"bbox": (0.25, 0.25, 0.55, 0.55)}, "box matches no circle: best IoU 0.14"),  # shifted box
    ({"bbox": (0.5, 0.5, 0.9, 0.9)}, "box matches no circle"),  # the square's box
    ({"short_expr": "a red striped hexagon", "long_expr": "a red hexagon"}, "the image has no hexagon"),
    ({"short_expr": "a red thing", "long_expr": "a red thing"}, "names no demo object"),
])
def test_truth_judge_catches_wrong_attributes_and_boxes(changes, expected):
    verdict = judge(make_item(**changes), TRUTH, match_iou=0.5)
    assert verdict.label == BAD
    assert expected in verdict.reason


def test_truth_reviewer_leaves_keys_without_truth_unreviewed(tmp_path):
    write_jsonl_atomic(annotation_path(tmp_path, "00000"), [TRUTH])
    reviewer = TruthReviewer(tmp_path, match_iou=0.5)
    assert reviewer.review(make_item()).label == OK
    assert reviewer.review(make_item(key="nobody")).label == UNREVIEWED
    with pytest.raises(TruthUnavailable, match="00009"):
        reviewer.review(make_item(shard="00009"))


# ---------------------------------------------------------------- interval and gate

def expected_wilson(x: int, n: int, confidence: float) -> tuple[float, float]:
    z = norm.ppf(1 - (1 - confidence) / 2)
    p = x / n
    centre = (2 * n * p + z ** 2) / (2 * (n + z ** 2))
    half = z * math.sqrt(z ** 2 + 4 * n * p * (1 - p)) / (2 * (n + z ** 2))
    return centre - half, centre + half


@pytest.mark.parametrize(("x", "n", "confidence"), [(3, 400, 0.95), (17, 250, 0.9), (60, 61, 0.99), (1, 2, 0.8)])
def test_wilson_interval_matches_the_formula(x, n, confidence):
    low, high = wilson_interval(x, n, confidence)
    want_low, want_high = expected_wilson(x, n, confidence)
    assert low == pytest.approx(want_low, abs=1e-12) and high == pytest.approx(want_high, abs=1e-12)


def test_wilson_interval_textbook_values():
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert wilson_interval(5, 10, 0.95) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(0, 10, 0.95)  # zero successes: [0, z^2 / (n + z^2)]
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(10, 10, 0.95)
    assert high == 1.0 and low == pytest.approx(1 - 0.2775, abs=1e-4)
    assert wilson_interval(0, 0, 0.95) == (0.0, 1.0)


def test_wilson_interval_covers_the_true_rate_about_as_often_as_it_claims():
    # 4 shards, 1.5% noise overall but unevenly spread; the real stratified sampler draws.
    sizes, noisy = [8000, 12000, 20000, 20000], [60, 120, 420, 300]  # 900 / 60000 = 1.5%
    population = {f"{s:05d}": [i < bad for i in range(size)] for s, (size, bad) in enumerate(zip(sizes, noisy))}
    truth = sum(noisy) / sum(sizes)
    trials = 1000
    covered = 0
    for seed in range(trials):
        sample = stratified_sample(population, 400, seed)
        low, high = wilson_interval(sum(sample), len(sample), 0.95)
        covered += low <= truth <= high
    assert 0.90 <= covered / trials <= 0.99, covered / trials


def estimate(noisy: int, n: int) -> NoiseEstimate:
    low, high = wilson_interval(noisy, n, 0.95)
    return NoiseEstimate(n, noisy, noisy / n if n else None, low, high, 0.95)


def test_gate_fails_with_a_clear_message_and_passes_below_the_threshold():
    failed = apply_gate(estimate(12, 400), 0.05)
    assert not failed.passed
    assert re.fullmatch(r"QC gate failed: noise upper bound 5\.17% > threshold 5\.00% \(p_hat=3\.00%, n=400\)",
                        failed.message), failed.message
    passed = apply_gate(estimate(4, 400), 0.05)
    assert passed.passed and passed.message.startswith("QC gate passed: noise upper bound 2.54% <= threshold 5.00%")
    nothing = apply_gate(estimate(0, 0), 0.05)
    assert not nothing.passed and "p_hat=n/a, n=0" in nothing.message


# ---------------------------------------------------------------- labels reviewer

def test_labels_reviewer_reads_gallery_verdicts_and_estimates_over_reviewed_items(tmp_path):
    path = tmp_path / "verdicts.json"
    path.write_text(json.dumps({"k0#0": "ok", "k0#1": "bad"}))
    reviewer = LabelsReviewer(load_labels(path), str(path))
    items = [make_item(region=r) for r in range(3)]
    assessed = [assess(item, RULES, reviewer) for item in items]
    assert [a.verdict.label for a in assessed] == [OK, BAD, UNREVIEWED]
    result = estimate_noise(assessed, 0.95)
    assert (result.n, result.noisy, result.p_hat) == (2, 1, 0.5)
    for bad in ('["k0#0"]', '{"k0#0": "maybe"}', '{"k0": "ok"}', "not json"):
        path.write_text(bad)
        with pytest.raises(ValueError, match="verdicts.json"):
            load_labels(path)


# ---------------------------------------------------------------- the whole CLI run

def jpeg(colour: tuple[int, int, int], size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def build_world(root: Path) -> dict[str, Path]:
    """2 shards x 3 images x 2 regions (a circle and a square); two planted defects."""
    dirs = {name: root / name for name in ("images", "captions", "regions", "negatives", "truth")}
    for s, shard in enumerate(["00000", "00001"]):
        keys = [f"img{s}{i}" for i in range(3)]
        write_image_shard(dirs["images"], shard, [ShardSample(k, jpeg((200, 200, 200)), "shapes", {"width": 64, "height": 48})
                                                  for k in keys])
        write_jsonl_atomic(annotation_path(dirs["captions"], shard), [{"key": k, "long_caption": CAPTION} for k in keys])
        write_jsonl_atomic(annotation_path(dirs["truth"], shard), [TRUTH | {"key": k} for k in keys])
        regions, negatives = [], []
        for k in keys:
            circle = "a green striped circle" if k == "img01" else "a red striped circle"  # wrong colour
            circle_box = [0.3, 0.3, 0.6, 0.6] if k == "img12" else [0.1, 0.1, 0.4, 0.4]  # shifted box
            regions.append({"key": k, "width": 64, "height": 48, "regions": [
                {"bbox": circle_box, "score": 0.9, "short_expr": circle, "long_expr": circle + " on the left"},
                {"bbox": [0.5, 0.5, 0.9, 0.9], "score": 0.8, "short_expr": "a blue square", "long_expr": "a large blue square"},
            ]})
            colour = circle.split()[1]
            negatives.append({"key": k, "regions": [{"short_expr_negs": list(colour_negatives(circle, colour))},
                                                    {"short_expr_negs": list(colour_negatives("a blue square", "blue"))}]})
        write_jsonl_atomic(annotation_path(dirs["regions"], shard), regions)
        write_jsonl_atomic(annotation_path(dirs["negatives"], shard), negatives)
    return dirs


class RecordingTracker:
    def __init__(self):
        self.params, self.metrics, self.datasets, self.artifacts, self.tags = {}, {}, [], [], {}

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_dataset(self, path, name, context="input"):
        self.datasets.append(name)
        return "digest"

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((Path(path).name, artifact_path))

    def set_tags(self, tags):
        self.tags.update(tags)


@pytest.fixture
def cli_run(tmp_path, monkeypatch):
    """Runs `fgclip qc` through its own argument parser with a recording tracker."""
    dirs = build_world(tmp_path)
    tracker = RecordingTracker()

    @contextlib.contextmanager
    def fake_tracked_run(config, run_name, **kwargs):
        yield tracker

    monkeypatch.setattr("fgclip.data.qc.cli.tracked_run", fake_tracked_run)

    def run(*extra: str, **overrides):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args([
            "--images", str(dirs["images"]), "--captions", str(dirs["captions"]), "--regions", str(dirs["regions"]),
            "--negatives", str(dirs["negatives"]), "--truth", str(dirs["truth"]), "--out", str(tmp_path / "qc"), *extra])
        args.no_progress = True
        params = load_params(None, {"tracking.enabled": False, **overrides})
        return command(args, params)

    run.out = tmp_path / "qc"
    run.tracker = tracker
    run.tmp = tmp_path
    return run


def test_cli_writes_report_metrics_plot_sample_and_gallery(cli_run):
    assert cli_run(**{"qc.max_noise_upper": 0.9}) == 0
    out = cli_run.out
    report = json.loads((out / "report.json").read_text())
    assert report["design"]["population"] == 12 and report["design"]["sample_size"] == 12
    assert report["design"]["strata"] == {"00000": {"population": 6, "sampled": 6}, "00001": {"population": 6, "sampled": 6}}
    assert report["estimate"]["n"] == 12 and report["estimate"]["noisy"] == 2
    assert report["estimate"]["p_hat"] == pytest.approx(2 / 12)
    assert (report["estimate"]["ci_low"], report["estimate"]["ci_high"]) == pytest.approx(wilson_interval(2, 12, 0.95))
    assert report["reviewer"]["verdicts"] == {"bad": 2, "ok": 10}
    assert report["validators"]["items_failing"] == 0
    assert report["truth"]["true_rate"] == pytest.approx(2 / 12) and report["truth"]["ci_contains_truth"] is True
    assert report["gate"]["passed"] is True
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["p_hat"] == pytest.approx(2 / 12) and metrics["gate_passed"] is True and metrics["failures.negatives"] == 0
    rows = list(csv.DictReader((out / "noise_by_shard.csv").open()))
    assert [(r["shard"], r["sampled"], r["noisy"]) for r in rows] == [("00000", "6", "1"), ("00001", "6", "1")]
    sample = [json.loads(line) for line in (out / "sample.jsonl").read_text().splitlines()]
    bad = {r["id"]: r["verdict_reason"] for r in sample if r["noisy"]}
    assert set(bad) == {"img01#0", "img12#0"} and "'green' contradicts" in bad["img01#0"] and "IoU" in bad["img12#0"]
    page = (out / "gallery" / "index.html").read_text()
    assert page.count('<article class="card') == 12 and page.count("data:image/jpeg;base64,") == 12
    assert page.index('data-item="img01#0"') < page.index('data-item="img00#0"')  # noisy first
    tracker = cli_run.tracker
    assert tracker.metrics["p_hat"] == pytest.approx(2 / 12) and tracker.metrics["gate_passed"] == 1.0
    assert tracker.metrics["true_rate"] == pytest.approx(2 / 12)
    assert set(tracker.datasets) == {"images", "captions", "regions", "negatives", "truth"}
    assert ("gallery", "qc/gallery") in tracker.artifacts and ("report.json", "qc") in tracker.artifacts


def test_cli_gate_failure_exits_3_after_writing_everything(cli_run, capsys):
    assert cli_run(**{"qc.max_noise_upper": 0.05}) == ExitCode.GATE_FAILED
    message = capsys.readouterr().err.strip()
    assert re.fullmatch(r"QC gate failed: noise upper bound \d+\.\d\d% > threshold 5\.00% \(p_hat=16\.67%, n=12\)", message)
    assert json.loads((cli_run.out / "report.json").read_text())["gate"]["passed"] is False
    assert (cli_run.out / "gallery" / "index.html").is_file()


def test_cli_labels_reviewer_uses_only_reviewed_items(cli_run):
    labels = cli_run.tmp / "verdicts.json"
    labels.write_text(json.dumps({"img00#0": "ok", "img00#1": "bad", "img01#1": "ok"}))
    code = cli_run("--labels", str(labels), **{"qc.reviewer": "labels", "qc.max_noise_upper": 0.99})
    report = json.loads((cli_run.out / "report.json").read_text())
    assert report["estimate"]["n"] == 3 and report["estimate"]["noisy"] == 1
    assert report["reviewer"]["verdicts"] == {"bad": 1, "ok": 2, "unreviewed": 9}
    assert "truth" not in report and "only items with a reviewer verdict" in report["reviewer"]["note"]
    assert code == 0  # 1 of 3 noisy: upper bound 79% <= 99%
    page = (cli_run.out / "gallery" / "index.html").read_text()
    assert re.search(r'value="bad" data-item="img00#1" checked', page)  # earlier human labels are pre-selected


def test_cli_sample_is_reproducible(cli_run):
    cli_run(**{"qc.sample_size": 5, "qc.max_noise_upper": 1.0})
    first = (cli_run.out / "sample.jsonl").read_text()
    cli_run(**{"qc.sample_size": 5, "qc.max_noise_upper": 1.0})
    assert (cli_run.out / "sample.jsonl").read_text() == first
    assert len(first.splitlines()) == 5
    cli_run(**{"qc.sample_size": 5, "qc.max_noise_upper": 1.0, "qc.seed": 8})
    assert (cli_run.out / "sample.jsonl").read_text() != first


def test_cli_reports_missing_inputs_as_user_errors(cli_run):
    from fgclip.cli import ComponentError

    (cli_run.tmp / "negatives" / "00001.jsonl").unlink()
    with pytest.raises(ComponentError, match="negatives of shard 00001 are missing"):
        cli_run()
    with pytest.raises(ComponentError, match="--labels is read only by the labels reviewer"):
        cli_run("--labels", "x.json")


def test_gallery_cards_put_noisy_first_respect_the_limit_and_survive_a_missing_image(tmp_path):
    dirs = build_world(tmp_path)
    clean = Assessment(make_item(key="img00"), (), Verdict(OK))
    noisy = Assessment(make_item(key="img02"), (), Verdict(BAD, "wrong colour"))
    ghost = Assessment(make_item(key="ghost"), (Failure("negatives", "duplicate"),), Verdict(OK))
    config = load_params(None, {"qc.gallery_items": 2}).qc
    cards = gallery_cards([clean, noisy, ghost], dirs["images"], config, human_labels=False, progress=False)
    assert [c.item_id for c in cards] == ["ghost#0", "img02#0"]
    assert cards[0].image_uri is None and "no readable image" in cards[0].image_note
    assert cards[1].image_uri.startswith("data:image/jpeg;base64,") and cards[1].label is None
