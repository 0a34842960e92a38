"""The Airflow trigger form, built from the typed config.

Each params.yaml key the config lists under `orchestration.data_form` / `train_form` becomes
one form field whose JSON schema (type, enum, bounds) and help text come from the pydantic
field, and whose default is the value committed in params.yaml. So a backend added to the
config's Literal shows up in the form's drop-down, and the form rejects what params.yaml
would. Fields are grouped in sections by params section (one per backend's settings), and
every free-text field may stay empty: an empty field keeps the committed value, so the form
submits as it opens, whichever backends are selected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter

from fgclip.config import Params
from fgclip.orchestration.pipeline import PipelineError

# JSON schema words the Airflow form understands; the rest of pydantic's output is noise there.
_SCHEMA_WORDS = (
    "type",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "items",
    "minItems",
    "maxItems",
    "format",
)


#: The form field of the number of training nodes (the kubernetes runtime's TrainJob).
NUM_NODES = "num_nodes"


def form_name(key: str) -> str:
    """Form field name of a dotted params key: recaption.backend -> recaption_backend
    (dots would read as nesting in the form)."""
    return key.replace(".", "_")


def _field(key: str) -> Any:
    model: type[BaseModel] = Params
    *parents, leaf = key.split(".")
    for part in parents:
        info = model.model_fields.get(part)
        annotation = info.annotation if info else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise PipelineError(f"form field {key!r}: {part!r} is not a config section")
        model = annotation
    info = model.model_fields.get(leaf)
    if info is None:
        raise PipelineError(f"form field {key!r}: the config has no key {leaf!r} there")
    if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
        raise PipelineError(f"form field {key!r} is a whole section; list its keys instead")
    return info


def _simplify(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic writes `X | None` as anyOf; the form wants type: [x, "null"]."""
    options = schema.get("anyOf")
    if options and all(set(option) <= set(_SCHEMA_WORDS) for option in options):
        merged: dict[str, Any] = {}
        types: list[str] = []
        for option in options:
            kind = option.get("type")
            types.extend(kind if isinstance(kind, list) else [kind])
            merged.update({k: v for k, v in option.items() if k != "type"})
        merged["type"] = types
        schema = {**{k: v for k, v in schema.items() if k != "anyOf"}, **merged}
    if "const" in schema:  # Literal with one member
        schema = {**schema, "enum": [schema["const"]]}
    return {k: v for k, v in schema.items() if k in _SCHEMA_WORDS}


def _value(params: Params, key: str) -> Any:
    node: Any = params.model_dump(mode="json")
    for part in key.split("."):
        node = node[part]
    return node


#: Form sections by params.yaml section (the first part of the key); others: the section's name.
SECTIONS = {
    "dataset": "Data source",  # which dataset the run builds
    "demo": "Data source",  # the demo source's own knobs: which demo world
    "recaption": "Recaption backend",
    "detect": "Detect backend",
    "negatives": "Negatives backend",
    "qc": "Quality control",
    "train": "Training",
    "model": "Training",
    "registry": "Promotion",
}


def section_of(key: str) -> str:
    head = key.split(".", 1)[0]
    return SECTIONS.get(head, head.replace("_", " ").capitalize())


def _nullable(key: str) -> bool:
    info = _field(key)
    try:
        TypeAdapter(info.annotation).validate_python(None)
    except ValueError:
        return False
    return True


def form_fields(keys: Iterable[str], params: Params) -> dict[str, dict[str, Any]]:
    """{form name: Param keyword arguments (default, title, description, section, JSON schema)}.

    A string field (other than a choice) may be left empty (null): the run keeps the value
    committed in params.yaml, so a backend's model field is never required while that
    backend is not selected; an empty committed string opens as an empty field."""
    fields: dict[str, dict[str, Any]] = {}
    for key in keys:
        info = _field(key)
        annotation = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        schema = _simplify(TypeAdapter(annotation).json_schema())  # type: ignore[arg-type]  # a field's annotation
        name = form_name(key)
        if name in fields:
            raise PipelineError(f"form fields {key!r} and {fields[name]['title']!r} share the name {name!r}")
        default = _value(params, key)
        types = schema.get("type")
        if types == "string" and "enum" not in schema:
            schema = {**schema, "type": ["string", "null"]}
            schema.pop("minLength", None)
            if default == "":
                default = None
        keep = "" if _nullable(key) else " Empty: the committed value."
        fields[name] = {
            "default": default,
            "title": key,
            "description": f"params.yaml {key}" + (f": {info.description}" if info.description else "") + keep,
            "section": section_of(key),
            **schema,
        }
    return fields


def overrides(values: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """{dotted key: value} of the form's values for `keys`; missing values and empty values of
    keys that cannot be null are left out (the run keeps the committed value)."""
    chosen: dict[str, Any] = {}
    for key in keys:
        name = form_name(key)
        if name not in values:
            continue
        chosen[key] = values[name]
    return drop_empty(chosen)


def drop_empty(values: Mapping[str, Any]) -> dict[str, Any]:
    """{dotted key: value} without the empty values of keys that cannot be null (the run keeps
    their committed value): what a pod's `--set key=null` means."""
    return {key: value for key, value in values.items() if value is not None or _nullable(key)}


def form_set_flags(keys: tuple[str, ...]) -> list[str]:
    """`--set key=<the form's value>` for each key, rendered when the task runs (JSON is YAML,
    which is how `--set` reads a value; see drop_empty for empty values)."""
    flags: list[str] = []
    for key in keys:
        flags += ["--set", f"{key}={{{{ params.{form_name(key)} | tojson }}}}"]
    return flags
