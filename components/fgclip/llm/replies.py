"""Reading a list of phrases out of an LLM's free-form reply.

Asked for "a JSON array of 10 strings", models answer in many shapes: the array inside
a ```json fence, the array followed by an explanation, an object ({"negatives": [...]}),
an array cut off by the token limit, single-quoted strings, or a numbered list with no
JSON at all. `read_phrases` tries those readings from the most to the least structured
and says which one worked. It only extracts: cleaning and validation are the negatives
module's post-processing (`select_valid`), applied to whatever comes out here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)(?:```|$)", re.DOTALL)
_DOUBLE_QUOTED = re.compile(r'"((?:[^"\\\n]|\\.)+)"')
_SINGLE_QUOTED = re.compile(r"(?<![A-Za-z0-9])'((?:[^'\n]|'(?=[A-Za-z]))+)'(?![A-Za-z0-9])")
_LIST_MARKER = re.compile(r"^\s*(?:\d+\s*[.):]|[-*\u2022])\s+")


@dataclass(frozen=True)
class Phrases:
    items: list[str]
    form: str  # json_array | json_object | quoted | list_lines | lines | none


def _strings(value: Any) -> list[str]:
    """The phrases inside a decoded JSON value: strings of a list, or of a list/values in an object."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        found = []
        for element in value:
            if isinstance(element, str):
                found.append(element)
            elif isinstance(element, dict):  # [{"description": "..."}]: its first string
                found.extend(_strings(element)[:1])
        return found
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if lists:  # {"negatives": [...]}: the (longest) list it holds
            return _strings(max(lists, key=len))
        return [v for v in value.values() if isinstance(v, str)]
    return []


def _first_json(text: str) -> tuple[Any, str] | None:
    """The first JSON array or object in `text` that decodes and holds phrases."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if _strings(value):
            return value, "json_array" if isinstance(value, list) else "json_object"
    return None


def _quoted(text: str) -> list[str]:
    """Quoted strings of a broken array (cut off, single quotes, missing commas)."""
    start = text.find("[")
    body = text[start + 1 :] if start >= 0 else text
    found = [json.loads(f'"{m}"') if "\\" in m else m for m in _DOUBLE_QUOTED.findall(body)]
    return found or _SINGLE_QUOTED.findall(body)


def _lines(text: str) -> tuple[list[str], str]:
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("```")]
    marked = [line for line in lines if _LIST_MARKER.match(line)]
    if marked:  # a list with prose around it: the list only
        return marked, "list_lines"
    # Unmarked lines, minus lead-ins ("Here are ten descriptions:"); one line may be comma-separated.
    lines = [line for line in lines if not line.endswith(":")]
    if len(lines) == 1 and "," in lines[0]:
        lines = [part for part in lines[0].split(",")]
    return lines, "lines"


def read_phrases(reply: str) -> Phrases:
    """The phrases of a reply and the reading that found them."""
    fenced = _FENCE.findall(reply)
    for source in [*fenced, reply] if fenced else [reply]:
        decoded = _first_json(source)
        if decoded is not None:
            return Phrases(_strings(decoded[0]), decoded[1])
    if "[" in reply:
        quoted = _quoted(fenced[0] if fenced else reply)
        if quoted:
            return Phrases(quoted, "quoted")
    items, form = _lines(fenced[0] if fenced and fenced[0].strip() else reply)
    return Phrases(items, form) if items else Phrases([], "none")
