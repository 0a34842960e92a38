"""Versioned prompt files for the model backends.

A built-in prompt lives in its component package, `<package>/prompts/<name>.v<N>.txt`
(e.g. `fgclip/data/negatives/prompts/negatives.v1.txt`), or in any file a user points the
config at. Its version and SHA-256 go into every output's fingerprint and into MLflow, so
editing a prompt reruns exactly the stages that use it and the run records which text
produced the data.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

BUILTIN_PATTERN = re.compile(r"^(?P<name>[a-z_]+)\.v(?P<version>\d+)$")


@dataclass(frozen=True)
class Prompt:
    """A prompt text and where it came from."""

    ref: str  # "recaption.v1" for a built-in, else the file path as configured
    text: str
    sha256: str

    def identity(self) -> dict[str, str]:
        return {"prompt": self.ref, "prompt_sha256": self.sha256}

    def render(self, **values: str) -> str:
        """The text with `{name}` fields filled; a missing field is a KeyError naming it."""
        return self.text.format(**values)


def builtin_prompts(package: str) -> list[str]:
    """References of the prompts a component package ships ("negatives.v1", ...)."""
    folder = resources.files(package) / "prompts"
    return sorted(entry.name.removesuffix(".txt") for entry in folder.iterdir() if entry.name.endswith(".txt"))


def load_prompt(ref: str, package: str) -> Prompt:
    """A built-in prompt of component `package` by reference ("negatives.v1"), or a prompt
    file by path."""
    if BUILTIN_PATTERN.match(ref):
        entry = resources.files(package) / "prompts" / f"{ref}.txt"
        if not entry.is_file():
            raise ValueError(f"no built-in prompt {ref!r}; built-in: {builtin_prompts(package)}")
        raw = entry.read_bytes()
    else:
        path = Path(ref)
        if not path.is_file():
            raise ValueError(f"prompt file {ref!r} does not exist (built-in prompts: {builtin_prompts(package)})")
        raw = path.read_bytes()
    text = raw.decode("utf-8").strip()
    if not text:
        raise ValueError(f"prompt {ref!r} is empty")
    return Prompt(ref, text, hashlib.sha256(raw).hexdigest())
