"""params.yaml is the one place a user sets knobs: it must validate against the typed
config and name every knob the config has, so nothing runs on a hidden default."""

from __future__ import annotations

from typing import Any

import yaml

from fgclip.config import Params, load_params
from tests.conftest import REPO_ROOT


def _paths(tree: Any, prefix: str = "") -> set[str]:
    if isinstance(tree, dict) and tree:
        return set().union(*(_paths(value, f"{prefix}{key}.") for key, value in tree.items()))
    return {prefix.rstrip(".")}


def test_params_file_validates() -> None:
    load_params(REPO_ROOT / "params.yaml")


def test_params_file_names_every_knob() -> None:
    written = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    defaults = Params().model_dump(mode="json")
    # free-form mappings (e.g. the gate's metric -> margin) are knobs as a whole
    missing = {p for p in _paths(defaults) - _paths(written) if not any(p.startswith(w + ".") for w in _paths(written))}
    assert not missing, f"params.yaml lacks: {sorted(missing)}"
    unknown = _paths(written) - _paths(defaults)
    unknown = {p for p in unknown if not any(p.startswith(d + ".") for d in _paths(defaults))}
    assert not unknown, f"params.yaml has keys the config does not know: {sorted(unknown)}"


#: Where params.yaml (the embedded default: the demo world and the tiny demo model)
#: deliberately differs from the code's defaults (the paper's settings), and why.
EMBEDDED_DEFAULT_CHOICES = {
    "train.recipe": (
        "demo",
        "the demo recipes size training for minutes on a laptop; the code defaults to the paper's",
    ),
}


def _values(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        return {k: v for key, value in tree.items() for k, v in _values(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def test_params_file_values_equal_the_code_defaults() -> None:
    """Every default lives in one place: the code. params.yaml repeats it (so a person sees
    every knob), and a test, not care, keeps the two equal."""
    written = _values(load_params(REPO_ROOT / "params.yaml").model_dump(mode="json"))
    defaults = _values(Params().model_dump(mode="json"))
    differ = {key: (defaults.get(key), value) for key, value in written.items() if defaults.get(key) != value}
    expected = {key: (defaults.get(key), value) for key, (value, _) in EMBEDDED_DEFAULT_CHOICES.items()}
    assert differ == expected, "params.yaml and the code defaults differ (code, params.yaml): " + repr(
        {k: v for k, v in differ.items() if expected.get(k) != v}
    )
