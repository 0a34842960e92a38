"""Tiny copies of the paper's benchmarks, each written in its release's own layout and
file format (see components/fgclip/eval/benchmarks/ and docs/benchmarks.md), under one
data root. Every image is a small JPEG with its own colours, so a test embedder can tell
the images apart by their decoded pixels.

``write_data_root(root)`` writes all of them and returns a ``Truth``: what each benchmark
holds (images, captions, boxes and classes), for tests that know the right answers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZES = ((64, 48), (48, 64), (56, 56))
LONG_WORDS = "a detailed scene with a {} object near a {} wall under soft {} light".split()


def write_image(path: Path, seed: int) -> Path:
    """A JPEG whose colours follow from ``seed``: decoded pixels differ from every other seed."""
    rng = np.random.default_rng(seed)
    width, height = SIZES[seed % len(SIZES)]
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        draw.rectangle((x, y, x + 8, y + 8), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=92)
    return path


def fingerprint(image: Image.Image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def file_fingerprint(path: Path) -> str:
    with Image.open(path) as opened:
        return fingerprint(opened)


def long_caption(seed: int, words: int = 120) -> str:
    """A long caption unique to ``seed`` (well past 77 tokens, within 248)."""
    rng = np.random.default_rng(1000 + seed)
    colours = ["red", "green", "blue", "amber", "violet", "teal", "grey", "ochre"]
    text = [f"picture{seed}"]
    while len(text) < words:
        text.extend(w.format(*rng.choice(colours, 3)) if "{}" in w else w for w in LONG_WORDS)
    return " ".join(text[:words])


@dataclass
class Truth:
    """What the written benchmarks hold, by benchmark name."""

    images: dict[str, list[Path]] = field(default_factory=dict)  # in the reader's order
    captions: dict[str, list[list[str]]] = field(default_factory=dict)  # per image, retrieval
    boxes: dict[str, list[tuple[Path, tuple[float, ...], int]]] = field(default_factory=dict)  # (image, box, class)
    classes: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, list[int]] = field(default_factory=dict)  # zero-shot: per image
    fgovd: list[dict] = field(default_factory=list)  # written lines of the hard file


COCO_IDS = (139, 285, 632)
COCO_CATEGORIES = [(1, "person", "person"), (3, "car", "vehicle"), (18, "dog", "animal")]


def write_coco(root: Path, truth: Truth) -> None:
    """COCO val2017: images, instances_val2017.json (80-class format, 3 classes here)."""
    images, annotations = [], []
    boxes = []
    for index, image_id in enumerate(COCO_IDS):
        path = write_image(root / "coco" / "val2017" / f"{image_id:012d}.jpg", image_id)
        width, height = SIZES[image_id % len(SIZES)]
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height, "license": 1})
        for slot in range(2):
            x, y, w, h = 4.0 + 20 * slot, 6.0, 16.0, 20.0
            category = COCO_CATEGORIES[(index + slot) % 3][0]
            annotations.append(
                {
                    "id": 1000 * image_id + slot,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h]],
                }
            )
            box = (x / width, y / height, (x + w) / width, (y + h) / height)
            boxes.append((path, box, [c[0] for c in COCO_CATEGORIES].index(category)))
    # one crowd box (scored: FG-CLIP's script keeps them), and three bad annotations
    annotations.append({"id": 1, "image_id": 139, "category_id": 1, "bbox": [30.0, 30.0, 10.0, 10.0], "iscrowd": 1})
    width, height = SIZES[139 % len(SIZES)]
    boxes.append(
        (root / "coco" / "val2017" / "000000000139.jpg", (30 / width, 30 / height, 40 / width, 40 / height), 0)
    )
    annotations.append({"id": 2, "image_id": 139, "category_id": 99, "bbox": [1.0, 1.0, 5.0, 5.0], "iscrowd": 0})
    annotations.append({"id": 3, "image_id": 285, "category_id": 1, "bbox": [1.0, 1.0, 0.0, 5.0], "iscrowd": 0})
    annotations.append({"id": 4, "image_id": 777, "category_id": 1, "bbox": [1.0, 1.0, 5.0, 5.0], "iscrowd": 0})
    categories = [{"id": i, "name": n, "supercategory": s} for i, n, s in COCO_CATEGORIES]
    content = {
        "info": {"year": 2017},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    target = root / "coco" / "annotations" / "instances_val2017.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(content))
    truth.boxes["coco_boxes"] = boxes
    truth.classes["coco_boxes"] = [n for _, n, _ in COCO_CATEGORIES]


def write_lvis(root: Path, truth: Truth) -> None:
    """LVIS v1 val: coco_url image references (val2017 and train2017), underscore names."""
    train = write_image(root / "coco" / "train2017" / "000000000009.jpg", 9)
    categories = [
        {
            "id": 1,
            "name": "aerosol_can",
            "synonyms": ["aerosol_can", "spray_can"],
            "synset": "aerosol.n.02",
            "def": "a dispenser that holds a substance under pressure",
            "frequency": "c",
            "image_count": 64,
            "instance_count": 109,
        },
        {
            "id": 2,
            "name": "air_conditioner",
            "synonyms": ["air_conditioner"],
            "synset": "air_conditioner.n.01",
            "def": "a machine that keeps air cool and dry",
            "frequency": "f",
            "image_count": 364,
            "instance_count": 1467,
        },
        {
            "id": 3,
            "name": "airplane",
            "synonyms": ["airplane", "aeroplane"],
            "synset": "airplane.n.01",
            "def": "an aircraft that has a fixed wing",
            "frequency": "f",
            "image_count": 1911,
            "instance_count": 4700,
        },
    ]
    sources = [(root / "coco" / "val2017" / "000000000139.jpg", "val2017", 139), (train, "train2017", 9)]
    images, annotations, boxes = [], [], []
    for index, (path, split, image_id) in enumerate(sources):
        width, height = SIZES[image_id % len(SIZES)]
        images.append(
            {
                "id": image_id,
                "coco_url": f"http://images.cocodataset.org/{split}/{path.name}",
                "height": height,
                "width": width,
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
                "license": 1,
                "flickr_url": "",
                "date_captured": "",
            }
        )
        for slot in range(2):
            x, y, w, h = 2.0 + 12 * slot, 4.0 + 10 * slot, 10.0, 12.0
            category = (index + slot) % 3 + 1
            annotations.append(
                {
                    "id": 10 * image_id + slot,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "segmentation": [],
                }
            )
            boxes.append((path, (x / width, y / height, (x + w) / width, (y + h) / height), category - 1))
    target = root / "lvis" / "lvis_v1_val.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations, "categories": categories})
    )
    truth.boxes["lvis_boxes"] = boxes
    truth.classes["lvis_boxes"] = ["aerosol can", "air conditioner", "airplane"]


FGOVD_NAMES = {"hard": "h", "medium": "m", "easy": "e", "trivial": "shuffle_negatives"}


def write_fgovd(root: Path, truth: Truth) -> None:
    """FG-OVD: the four jsonl files, boxes on the COCO val2017 images."""
    for difficulty, prefix in FGOVD_NAMES.items():
        lines = []
        for image_id in COCO_IDS[:2]:
            width, height = SIZES[image_id % len(SIZES)]
            for slot, colour in enumerate(("red", "blue")):
                lines.append(
                    {
                        "img_path": f"val2017/{image_id:012d}.jpg",
                        "bbox": [2.0 + 24 * slot, 3.0, 18.0, 20.0],
                        "pos_expression": [f"a {colour} {difficulty} chair {image_id}"],
                        "neg_expression": [f"a {c} {difficulty} chair {image_id}" for c in ("green", "pink", "black")],
                        "width": width,
                        "height": height,
                        "test_type": f"{difficulty}",
                    }
                )
        name = f"{prefix}_attributes_llava.jsonl" if prefix != "shuffle_negatives" else "shuffle_negatives_llava.jsonl"
        target = root / "fgovd" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{broken line\n")
        if difficulty == "hard":
            truth.fgovd = lines


def write_sharegpt4v(root: Path, truth: Truth) -> None:
    """ShareCaptioner's JSON list; images under the ShareGPT4V data folder by their own paths."""
    base = root / "sharegpt4v"
    refs = [
        "coco/train2017/000000000009.jpg",
        "sam/images/sa_227013.jpg",
        "llava/llava_pretrain/images/00013/000137409.jpg",
    ]
    records, images, captions = [], [], []
    for index, ref in enumerate(refs):
        path = write_image(base / "data" / ref, 300 + index)
        caption = long_caption(300 + index)
        records.append(
            {
                "id": Path(ref).stem,
                "image": ref,
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat do you see happening in this image?"},
                    {"from": "gpt", "value": caption},
                ],
            }
        )
        images.append(path)
        captions.append([caption])
    records.append({"id": "broken", "image": "sam/images/sa_1.jpg", "conversations": [{"from": "human", "value": "?"}]})
    base.mkdir(parents=True, exist_ok=True)
    (base / "share-captioner_coco_lcs_sam_1246k_1107.json").write_text(json.dumps(records))
    truth.images["sharegpt4v_1k"], truth.captions["sharegpt4v_1k"] = images, captions


