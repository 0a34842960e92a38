"""Class names and prompt templates: CLIP's, as LAION's CLIP_benchmark ships them, or the
user's own.

CLIP_benchmark (PyPI ``clip-benchmark``, pinned 1.6.2) is the field's standard harness;
its ``datasets/en_classnames.json`` and ``en_zeroshot_classification_templates.json``
hold CLIP's curated ImageNet-1k class names (in the order of the sorted wnids) and its 80
prompt templates. They are read as data files, without importing the package: its
dataset builder imports torchvision, which does not import beside the pinned torch (see
docs/benchmarks.md), and pip cannot install it with its dependencies without replacing
the pinned torch, so ``make env`` installs it with ``--no-deps``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from fgclip.eval.benchmarks.base import BadBenchmarkFile, BenchmarkMissing
from fgclip.eval.benchmarks.config import CLIP_TEMPLATES, PromptSettings

PACKAGE = "clip_benchmark"
CLASSNAMES_FILE = "en_classnames.json"
TEMPLATES_FILE = "en_zeroshot_classification_templates.json"
INSTALL_HINT = "pip install --no-deps clip-benchmark==1.6.2 (make env does this)"


def clip_benchmark_file(name: str) -> Path:
    """A data file of the installed CLIP_benchmark package (found, not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BenchmarkMissing(f"LAION's CLIP_benchmark is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / name
    if not path.is_file():
        raise BenchmarkMissing(f"{path} is missing from the installed CLIP_benchmark: {INSTALL_HINT}")
    return path


def clip_benchmark_entry(file_name: str, dataset: str) -> list[str]:
    path = clip_benchmark_file(file_name)
    content = json.loads(path.read_text(encoding="utf-8"))
    entry = content.get(dataset) if isinstance(content, dict) else None
    if not isinstance(entry, list) or not all(isinstance(item, str) for item in entry):
        raise BadBenchmarkFile(f"{path} has no list of strings for {dataset!r}")
    return entry


def templates_of(settings: PromptSettings) -> tuple[tuple[str, ...], str]:
    """(templates with '{}' for the class name, where they came from)."""
    if settings.templates == CLIP_TEMPLATES:
        dataset = CLIP_TEMPLATES.split(":", 1)[1]
        # CLIP_benchmark writes the slot as {c}
        return tuple(t.replace("{c}", "{}") for t in clip_benchmark_entry(TEMPLATES_FILE, dataset)), CLIP_TEMPLATES
    assert isinstance(settings.templates, tuple)  # the config allows the sentinel or a list
    return settings.templates, "config"


def prompts_for(class_names: list[str], settings: PromptSettings) -> tuple[list[str], int, str]:
    """Every (class, template) prompt, class-major; the template count; the templates' source."""
    templates, source = templates_of(settings)
    prompts = [template.format(name) for name in class_names for template in templates]
    if settings.lowercase:
        prompts = [prompt.lower() for prompt in prompts]
    return prompts, len(templates), source
