"""The versioned data contract (schemas/fgclip-data.v1.json) and its validators."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

SCHEMA_FILE = "fgclip-data.v1.json"


@cache
def contract() -> dict[str, Any]:
    return json.loads(resources.files("fgclip.core").joinpath("schemas", SCHEMA_FILE).read_text(encoding="utf-8"))


SCHEMA_VERSION: str = contract()["x-version"]
#: A reject's reason code, as the contract's reject record pattern has it.
REASON_PATTERN = re.compile(contract()["$defs"]["reject"]["properties"]["reason"]["pattern"])


def check_text_or_reason(what: str, text: str | None, reason: str | None) -> None:
    """A backend's per-item outcome holds a text or a reject reason code, never both or neither."""
    if (text is None) == (reason is None):
        raise ValueError(f"a {what} holds either a text or a reject reason")
    if reason is not None and not REASON_PATTERN.match(reason):
        raise ValueError(f"reject reason {reason!r} must match {REASON_PATTERN.pattern} (the data contract)")


@cache
def _validator(kind: str) -> Draft202012Validator:
    schema = contract()
    if kind not in schema["$defs"]:
        raise KeyError(f"the data contract defines no {kind!r}; known: {sorted(schema['$defs'])}")
    return Draft202012Validator({"$ref": f"#/$defs/{kind}", "$defs": schema["$defs"]})


def problems(kind: str, record: Any) -> list[str]:
    """Readable contract violations of one record (empty when it conforms)."""
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<record>'}: {e.message}"
        for e in _validator(kind).iter_errors(record)
    ]


def validate(kind: str, record: Any) -> None:
    found = problems(kind, record)
    if found:
        raise ValidationError(f"{kind} violates the data contract: " + "; ".join(found))
