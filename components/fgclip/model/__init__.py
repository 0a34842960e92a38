"""FG-CLIP model, checkpoint conversion, dense region features and losses.

Public API (see each module's docstring for details)::

    from fgclip.model import FGCLIPModel, convert_clip_to_fgclip, region_features
    from fgclip.model import global_contrastive_loss, stage1_loss, stage2_loss

- ``modeling``: ``FGCLIPConfig``, ``FGCLIPModel``, ``trim_to_longest``,
  ``adamw_param_groups``, ``TEMPERATURE_PARAMETER_NAMES``
- ``convert``: ``convert_clip_to_fgclip``, ``convert_checkpoint``,
  ``stretch_position_table``, ``is_fgclip_checkpoint``
- ``dense``: ``region_features``, ``roi_align``, ``roi_align_torch``
- ``losses``: ``gather_with_grad``, ``global_contrastive_loss``, ``stage1_loss``,
  ``regional_contrastive_loss``, ``hard_negative_loss``, ``stage2_loss``, ``Stage2Losses``

Names are resolved lazily: importing ``fgclip.model.losses`` (e.g. in a spawned worker
or a data loader) must not pay for importing transformers.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "FGCLIPConfig": "modeling",
    "FGCLIPModel": "modeling",
    "FGCLIPOutput": "modeling",
    "TEMPERATURE_PARAMETER_NAMES": "modeling",
    "adamw_param_groups": "modeling",
    "trim_to_longest": "modeling",
    "convert_checkpoint": "convert",
    "convert_clip_to_fgclip": "convert",
    "is_fgclip_checkpoint": "convert",
    "stretch_position_table": "convert",
    "stretched_length": "convert",
    "region_features": "dense",
    "roi_align": "dense",
    "roi_align_torch": "dense",
    "PAPER_HARD_NEGATIVE_WEIGHT": "losses",
    "PAPER_REGIONAL_WEIGHT": "losses",
    "Stage2Losses": "losses",
    "gather_with_grad": "losses",
    "global_contrastive_loss": "losses",
    "hard_negative_loss": "losses",
    "regional_contrastive_loss": "losses",
    "stage1_loss": "losses",
    "stage2_loss": "losses",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return __all__