def write_dci(root: Path, truth: Truth) -> None:
    """DCI: splits.json, one annotation JSON per image, SA-1B photos."""
    base = root / "dci" / "densely_captioned_images"
    splits: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    images, captions = [], []
    for index, split in enumerate(("train", "train", "valid", "test")):
        name = f"sa_{1544250 + index}"
        path = write_image(base / "photos" / f"{name}.jpg", 400 + index)
        short, extra = f"A photo number {index} of a street.", long_caption(400 + index, 100)
        record = {
            "image": path.name,
            "short_caption": short,
            "extra_caption": extra,
            "mask_data": {},
            "mask_keys": [],
            "summaries": {"base": [short]},
            "negatives": {},
        }
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        (base / "annotations" / f"{name}.json").write_text(json.dumps(record))
        splits[split].append(f"{name}.json")
        images.append(path)
        captions.append([f"{short}\n{extra}"])
    splits["test"].append("sa_missing.json")  # listed, never shipped: a counted reject
    (base / "splits.json").write_text(json.dumps(splits))
    truth.images["dci"], truth.captions["dci"] = images, captions


def write_docci(root: Path, truth: Truth) -> None:
    """DOCCI: docci_descriptions.jsonlines (train/test/qual splits) and images/."""
    base = root / "docci"
    lines, images, captions = [], [], []
    for index in range(3):
        path = write_image(base / "images" / f"test_{index:05d}.jpg", 500 + index)
        description = long_caption(500 + index, 140)
        lines.append(
            {"example_id": f"test_{index:05d}", "split": "test", "image_file": path.name, "description": description}
        )
        images.append(path)
        captions.append([description])
    lines.append({"example_id": "train_00000", "split": "train", "image_file": "train_00000.jpg", "description": "x"})
    lines.append(
        {"example_id": "qual_dev_00000", "split": "qual_dev", "image_file": "qual_dev_00000.jpg", "description": "y"}
    )
    text = "".join(json.dumps(line) + "\n" for line in lines) + "not json\n"
    (base / "docci_descriptions.jsonlines").write_text(text)
    truth.images["docci"], truth.captions["docci"] = images, captions


