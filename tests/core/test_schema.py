"""The data contract: a valid Draft 2020-12 schema, versioned, and strict where it must be."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from fgclip.core import schema

REGION = {"bbox": [0.1, 0.2, 0.5, 0.6], "score": 0.8, "short_expr": "a red cube", "long_expr": "a red cube on the left"}
FINGERPRINT = "0" * 63 + "a"

GOOD: dict[str, Any] = {
    "sample_meta": {"key": "00000/k1", "caption": "alt", "width": 640, "height": 480, "url": None, "anything": [1]},
    "caption_record": {"key": "k1", "long_caption": "A red cube.", "extra": {"source": "x"}},
    "regions_record": {
        "key": "k1",
        "width": 640,
        "height": 480,
        "regions": [REGION, {**REGION, "extra": {"order": ["bbox"]}}],
    },
    "negatives_record": {
        "key": "k1",
        "regions": [
            {"short_expr_negs": ["a blue cube"] * 10},
            {"short_expr_negs": [], "neg_keys": [], "flag_short_neg": 1},
        ],
    },
    "reject": {
        "shard": "00000",
        "key": None,
        "reason": "empty_shard",
        "detail": "no members",
        "stage": "read",
        "member": None,
        "dropped": True,
    },
    "manifest": {
        "schema_version": "1.0.0",
        "stage": "detect",
        "shard": "00000",
        "fingerprint": FINGERPRINT,
        "inputs": {"images": "ab"},
        "settings": {},
        "counts": {"in": 3, "out": 2, "rejected": {"corrupt_image": 1}},
        "outputs": {"records": "cd"},
    },
    "finehard_record": {
        "f_path": "a/b.jpg",
        "caption": "long",
        "short_caption": "short",
        "bbox_info": [
            {
                "bbox": [0.1, 0.2, 0.3, 0.4, 0.9],
                "short_expr": "s",
                "long_expr": "l",
                "flag_short_neg": 1,
                "short_expr_negs": {"0": "n"},
            },
            {"bbox": [0.1, 0.2, 0.3, 0.4], "short_expr": "s", "long_expr": "l"},
        ],
    },
}


def without(record: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != field}


def changed(record: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy with the value at a dotted path (list indexes as numbers) replaced."""
    out = copy.deepcopy(record)
    *parents, leaf = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(leaf) if isinstance(node, list) else leaf] = value
    return out


BAD: dict[str, list[Any]] = {
    "sample_meta": [
        without(GOOD["sample_meta"], "key"),
        changed(GOOD["sample_meta"], "width", 0),
        changed(GOOD["sample_meta"], "url", 3),
    ],
    "caption_record": [
        without(GOOD["caption_record"], "long_caption"),
        changed(GOOD["caption_record"], "long_caption", ""),
        changed(GOOD["caption_record"], "key", "has.dot"),
        changed(GOOD["caption_record"], "key", "has space"),
        {**GOOD["caption_record"], "unknown": 1},
        "not an object",
    ],
    "regions_record": [
        changed(GOOD["regions_record"], "regions.0.bbox", [0.1, 0.2, 0.5]),
        changed(GOOD["regions_record"], "regions.0.bbox", [0.1, 0.2, 0.5, 0.6, 0.9]),
        changed(GOOD["regions_record"], "regions.0.bbox", [0.1, 0.2, 1.5, 0.6]),
        changed(GOOD["regions_record"], "regions.0.bbox", [-0.1, 0.2, 0.5, 0.6]),
        changed(GOOD["regions_record"], "regions.0.score", 1.2),
        changed(GOOD["regions_record"], "regions.0.short_expr", ""),
        {**GOOD["regions_record"], "regions": [without(REGION, "score")]},
        {**GOOD["regions_record"], "regions": [{**REGION, "label": "dog"}]},
        changed(GOOD["regions_record"], "width", 0),
        without(GOOD["regions_record"], "regions"),
    ],
    "negatives_record": [
        changed(GOOD["negatives_record"], "regions.0.short_expr_negs", [""]),
        changed(GOOD["negatives_record"], "regions.0.short_expr_negs", {"0": "x"}),
        changed(GOOD["negatives_record"], "regions.0", {}),
        {**GOOD["negatives_record"], "regions": [{"short_expr_negs": [], "other": 1}]},
        without(GOOD["negatives_record"], "key"),
    ],
    "reject": [
        without(GOOD["reject"], "reason"),
        changed(GOOD["reject"], "reason", "Not A Code"),
        changed(GOOD["reject"], "dropped", "yes"),
    ],
    "manifest": [
        changed(GOOD["manifest"], "fingerprint", "xyz"),
        changed(GOOD["manifest"], "counts.in", -1),
        without(GOOD["manifest"], "schema_version"),
        changed(GOOD["manifest"], "counts", {"in": 1}),
    ],
    "finehard_record": [
        without(GOOD["finehard_record"], "bbox_info"),
        changed(GOOD["finehard_record"], "bbox_info.0.bbox", [0.1, 0.2, 0.3]),
        changed(GOOD["finehard_record"], "bbox_info.0.short_expr_negs", ["n"]),
        changed(GOOD["finehard_record"], "bbox_info.0.flag_short_neg", "1"),
    ],
}


def test_schema_file_is_valid_draft_2020_12() -> None:
    text = resources.files("fgclip.core").joinpath("schemas", schema.SCHEMA_FILE).read_text(encoding="utf-8")
    document = json.loads(text)
    Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    for name, definition in document["$defs"].items():
        Draft202012Validator.check_schema(definition)  # every definition on its own too
        assert isinstance(definition, dict), name


def test_schema_version_is_present_and_semantic() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", schema.SCHEMA_VERSION)
    assert schema.SCHEMA_VERSION == schema.contract()["x-version"]
    assert schema.SCHEMA_FILE.endswith(
        f".v{schema.SCHEMA_VERSION.split('.')[0]}.json"
    )  # major version in the file name


def test_every_record_kind_is_covered() -> None:
    kinds = {
        "sample_meta",
        "caption_record",
        "regions_record",
        "negatives_record",
        "reject",
        "manifest",
        "finehard_record",
    }
    assert kinds <= set(schema.contract()["$defs"])
    assert set(GOOD) == set(BAD) == kinds


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_good_example_is_accepted(kind: str) -> None:
    assert schema.problems(kind, GOOD[kind]) == []
    schema.validate(kind, GOOD[kind])


@pytest.mark.parametrize(
    ("kind", "number"), [(kind, number) for kind in sorted(BAD) for number in range(len(BAD[kind]))]
)
def test_bad_example_is_rejected_with_a_readable_problem(kind: str, number: int) -> None:
    record = BAD[kind][number]
    found = schema.problems(kind, record)
    assert found, f"{kind} accepted a bad record: {record!r}"
    assert all(":" in problem for problem in found)  # "<path>: <message>"
    with pytest.raises(ValidationError, match=kind):
        schema.validate(kind, record)


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(KeyError, match="no 'caption'"):
        schema.problems("caption", {})
