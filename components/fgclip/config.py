"""The whole configuration: every component's section, assembled.

params.yaml (read by DVC) and the Airflow trigger form use the same keys. Each section
lives in the package that reads it (`fgclip/<package>/config.py`); this module only puts
them together, reads params.yaml and applies `--set` overrides. Unknown keys are errors,
so a typo in params.yaml fails loudly instead of silently running with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fgclip.core.config import Section, TrackingConfig
from fgclip.data.detect.config import DetectConfig
from fgclip.data.negatives.config import NegativesConfig
from fgclip.data.qc.config import QCConfig
from fgclip.data.recaption.config import RecaptionConfig
from fgclip.demo.config import DemoWorldConfig
from fgclip.eval.benchmarks.config import BenchmarkSuiteConfig
from fgclip.eval.config import EvalConfig
from fgclip.model.config import ModelConfig
from fgclip.orchestration.config import KubernetesConfig, OrchestrationConfig
from fgclip.registry.config import RegisterConfig
from fgclip.train.config import TrainConfig


class Params(Section):
    seed: int = 0
    demo: DemoWorldConfig = DemoWorldConfig()
    recaption: RecaptionConfig = RecaptionConfig()
    detect: DetectConfig = DetectConfig()
    negatives: NegativesConfig = NegativesConfig()
    qc: QCConfig = QCConfig()
    tracking: TrackingConfig = TrackingConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    registry: RegisterConfig = RegisterConfig()
    eval: EvalConfig = EvalConfig()
    benchmarks: BenchmarkSuiteConfig = BenchmarkSuiteConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()


def load_params(path: str | Path | None = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml (missing file -> defaults), apply dotted overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        data = yaml.safe_load(Path(path).read_text()) or {}
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return Params.model_validate(data)


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` with a YAML-typed value (so 0.2 is a float, true a bool)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)
