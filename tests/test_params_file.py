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
