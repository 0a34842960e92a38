"""One-time conversion of a Hugging Face CLIP checkpoint into an FG-CLIP checkpoint.

What the conversion does (once; the result records it in its config):

- stretches CLIP's text position table (77 rows) into the 248-row long-caption table
  (Long-CLIP's scheme, :func:`stretch_position_table`) and writes it into both
  ``position_embedding_ori`` and ``position_embedding_res``; CLIP's own 77-row table
  stays as it is and keeps serving short texts;
- initialises ``text_filip_projection`` (long captions) from ``text_projection``;
- initialises the regional and hard-negative temperatures from CLIP's ``logit_scale``;
- sets ``long_text_positions_stretched = True`` and ``source_max_position_embeddings``.

Converting something already converted (our checkpoints, or a published FG-CLIP v1
checkpoint that carries the long tables) is a no-op, so re-running a launch script on
a resumed run can never stretch twice or reset learned temperatures (a reference bug).

Command line: ``python -m fgclip.model.convert SOURCE_DIR OUTPUT_DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import cast

import torch
from transformers import CLIPModel, CLIPTextConfig
from transformers.initialization import no_init_weights

from fgclip.model.modeling import FGCLIP_ONLY_PARAMETER_NAMES, FGCLIPConfig, FGCLIPModel

#: Positions 0..19 of CLIP's table are kept as they are (Long-CLIP found them well trained).
KEPT_POSITIONS = 20
#: Each later position becomes this many slots.
STRETCH_FACTOR = 4

_PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "processor_config.json",
)
_TRANSIENT_CONFIG_KEYS = ("model_type", "transformers_version", "architectures", "_attn_implementation")


def stretched_length(source_length: int, kept: int = KEPT_POSITIONS) -> int:
    """Rows after stretching: kept + 4 * (L - 1 - kept) + 4 = 4L - 3 * kept (248 for 77)."""
    return STRETCH_FACTOR * source_length - (STRETCH_FACTOR - 1) * kept


def stretch_position_table(table: torch.Tensor, kept: int = KEPT_POSITIONS) -> torch.Tensor:
    """Stretch an (L, D) position table to (4L - 3 * kept, D), as Long-CLIP / FG-CLIP do.

    - rows 0..kept-1: copied;
    - each position p in kept..L-2 becomes 4 slots ``w * P[p] + (1 - w) * P[p + 1]``
      for w = 1, 3/4, 1/2, 1/4 (linear interpolation towards the next position);
    - the last position L-1 becomes 4 slots ``P[L-1] + k/4 * (P[L-1] - P[L-2])`` for
      k = 0..3: the same quarter steps, continued past the end along the last
      difference (linear extrapolation). This is what the reference release does, so
      slot 4 * (p - kept) + kept holds P[p] exactly for every p >= kept.

    Computed in float32 and returned in the table's dtype.
    """
    length, _ = table.shape
    if length < kept + 2:
        raise ValueError(f"a {length}-row table cannot keep {kept} rows and still be stretched")
    source = table.to(torch.float32)
    quarter_steps = torch.arange(STRETCH_FACTOR, dtype=torch.float32, device=table.device) / STRETCH_FACTOR

    current, following = source[kept:-1], source[kept + 1 :]  # positions p and p + 1
    interpolated = current.unsqueeze(1) + quarter_steps.view(1, -1, 1) * (following - current).unsqueeze(1)
    last_step = source[-1] - source[-2]
    extrapolated = source[-1].unsqueeze(0) + quarter_steps.view(-1, 1) * last_step.unsqueeze(0)

    stretched = torch.cat([source[:kept], interpolated.flatten(0, 1), extrapolated])
    return stretched.to(table.dtype)


def convert_clip_to_fgclip(source: str | os.PathLike | CLIPModel) -> FGCLIPModel:
    """An FG-CLIP model from a CLIP checkpoint directory or an in-memory model.

    Already converted sources come back unchanged (same object for a model, a plain
    load for a directory).
    """
    if isinstance(source, FGCLIPModel):
        if not source.config.long_text_positions_stretched:
            _initialise_fgclip_parameters(source)
        return source
    if isinstance(source, CLIPModel):
        return _convert_clip_model(source)
    if is_fgclip_checkpoint(source):
        return FGCLIPModel.from_pretrained(source)
    return _convert_clip_model(CLIPModel.from_pretrained(source, attn_implementation="sdpa"))


def convert_checkpoint(source_dir: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Convert ``source_dir`` and save the FG-CLIP checkpoint (HF format) to ``output_dir``.

    Tokenizer and image-processor files travel along, so the output directory is a
    complete checkpoint for ``AutoTokenizer`` / ``CLIPImageProcessor`` too.
    """
    model = convert_clip_to_fgclip(source_dir)
    output = Path(output_dir)
    model.save_pretrained(output)
    for name in _PROCESSOR_FILES:
        source_file = Path(source_dir) / name
        if source_file.is_file() and not (output / name).exists():
            shutil.copy2(source_file, output / name)
    return output


