"""Evaluation: pure metrics on hand-made embeddings, the held-out task builders, the task
runners on fake embedders whose right answers are known, and `fgclip eval` end to end on
a tiny random FG-CLIP saved with its tokenizer and image processor."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fgclip.config import Params
from fgclip.core.config import TrackingConfig
from fgclip.core.shards import ShardSample, write_image_shard, write_jsonl_atomic
from fgclip.eval.config import EvalConfig
from fgclip.eval.evaluate import EvalError, evaluate, load_fgovd_images
from fgclip.eval.heldout import (
    HeldoutWorld,
    attribute_phrase,
    changed_attributes,
    fgovd_demo_choices,
    largest_object,
    load_heldout,
    long_caption,
    short_caption,
)
from fgclip.eval.metrics import (
    candidate_scores,
    ensemble_templates,
    pairwise_win_rates,
    recall_at_k,
    retrieval_metrics,
    strict_top1,
)
from fgclip.eval.tasks import evaluate_fgovd, evaluate_world
from fgclip.text.lexicon import ATTRIBUTE_LEXICON, COLOURS, PATTERNS, SHAPES

WIDTH, HEIGHT = 64, 48
IMAGES = 5
DEMO_METRICS = {"fgovd_demo_top1", "box_cls_top1", "zero_shot_top1"} | {
    f"{kind}_{direction}_r{k}" for kind in ("long", "short") for direction in ("i2t", "t2i") for k in (1, 5, 10)
}


# ================================================================ metrics on hand-made embeddings


def test_recall_at_k_counts_ties_against_the_positive() -> None:
    similarity = np.array(
        [
            [0.9, 0.1, 0.2],  # positive 0 ranks first
            [0.5, 0.4, 0.6],  # positive 1 ranks third
            [0.3, 0.3, 0.3],  # positive 2 ties everything: rank 2, never credited
        ]
    )
    assert recall_at_k(similarity, [[0], [1], [2]], (1, 2, 3)) == {
        1: pytest.approx(1 / 3),
        2: pytest.approx(1 / 3),
        3: 1.0,
    }
    # Several correct items: the best one counts.
    assert recall_at_k(similarity, [[0], [1, 2], [2]], (1,)) == {1: pytest.approx(2 / 3)}


def test_strict_top1_over_candidate_sets_of_different_sizes() -> None:
    scores = [np.array([0.9, 0.1]), np.array([0.2, 0.5, 0.1, 0.0]), np.array([0.7, 0.7, 0.1]), np.array([0.3] * 11)]
    assert strict_top1(scores, [0, 1, 0, 0]) == pytest.approx(0.5)  # the tie and the collapsed set lose
    assert strict_top1(scores, [1, 0, 2, 5]) == 0.0
    with pytest.raises(ValueError):
        strict_top1(scores, [0])


def test_candidate_scores_are_cosines_against_each_sets_own_rows() -> None:
    queries = np.array([[2.0, 0.0], [0.0, 3.0]])
    texts = np.array([[1.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    rows = candidate_scores(queries, texts, [[0, 1, 2], [2, 1]])
    np.testing.assert_allclose(rows[0], [1.0, 0.0, 2**-0.5])
    np.testing.assert_allclose(rows[1], [2**-0.5, 1.0])


def test_template_ensemble_normalises_before_and_after_averaging() -> None:
    per_template = np.array(
        [
            [[10.0, 0.0], [0.0, 1.0]],  # class 0: a long and a short vector weigh the same
            [[0.0, -2.0], [0.0, -2.0]],
        ]
    )
    ensembled = ensemble_templates(per_template)
    np.testing.assert_allclose(ensembled, [[2**-0.5, 2**-0.5], [0.0, -1.0]])
    np.testing.assert_allclose(np.linalg.norm(ensembled, axis=1), 1.0)


def test_retrieval_treats_a_shared_caption_as_correct_for_every_image_that_has_it() -> None:
    images = np.eye(3)
    texts = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # text 0 belongs to images 0 and 1
    metrics = retrieval_metrics(images, texts, [0, 0, 1], (1,), "short")
    assert metrics == {"short_i2t_r1": 1.0, "short_t2i_r1": 1.0}
    metrics = retrieval_metrics(images, texts[::-1], [0, 0, 1], (1, 2), "long")  # every pairing wrong
    # text 1 (image 2) scores 0 against its image and ~0.7 against images 0 and 1: rank 3
    assert metrics == {"long_i2t_r1": 0.0, "long_i2t_r2": 1.0, "long_t2i_r1": 0.0, "long_t2i_r2": 0.5}


def test_pairwise_win_rates_group_negatives_by_changed_attributes() -> None:
    scores = [np.array([0.5, 0.6, 0.1, 0.2]), np.array([0.9, 0.1, 0.95])]
    changed = [(0, 1, 2, 2), (0, 1, 1)]
    assert pairwise_win_rates(scores, [0, 0], changed) == {1: pytest.approx(1 / 3), 2: 1.0}


# ================================================================ a tiny held-out world


def demo_objects(index: int) -> list[dict]:
    colours = list(COLOURS)
    objects = [
        {
            "id": 0,
            "shape": SHAPES[index % len(SHAPES)],
            "colour": colours[index % len(colours)],
            "pattern": PATTERNS[index % len(PATTERNS)],
            "size": "large",
            "bbox": [0.05, 0.1, 0.55, 0.8],
            "position": "left",
        },
        {
            "id": 1,
            "shape": SHAPES[(index + 3) % len(SHAPES)],
            "colour": colours[(index + 5) % len(colours)],
            "pattern": PATTERNS[(index + 1) % len(PATTERNS)],
            "size": "small",
            "bbox": [0.6, 0.2, 0.85, 0.5],
            "position": "right",
        },
    ]
    if index % 2:
        objects.append(
            {
                "id": 2,
                "shape": SHAPES[(index + 5) % len(SHAPES)],
                "colour": colours[(index + 2) % len(colours)],
                "pattern": "solid",
                "size": "small",
                "bbox": [0.6, 0.6, 0.9, 0.95],
                "position": "bottom right",
            }
        )
    return objects


def jpeg_of(objects: list[dict], seed: int) -> bytes:
    image = Image.new("RGB", (WIDTH, HEIGHT), (200 + seed, 220, 240))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        x1, y1, x2, y2 = obj["bbox"]
        draw.rectangle([x1 * WIDTH, y1 * HEIGHT, x2 * WIDTH - 1, y2 * HEIGHT - 1], fill=COLOURS[obj["colour"]])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def truth_record(key: str, objects: list[dict], width: int = WIDTH) -> dict:
    return {
        "key": key,
        "width": width,
        "height": HEIGHT,
        "background": {"kind": "plain", "colours": ["blue"], "description": "a plain light blue background"},
        "objects": objects,
        "relations": [{"subject": 0, "predicate": "left of", "object": 1}],
    }


def build_world(root: Path, *, with_bad_samples: bool = False) -> tuple[Path, Path]:
    """IMAGES good samples (two share the alt-text "two shapes"), optionally plus bad ones."""
    samples, truths = [], []
    for index in range(IMAGES):
        key = f"ho{index:09d}"
        objects = demo_objects(index)
        alt = "two shapes" if index < 2 else f"{objects[0]['colour']} {objects[0]['shape']}"
        samples.append(ShardSample(key, jpeg_of(objects, index), alt, {"width": WIDTH, "height": HEIGHT}))
        truths.append(truth_record(key, objects))
    if with_bad_samples:
        samples.append(ShardSample("orphan", jpeg_of([], 0), "no truth", {}))
        samples.append(ShardSample("wrongsize", jpeg_of([], 1), "wrong size", {}))
        truths.append(truth_record("wrongsize", [], width=WIDTH * 2))
        samples.append(ShardSample("badbox", jpeg_of([], 2), "bad box", {}))
        truths.append(truth_record("badbox", [{**demo_objects(0)[0], "bbox": [0.5, 0.5, 0.4, 0.9]}]))
    images, truth = root / "images", root / "truth"
    write_image_shard(images, "00000", samples)
    write_jsonl_atomic(truth / "00000.jsonl", truths)
    return images, truth


@pytest.fixture
def world_dirs(tmp_path: Path) -> tuple[Path, Path]:
    return build_world(tmp_path / "heldout")


def small_params(**eval_changes: object) -> Params:
    return Params(eval=EvalConfig(**{"batch_size": 2, **eval_changes}), tracking=TrackingConfig(enabled=False))


# ================================================================ task builders


def test_heldout_loader_joins_truth_and_rejects_what_cannot_be_labelled(tmp_path: Path) -> None:
    images, truth = build_world(tmp_path, with_bad_samples=True)
    world = load_heldout(images, truth)
    assert [s.key for s in world.samples] == [f"ho{i:09d}" for i in range(IMAGES)]
    assert world.reject_counts() == {"bad_truth": 1, "no_truth": 1, "truth_mismatch": 1}
    assert {r.key: r.reason for r in world.rejects} == {
        "orphan": "no_truth",
        "wrongsize": "truth_mismatch",
        "badbox": "bad_truth",
    }
    assert world.samples[1].boxes().shape == (3, 4)


def test_demo_fgovd_questions_use_seeded_rule_negatives_that_keep_the_noun(world_dirs: tuple[Path, Path]) -> None:
    world = load_heldout(*world_dirs)
    params = small_params()
    choices, short_sets = fgovd_demo_choices(world, params)
    assert len(choices) == sum(len(s.objects) for s in world.samples) and short_sets == 0
    first = world.samples[0].objects[0]
    assert (
        choices[0].candidates[0]
        == attribute_phrase(first)
        == f"large {first['colour']} {first['pattern']} {first['shape']}"
    )
    for choice in choices:
        positive, *negatives = choice.candidates
        shape = positive.split()[-1]
        assert choice.target == 0 and len(negatives) == params.eval.negatives_per_region
        assert len(set(choice.candidates)) == len(choice.candidates)
        assert all(negative.split()[-1] == shape for negative in negatives)
        assert choice.changed[0] == 0 and all(changed >= 1 for changed in choice.changed[1:])
    # Seeded per (eval seed, key, object): the same questions whatever the sample order.
    reordered = HeldoutWorld(samples=world.samples[::-1])
    again, _ = fgovd_demo_choices(reordered, params)
    assert {c.candidates for c in again} == {c.candidates for c in choices}
    other_seed, _ = fgovd_demo_choices(world, small_params(seed=params.eval.seed + 1))
    assert [c.candidates for c in other_seed] != [c.candidates for c in choices]


def test_changed_attributes_counts_swaps_and_insertions_by_class() -> None:
    assert changed_attributes("large red striped circle", "large blue striped circle") == 1
    assert changed_attributes("large red striped circle", "small blue striped circle") == 2
    assert changed_attributes("large red striped circle", "large red striped wooden circle") == 1
    assert changed_attributes("large red striped circle", "large red striped circle") == 0


def test_long_caption_is_error_free_and_mentions_every_object(world_dirs: tuple[Path, Path]) -> None:
    world = load_heldout(*world_dirs)
    params = small_params()
    noisy = params.model_copy(
        update={
            "recaption": params.recaption.model_copy(
                update={
                    "demo": params.recaption.demo.model_copy(update={"attribute_error_rate": 1.0, "miss_rate": 0.0})
                }
            )
        }
    )
    for sample in world.samples:
        caption = long_caption(sample, params)
        assert all(attribute_phrase(obj) in caption for obj in sample.objects), caption
        assert long_caption(sample, noisy) == caption  # the teacher's error rates are forced to zero


# ================================================================ runners on fake embedders


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


class OracleEmbedder:
    """Knows the truth, so every task has a known answer: each metric must come out 1.

    Embedding blocks: [image key | shape | bag of words]. Images: their key and the shape
    of their largest object; captions: the keys of the images that have them; class
    prompts: their shape; regions: their shape and the words of their phrase; other
    texts (FG-OVD candidates): their words.
    """

    def __init__(self, world: HeldoutWorld, params: Params) -> None:
        self.samples = world.samples
        self.by_pixels = {self.fingerprint(s.open_image()): i for i, s in enumerate(self.samples)}
        self.caption_keys: dict[str, set[int]] = {}
        for index, sample in enumerate(self.samples):
            for text in (long_caption(sample, params), short_caption(sample, params)):
                self.caption_keys.setdefault(text, set()).add(index)
        templates = (params.eval.box_prompt, *params.eval.zero_shot_templates)
        self.prompt_shape = {t.format(shape): shape for t in templates for shape in SHAPES}
        vocabulary = sorted({w for cls in ATTRIBUTE_LEXICON.values() for w in cls} | set(SHAPES) | {"solid"})
        self.word_index = {w: i for i, w in enumerate(vocabulary)}
        self.calls = {"images": 0, "texts": 0}

    @staticmethod
    def fingerprint(image: Image.Image) -> str:
        return hashlib.sha256(image.tobytes()).hexdigest()

    def vector(self, keys=(), shape=None, text="") -> np.ndarray:
        out = np.zeros(len(self.samples) + len(SHAPES) + len(self.word_index))
        for key in keys:
            out[key] = 1.0
        if shape is not None:
            out[len(self.samples) + SHAPES.index(shape)] = 1.0
        for word in words(text):
            if word in self.word_index:
                out[len(self.samples) + len(SHAPES) + self.word_index[word]] += 1.0
        return out

    def identity(self) -> dict:
        return {"name": "oracle"}

    def encode_images(self, images, boxes, with_global=True):
        self.calls["images"] += 1
        globals_, regions = [], []
        for image, image_boxes in zip(images, boxes):
            sample = self.samples[self.by_pixels[self.fingerprint(image)]]
            index = self.samples.index(sample)
            globals_.append(self.vector([index], largest_object(sample)["shape"]))
            rows = []
            for box in image_boxes:
                obj = next(o for o in sample.objects if np.allclose(o["bbox"], box))
                rows.append(self.vector(shape=obj["shape"], text=attribute_phrase(obj)))
            regions.append(np.array(rows).reshape(len(rows), -1))
        return np.array(globals_), regions

    def encode_texts(self, texts, long):
        self.calls["texts"] += 1
        return np.array(
            [
                self.vector(self.caption_keys[t])
                if t in self.caption_keys
                else self.vector(shape=self.prompt_shape[t])
                if t in self.prompt_shape
                else self.vector(text=t)
                for t in texts
            ]
        )


class CollapsedEmbedder:
    """Every embedding identical: no task may credit it."""

    def identity(self) -> dict:
        return {"name": "collapsed"}

    def encode_images(self, images, boxes, with_global=True):
        return np.ones((len(images), 4)), [np.ones((len(b), 4)) for b in boxes]

    def encode_texts(self, texts, long):
        return np.ones((len(texts), 4))


def test_an_oracle_scores_one_on_every_demo_task(world_dirs: tuple[Path, Path]) -> None:
    world = load_heldout(*world_dirs)
    params = small_params()
    oracle = OracleEmbedder(world, params)
    metrics, counts = evaluate_world(world, oracle, params)
    assert DEMO_METRICS <= set(metrics)
    assert metrics == {name: 1.0 for name in metrics}, metrics
    # The rule generator's hardest tier (one attribute swapped) fills all 10 negatives of
    # a fully described object, so there are only 1-attribute pairs: FG-OVD's "hard".
    assert [name for name in metrics if "pairwin" in name] == ["fgovd_demo_pairwin_1attr"]
    assert counts["heldout_images"] == IMAGES and counts["box_cls_regions"] == counts["fgovd_demo_questions"] == 12
    assert counts["short_unique_captions"] == IMAGES - 1  # two images share "two shapes"
    assert oracle.calls["images"] == 3  # 5 images in batches of 2


def test_a_collapsed_model_gets_no_credit(world_dirs: tuple[Path, Path]) -> None:
    world = load_heldout(*world_dirs)
    metrics, _ = evaluate_world(world, CollapsedEmbedder(), small_params())
    assert DEMO_METRICS <= set(metrics)
    zero = [name for name in metrics if name.endswith(("top1", "_r1")) or "pairwin" in name]
    assert zero and all(metrics[name] == 0.0 for name in zero), metrics


# ================================================================ FG-OVD with images


def write_fgovd(root: Path, image_names: list[str]) -> tuple[Path, Path]:
    """A one-file FG-OVD folder (hard) and a COCO-like image folder holding `image_names`."""
    lines = []
    for index, name in enumerate(["000000000139.jpg", "000000000285.jpg"]):
        for box, colour in (([2.0, 3.0, 20.0, 30.0], "red"), ([30.0, 10.0, 30.0, 30.0], "blue")):
            lines.append(
                {
                    "img_path": f"val2017/{name}",
                    "bbox": box,
                    "pos_expression": [f"A {colour} wooden chair."],
                    "neg_expression": [f"A {c} wooden chair." for c in ("green", "pink", "black")][: 3 - index],
                    "width": WIDTH,
                    "height": HEIGHT,
                    "test_type": "1_attributes",
                }
            )
    fgovd_dir, coco = root / "fgovd", root / "coco" / "val2017"
    fgovd_dir.mkdir(parents=True)
    coco.mkdir(parents=True)
    (fgovd_dir / "h_attributes_llava.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    for index, name in enumerate(image_names):
        (coco / name).write_bytes(jpeg_of([], index))
    return fgovd_dir, coco.parent


class FGOVDOracle(CollapsedEmbedder):
    """Regions: the words of the expression that belongs to their box; texts: their words."""

    vocabulary = ("red", "blue", "green", "pink", "black", "wooden", "chair")

    def embed(self, text: str) -> np.ndarray:
        return np.array([float(w in words(text)) for w in self.vocabulary])

    def encode_images(self, images, boxes, with_global=True):
        return np.ones((len(images), 7)), [
            np.array([self.embed("red chair" if b[0] < 0.2 else "blue chair") for b in bs]) for bs in boxes
        ]

    def encode_texts(self, texts, long):
        return np.array([self.embed(t) for t in texts])


def test_fgovd_scores_the_benchmark_items_whose_images_exist(tmp_path: Path, world_dirs: tuple[Path, Path]) -> None:
    fgovd_dir, coco = write_fgovd(tmp_path, ["000000000139.jpg", "000000000285.jpg"])
    params = small_params(fgovd_difficulties=("hard",))
    metrics, counts = evaluate(
        FGOVDOracle(), params, images=world_dirs[0], truth=world_dirs[1], fgovd_dir=fgovd_dir, coco_images=coco
    )
    assert metrics["fgovd_hard_top1"] == 1.0
    assert counts["fgovd_hard_evaluated"] == 4 and counts["fgovd_images_missing"] == 0


def test_missing_coco_images_fail_clearly_unless_allowed(tmp_path: Path) -> None:
    fgovd_dir, coco = write_fgovd(tmp_path, ["000000000139.jpg"])
    with pytest.raises(EvalError, match=re.escape(f"1 of 2 images not found under {coco}")):
        load_fgovd_images(fgovd_dir, coco, small_params(fgovd_difficulties=("hard",)))
    splits, found, counts = load_fgovd_images(
        fgovd_dir, coco, small_params(fgovd_difficulties=("hard",), fgovd_allow_missing_images=True)
    )
    assert list(found) == ["000000000139.jpg"] and counts["fgovd_images_missing"] == 1
    metrics, more = evaluate_fgovd(splits, found, FGOVDOracle(), small_params())
    assert metrics == {"fgovd_hard_top1": 1.0} and more["fgovd_hard_evaluated"] == 2


# ================================================================ the real model, end to end


def save_tiny_fgclip(folder: Path, clip_factory) -> None:
    """A random tiny FG-CLIP + a word-level tokenizer + a CLIP image processor, as a
    trained checkpoint folder would hold them."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPImageProcessor, PreTrainedTokenizerFast

    from fgclip.model import convert_clip_to_fgclip

    vocabulary = sorted(
        {w for cls in ATTRIBUTE_LEXICON.values() for w in cls}
        | set(SHAPES)
        | {"a", "an", "the", "photo", "of", "picture", "image", "and", "on", "left", "right", "shapes", "."}
    )
    tokens = ["<pad>", "<unk>", *vocabulary, "<bos>", "<eos>"]
    ids = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.WordLevel(ids, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", ids["<bos>"]), ("<eos>", ids["<eos>"])]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=77,
    ).save_pretrained(folder)
    clip = clip_factory(vocab_size=len(tokens), bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"], pad_token_id=0)
    convert_clip_to_fgclip(clip).save_pretrained(folder)
    side = clip.config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(folder)


def test_adapter_regions_come_from_the_whole_image_and_globals_from_the_chosen_view(
    tmp_path: Path, clip_factory
) -> None:
    import torch

    from fgclip.model import region_features
    from fgclip.model.embedder import FGCLIPEmbedder

    save_tiny_fgclip(tmp_path, clip_factory)
    processor_view, whole_view = FGCLIPEmbedder(tmp_path, "cpu"), FGCLIPEmbedder(tmp_path, "cpu", "whole")
    side = whole_view.image_size
    wide = Image.open(io.BytesIO(jpeg_of(demo_objects(1), 0))).convert("RGB")  # 64x48: cropping differs from squashing
    square = wide.resize((side, side))
    boxes = [np.array([[0.05, 0.1, 0.55, 0.8], [0.6, 0.2, 0.85, 0.5]]), np.zeros((0, 4))]

    crop_globals, crop_regions = processor_view.encode_images([wide, square], boxes)
    whole_globals, whole_regions = whole_view.encode_images([wide, square], boxes)
    assert crop_globals.shape == whole_globals.shape == (2, 16)
    assert [r.shape for r in crop_regions] == [(2, 16), (0, 16)]
    np.testing.assert_allclose(crop_regions[0], whole_regions[0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(crop_globals[0], whole_globals[0], atol=1e-4)  # the crop cut off part of the wide image
    np.testing.assert_allclose(crop_globals[1], whole_globals[1], rtol=1e-4, atol=1e-5)  # a square input: same view

    model = whole_view.model
    with torch.no_grad():
        pixels = whole_view._pixels([wide], whole=True)
        dense = model.get_dense_features(pixels)
        expected = region_features(dense, torch.tensor(boxes[0], dtype=torch.float32), torch.zeros(2, dtype=torch.long))
    np.testing.assert_allclose(whole_regions[0], expected.numpy(), rtol=1e-5, atol=1e-6)
    regions_only, rows = whole_view.encode_images([wide], boxes[:1], with_global=False)
    assert regions_only.shape == (1, 0) and np.allclose(rows[0], whole_regions[0], atol=1e-6)

    # Freshly converted, the long path equals the short one on a short text (kept positions,
    # copied projection); scaling the long projection shows which path each call takes.
    text = ["a large red striped circle"]
    with torch.no_grad():
        model.text_filip_projection.weight.mul_(2.0)
    np.testing.assert_allclose(
        whole_view.encode_texts(text, long=True), 2 * whole_view.encode_texts(text, long=False), rtol=1e-5, atol=1e-6
    )


def test_fgclip_eval_cli_writes_metrics_plot_and_mlflow_run(
    tmp_path: Path, world_dirs: tuple[Path, Path], clip_factory, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import mlflow

    from fgclip.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model = tmp_path / "model"
    save_tiny_fgclip(model, clip_factory)
    fgovd_dir, coco = write_fgovd(tmp_path, ["000000000139.jpg", "000000000285.jpg"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "reports" / "stage2"
    common = [
        "--params",
        str(tmp_path / "none.yaml"),
        "--no-progress",
        "--set",
        f"tracking.uri={uri}",
        "--set",
        "eval.batch_size=16",
        "--set",
        "eval.fgovd_difficulties=[hard]",
    ]
    code = main(
        [
            *common,
            "eval",
            "--model",
            str(model),
            "--images",
            str(world_dirs[0]),
            "--truth",
            str(world_dirs[1]),
            "--out",
            str(out),
            "--fgovd-dir",
            str(fgovd_dir),
            "--coco-images",
            str(coco),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert DEMO_METRICS | {"fgovd_hard_top1"} <= set(metrics)
    assert all(0.0 <= value <= 1.0 and "@" not in name for name, value in metrics.items())
    assert json.loads((out / "counts.json").read_text())["heldout_images"] == IMAGES
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["fgclip-eval"], output_format="list")
    assert len(runs) == 1 and runs[0].data.metrics["box_cls_top1"] == metrics["box_cls_top1"]
    assert runs[0].data.tags["model.digest"] and runs[0].inputs.dataset_inputs
    capsys.readouterr()

    baseline = tmp_path / "reports" / "stage1"
    baseline.mkdir()
    (baseline / "metrics.json").write_text(json.dumps({"box_cls_top1": 0.25, "long_i2t_r10": 0.5, "long_i2t_r5": 0.4}))
    assert main([*common, "eval-table", "--reports", str(baseline), str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["metric", "stage1", "stage2", "delta"]
    rows = {line.split()[0]: line.split()[1:] for line in table[2:]}
    assert rows["box_cls_top1"] == ["0.250", f"{metrics['box_cls_top1']:.3f}", f"{metrics['box_cls_top1'] - 0.25:+.3f}"]
    assert rows["fgovd_hard_top1"][0] == "-"
    names = [line.split()[0] for line in table[2:]]
    assert (
        names.index("fgovd_demo_top1")
        < names.index("box_cls_top1")
        < names.index("long_i2t_r1")
        < names.index("long_i2t_r5")
        < names.index("long_i2t_r10")
    )


def test_eval_cli_reports_a_missing_model_as_one_clear_error(
    tmp_path: Path, world_dirs: tuple[Path, Path], capsys
) -> None:
    from fgclip.cli import main

    code = main(
        [
            "--params",
            str(tmp_path / "none.yaml"),
            "--set",
            "tracking.enabled=false",
            "eval",
            "--model",
            str(tmp_path / "nowhere"),
            "--images",
            str(world_dirs[0]),
            "--truth",
            str(world_dirs[1]),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert "is not a saved model" in capsys.readouterr().err