def write_urban1k(root: Path, truth: Truth) -> None:
    """Urban-1k: image/<n>.jpg and caption/<n>.txt."""
    base = root / "Urban1k"
    images, captions = [], []
    for index in range(1, 4):
        path = write_image(base / "image" / f"{index}.jpg", 600 + index)
        caption = long_caption(600 + index, 110)
        (base / "caption").mkdir(parents=True, exist_ok=True)
        (base / "caption" / f"{index}.txt").write_text(caption + "\n")
        images.append(path)
        captions.append([caption])
    write_image(base / "image" / "99.jpg", 699)  # an image without a caption: a counted reject
    truth.images["urban1k"], truth.captions["urban1k"] = images, captions


def karpathy_record(index: int, filename: str, sentences: list[str], split: str, **extra: object) -> dict:
    return {
        "filename": filename,
        "imgid": index,
        "split": split,
        "sentids": list(range(5 * index, 5 * index + len(sentences))),
        "sentences": [
            {"tokens": s.lower().split(), "raw": s, "imgid": index, "sentid": 5 * index + j}
            for j, s in enumerate(sentences)
        ],
        **extra,
    }


def write_karpathy(root: Path, truth: Truth) -> None:
    """Karpathy's dataset_coco.json (val2014 names; images found by their 2017 names) and
    dataset_flickr30k.json, with train/restval records the test split leaves out."""
    coco_images, coco_captions, records = [], [], []
    for index, image_id in enumerate(COCO_IDS):
        sentences = [f"coco image {image_id} caption {j}." for j in range(6 if index == 0 else 5)]
        records.append(
            karpathy_record(
                index, f"COCO_val2014_{image_id:012d}.jpg", sentences, "test", filepath="val2014", cocoid=image_id
            )
        )
        coco_images.append(root / "coco" / "val2017" / f"{image_id:012d}.jpg")
        coco_captions.append(sentences[:5])
    records.append(
        karpathy_record(9, "COCO_val2014_000000000009.jpg", ["train caption"], "restval", filepath="val2014", cocoid=9)
    )
    (root / "karpathy").mkdir(parents=True, exist_ok=True)
    (root / "karpathy" / "dataset_coco.json").write_text(json.dumps({"images": records, "dataset": "coco"}))
    truth.images["coco_5k"], truth.captions["coco_5k"] = coco_images, coco_captions

    flickr_images, flickr_captions, records = [], [], []
    for index in range(3):
        name = f"{1000092795 + index}.jpg"
        path = write_image(root / "flickr30k" / "flickr30k-images" / name, 700 + index)
        sentences = [f"flickr image {index} caption {j}." for j in range(5)]
        records.append(karpathy_record(index, name, sentences, "test"))
        flickr_images.append(path)
        flickr_captions.append(sentences)
    records.append(karpathy_record(5, "10002456.jpg", ["a train image"], "train"))
    (root / "karpathy" / "dataset_flickr30k.json").write_text(json.dumps({"images": records, "dataset": "flickr30k"}))
    truth.images["flickr30k_1k"], truth.captions["flickr30k_1k"] = flickr_images, flickr_captions


