"""The versioned data contract (schemas/fgclip-data.v1.json) and its validators."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

SCHEMA_FILE = "fgclip-data.v1.json"


@cache
def contract() -> dict[str, Any]:
    return json.loads(resources.files("fgclip").joinpath("schemas", SCHEMA_FILE).read_text(encoding="utf-8"))


SCHEMA_VERSION: str = contract()["x-version"]


@cache
def _validator(kind: str) -> Draft202012Validator:
    schema = contract()
    if kind not in schema["$defs"]:
        raise KeyError(f"the data contract defines no {kind!r}; known: {sorted(schema['$defs'])}")
    return Draft202012Validator({"$ref": f"#/$defs/{kind}", "$defs": schema["$defs"]})


def problems(kind: str, record: Any) -> list[str]:
    """Readable contract violations of one record (empty when it conforms)."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '<record>'}: {e.message}" for e in _validator(kind).iter_errors(record)]


def validate(kind: str, record: Any) -> None:
    found = problems(kind, record)
    if found:
        raise ValidationError(f"{kind} violates the data contract: " + "; ".join(found))
