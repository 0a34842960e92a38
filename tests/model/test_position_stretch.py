"""The 77 -> 248 text-position stretch and the short / long text paths."""

from __future__ import annotations

import pytest
import torch

from fgclip.model import stretch_position_table, stretched_length, trim_to_longest


def expected_stretch(table: torch.Tensor) -> torch.Tensor:
    """The stretch written out slot by slot, straight from the paper / reference description."""
    rows = [table[p] for p in range(20)]  # positions 0..19 kept
    for p in range(20, 76):  # each of 20..75 -> 4 slots towards p + 1
        for weight in (1.0, 0.75, 0.5, 0.25):
            rows.append(weight * table[p] + (1.0 - weight) * table[p + 1])
    for k in range(4):  # past the end: continue along P[76] - P[75]
        rows.append(table[76] + (k / 4.0) * (table[76] - table[75]))
    return torch.stack(rows)


def test_stretched_length_is_248_for_clip() -> None:
    assert stretched_length(77) == 248 == 20 + 56 * 4 + 4


def test_stretch_matches_formula() -> None:
    table = torch.randn(77, 12, generator=torch.Generator().manual_seed(0))
    stretched = stretch_position_table(table)
    assert stretched.shape == (248, 12)
    torch.testing.assert_close(stretched, expected_stretch(table), rtol=0, atol=1e-6)


def test_every_original_position_survives_exactly() -> None:
    table = torch.randn(77, 4, generator=torch.Generator().manual_seed(1))
    stretched = stretch_position_table(table)
    for position in range(20, 77):
        assert torch.equal(stretched[20 + 4 * (position - 20)], table[position])


def test_stretch_keeps_bfloat16() -> None:
    table = torch.randn(77, 4).to(torch.bfloat16)
    assert stretch_position_table(table).dtype == torch.bfloat16


def test_too_short_table_is_rejected() -> None:
    with pytest.raises(ValueError):
        stretch_position_table(torch.zeros(21, 4))


def test_conversion_fills_both_long_tables_and_keeps_the_short_one(tiny_clip, tiny_fgclip) -> None:
    clip_table = tiny_clip.text_model.embeddings.position_embedding.weight
    embeddings = tiny_fgclip.text_model.embeddings
    expected = expected_stretch(clip_table.detach())
    torch.testing.assert_close(embeddings.position_embedding_ori.weight.detach(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(embeddings.position_embedding_res.weight.detach(), expected, rtol=0, atol=1e-6)
    assert torch.equal(embeddings.position_embedding.weight, clip_table)
    assert tiny_fgclip.config.long_text_positions_stretched
    assert tiny_fgclip.config.source_max_position_embeddings == 77


def test_short_path_is_clip(tiny_clip, tiny_fgclip, tokens) -> None:
    ids, mask = tokens([5, 9, 3], width=12)
    with torch.no_grad():
        ours = tiny_fgclip.get_text_features(ids, mask, long=False)
        theirs = tiny_clip.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_long_path_reads_ori_for_first_20_and_res_after(tiny_fgclip, tokens) -> None:
    ids, mask = tokens([30, 200], width=248)
    embeddings = tiny_fgclip.text_model.embeddings
    with torch.no_grad():
        before = tiny_fgclip.get_text_features(ids, mask, long=True)
        embeddings.position_embedding_ori.weight[20:] += 5.0  # rows the long path must ignore
        embeddings.position_embedding_res.weight[:20] += 5.0
        assert torch.equal(tiny_fgclip.get_text_features(ids, mask, long=True), before)
        embeddings.position_embedding_res.weight[20:] += 5.0
        assert not torch.allclose(tiny_fgclip.get_text_features(ids, mask, long=True), before)


def test_long_path_uses_its_own_projection(tiny_fgclip, tokens) -> None:
    ids, mask = tokens([6, 8], width=10)
    with torch.no_grad():
        tiny_fgclip.text_filip_projection.weight.mul_(2.0)
        pooled = tiny_fgclip.encode_text(ids, mask, long=True)
        long_features = tiny_fgclip.get_text_features(ids, mask, long=True)
    torch.testing.assert_close(long_features, tiny_fgclip.text_filip_projection(pooled))


def test_short_text_longer_than_77_is_rejected(tiny_fgclip, tokens) -> None:
    ids, mask = tokens([80], width=80)
    with pytest.raises(ValueError):
        tiny_fgclip.get_text_features(ids, mask, long=False)


@pytest.mark.parametrize("long", [False, True])
def test_trimming_padding_is_exact(tiny_fgclip, tokens, long: bool) -> None:
    width = 248 if long else 77
    ids, mask = tokens([7, 19, 4], width=width, seed=3)
    trimmed_ids, trimmed_mask = trim_to_longest(ids, mask)
    assert trimmed_ids.shape == (3, 19)
    with torch.no_grad():
        full = tiny_fgclip.get_text_features(ids, mask, long=long)
        trimmed = tiny_fgclip.get_text_features(trimmed_ids, trimmed_mask, long=long)
        without_mask = tiny_fgclip.get_text_features(trimmed_ids, None, long=long)
    torch.testing.assert_close(trimmed, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(without_mask, full, rtol=0, atol=1e-5)


def test_pooling_at_first_eos_even_when_padding_is_eos(tiny_fgclip, tokens) -> None:
    eos = tiny_fgclip.config.text_config.eos_token_id
    ids, mask = tokens([4, 6], width=8)
    ids[mask == 0] = eos  # CLIP tokenizers pad with the EOS token
    assert tiny_fgclip.pooling_positions(ids, mask).tolist() == [3, 5]


def test_row_without_eos_pools_at_last_real_token(tiny_fgclip, tokens) -> None:
    ids, mask = tokens([4, 6], width=8)
    ids[1, 5] = 7  # a truncating tokenizer dropped the EOS
    assert tiny_fgclip.pooling_positions(ids, mask).tolist() == [3, 5]


def test_legacy_config_pools_at_argmax(clip_factory, tokens) -> None:
    from fgclip.model import convert_clip_to_fgclip

    model = convert_clip_to_fgclip(clip_factory(eos_token_id=2))
    ids, mask = tokens([4, 6], width=8)
    assert model.pooling_positions(ids, mask).tolist() == ids.argmax(dim=-1).tolist()