IMAGENET_CLASSES = 1000
IMAGENET_FILLED = (0, 1, 999)  # classes that get images (the other folders stay empty)


def write_imagenet(root: Path, truth: Truth) -> None:
    """ImageNet val in the folder-per-class layout: 1000 wnid folders, images in a few."""
    base = root / "imagenet" / "val"
    wnids = [f"n{1440764 + 37 * i:08d}" for i in range(IMAGENET_CLASSES)]  # sorted like the real ones
    images, labels = [], []
    for label, wnid in enumerate(wnids):
        (base / wnid).mkdir(parents=True, exist_ok=True)
        if label in IMAGENET_FILLED:
            for copy in range(2):
                number = 1 + 2 * label + copy
                images.append(write_image(base / wnid / f"ILSVRC2012_val_{number:08d}.JPEG", 800 + 2 * label + copy))
                labels.append(label)
    (base / wnids[0] / "notes.txt").write_text("not an image")
    truth.images["imagenet_1k"], truth.labels["imagenet_1k"] = images, labels


def write_data_root(root: Path) -> Truth:
    truth = Truth()
    for writer in (
        write_coco,
        write_lvis,
        write_fgovd,
        write_sharegpt4v,
        write_dci,
        write_docci,
        write_urban1k,
        write_karpathy,
        write_imagenet,
    ):
        writer(root, truth)
    return truth