def is_fgclip_checkpoint(checkpoint_dir: str | os.PathLike) -> bool:
    """True when the directory already holds FG-CLIP weights (ours or published v1)."""
    directory = Path(checkpoint_dir)
    config = json.loads((directory / "config.json").read_text())
    if config.get("long_text_positions_stretched"):
        return True
    return FGCLIP_ONLY_PARAMETER_NAMES[0] in _checkpoint_parameter_names(directory)


def _checkpoint_parameter_names(directory: Path) -> set[str]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        return set(json.loads(index.read_text())["weight_map"])
    single = directory / "model.safetensors"
    if single.exists():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as weights:
            return set(weights.keys())
    legacy = directory / "pytorch_model.bin"
    if legacy.exists():
        return set(torch.load(legacy, map_location="meta", weights_only=True))
    raise FileNotFoundError(f"no model weights in {directory}")


def _convert_clip_model(clip: CLIPModel) -> FGCLIPModel:
    config_fields = {k: v for k, v in clip.config.to_dict().items() if k not in _TRANSIENT_CONFIG_KEYS}
    text_length = cast(CLIPTextConfig, clip.config.text_config).max_position_embeddings
    config = FGCLIPConfig(
        **config_fields,
        long_text_max_position_embeddings=stretched_length(text_length),
        long_text_kept_positions=KEPT_POSITIONS,
    )
    config._attn_implementation = clip.config._attn_implementation or "sdpa"
    with no_init_weights():  # every parameter is overwritten below; skip a random init
        model = FGCLIPModel(config)
    model.to(dtype=clip.dtype, device=clip.device)  # type: ignore[call-arg]  # transformers' wrapper hides `self`

    missing, unexpected = model.load_state_dict(clip.state_dict(), strict=False)
    if unexpected or set(missing) != set(FGCLIP_ONLY_PARAMETER_NAMES):
        raise ValueError(f"unexpected CLIP layout: missing={missing}, unexpected={unexpected}")
    _initialise_fgclip_parameters(model)
    return model


@torch.no_grad()
def _initialise_fgclip_parameters(model: FGCLIPModel) -> None:
    embeddings = model.text_model.embeddings
    kept = model.config.long_text_kept_positions
    long_table = stretch_position_table(embeddings.position_embedding.weight, kept)
    if long_table.shape != embeddings.position_embedding_ori.weight.shape:
        raise ValueError(
            f"stretched table {tuple(long_table.shape)} does not fit the long tables "
            f"{tuple(embeddings.position_embedding_ori.weight.shape)}"
        )
    embeddings.position_embedding_ori.weight.copy_(long_table)
    embeddings.position_embedding_res.weight.copy_(long_table)
    model.text_filip_projection.weight.copy_(model.text_projection.weight)
    model.logit_scale_finegraind.copy_(model.logit_scale)
    model.logit_scale_hardneg.copy_(model.logit_scale)
    model.config.long_text_positions_stretched = True
    model.config.source_max_position_embeddings = embeddings.position_embedding.weight.shape[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_dir", help="HF CLIP (or FG-CLIP) checkpoint directory")
    parser.add_argument("output_dir", help="where to save the FG-CLIP checkpoint")
    args = parser.parse_args(argv)
    print(convert_checkpoint(args.source_dir, args.output_dir))


if __name__ == "__main__":
    main()
