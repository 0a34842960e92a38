"""A list of tokenised `Example`s -> one padded, masked batch of tensors (the loader's
`collate_fn`): texts padded per kind, regions and hard negatives laid out on fixed grids
(batch x max_boxes [x max_negatives]) with validity masks."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
import torch

from fgclip.train.examples import Example


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention) of shape (N, longest), at least one column (one numpy pass, no row loop)."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    longest = max(int(lengths.max(initial=0)), 1)
    attention = np.arange(longest) < lengths[:, None]
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    ids[attention] = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(ids), torch.from_numpy(attention.astype(np.int64))


def _grid(
    flat: torch.Tensor,
    index: tuple[torch.Tensor, ...],
    shape: tuple[int, ...],
    fill: int,
) -> torch.Tensor:
    """A (*shape, width) tensor of `fill` with the rows of `flat` at the slots `index`."""
    grid = torch.full((*shape, flat.shape[-1]), fill, dtype=flat.dtype)
    grid[index] = flat
    return grid


def collate(examples: Sequence[Example], pad_id: int, stage: int, max_boxes: int, max_negatives: int) -> dict[str, Any]:
    """Padded tensors and masks.

    Always: keys, pixel_values (B, 3, H, W) uint8 (`fgclip.train.images.PixelNormalisation`
    turns them into the model's input), short_ids / short_attention (B, Ls),
    long_ids / long_attention (B, Ll), pad_token_id.
    Stage 2 (M = max_boxes, K = max_negatives): boxes (B, M, 4) normalised x1, y1, x2, y2
    in the cropped image; box_valid (B, M); box_ids / box_attention (B, M, Lb), the box's
    expression (short or long); box_uses_short (B, M); pos_ids / pos_attention (B, M, Lp),
    the short expression where a box with negatives uses its long one; neg_ids /
    neg_attention (B, M, K, Ln) and neg_valid (B, M, K). Empty slots are padding, masked.
    """
    batch_size = len(examples)
    batch: dict[str, Any] = {
        "keys": [example.key for example in examples],
        # (B, H, W, 3) stacked once, viewed as (B, 3, H, W); the normalisation makes it contiguous
        "pixel_values": torch.from_numpy(np.stack([example.pixels for example in examples])).permute(0, 3, 1, 2),
        "pad_token_id": pad_id,
    }
    batch["short_ids"], batch["short_attention"] = _pad([e.short_ids for e in examples], pad_id)
    batch["long_ids"], batch["long_attention"] = _pad([e.long_ids for e in examples], pad_id)
    if stage != 2:
        return batch
    slots = [(b, m) for b, example in enumerate(examples) for m in range(len(example.boxes))]
    slot_index = tuple(torch.tensor([slot[axis] for slot in slots], dtype=torch.long) for axis in range(2))
    box_rows = torch.tensor([box for example in examples for box in example.boxes], dtype=torch.float32).reshape(-1, 4)
    boxes = _grid(box_rows, slot_index, (batch_size, max_boxes), 0)
    box_valid = torch.zeros((batch_size, max_boxes), dtype=torch.bool)
    box_valid[slot_index] = True
    uses_short = torch.zeros((batch_size, max_boxes), dtype=torch.bool)
    uses_short[slot_index] = torch.tensor(
        [flag for example in examples for flag in example.box_uses_short],
        dtype=torch.bool,
    )
    batch.update(boxes=boxes, box_valid=box_valid, box_uses_short=uses_short)
    for name, rows_of in (("box", lambda e: e.box_ids), ("pos", lambda e: e.pos_ids)):
        flat_ids, flat_attention = _pad([row for example in examples for row in rows_of(example)], pad_id)
        batch[f"{name}_ids"] = _grid(flat_ids, slot_index, (batch_size, max_boxes), pad_id)
        batch[f"{name}_attention"] = _grid(flat_attention, slot_index, (batch_size, max_boxes), 0)
    neg_slots = [(b, m, k) for b, m in slots for k in range(len(examples[b].neg_ids[m]))]
    neg_index = tuple(torch.tensor([slot[axis] for slot in neg_slots], dtype=torch.long) for axis in range(3))
    flat_ids, flat_attention = _pad([ids for b, m in slots for ids in examples[b].neg_ids[m]], pad_id)
    shape = (batch_size, max_boxes, max_negatives)
    neg_valid = torch.zeros(shape, dtype=torch.bool)
    neg_valid[neg_index] = True
    batch.update(
        neg_ids=_grid(flat_ids, neg_index, shape, pad_id),
        neg_attention=_grid(flat_attention, neg_index, shape, 0),
        neg_valid=neg_valid,
    )
    return batch
