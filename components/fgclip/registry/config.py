"""The `registry` section: model name, aliases and the promotion gate."""

from __future__ import annotations

from pydantic import Field, model_validator

from fgclip.core.config import Section


class RegisterConfig(Section):
    """Model registry: every model becomes a new MLflow model version; the `champion`
    alias moves only when the challenger passes the promotion gate."""

    model_name: str = "fgclip-demo"
    experiment: str = "fgclip-register"
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"
    gate: dict[str, float] = Field(
        default_factory=lambda: {"fgovd_demo_top1": 0.0, "box_cls_top1": 0.0},
        min_length=1,
        description="eval metric -> required minimum improvement over the champion; all must pass",
    )
    lower_is_better: list[str] = Field(default_factory=list, description="gated metrics where smaller wins (losses)")
    metric_tag_prefix: str = Field("metric.", description="model-version tags holding a version's eval metrics")
    artifact_name: str = "model"
    predict_batch_size: int = Field(32, ge=1, description="rows per forward pass when the logged model embeds")
    predict_device: str = Field("auto", description="'auto' (cuda, then Ascend npu, else cpu), or a torch device")
    require_approval: bool = Field(
        False,
        description="a challenger that passes the gate becomes champion only after a person approves it "
        "(the train DAG's approve_champion task); false: the gate alone decides",
    )
    approval_timeout_s: int = Field(
        604800, ge=60, description="how long the approval waits for a person before it fails (the alias stays)"
    )

    @model_validator(mode="after")
    def _lower_is_better_is_gated(self) -> RegisterConfig:
        unknown = sorted(set(self.lower_is_better) - set(self.gate))
        if unknown:  # most likely a typo: the metric would silently be judged higher-is-better
            raise ValueError(f"registry.lower_is_better names metrics that are not gated: {unknown}")
        return self
