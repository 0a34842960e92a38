"""A small CLIP-compatible BPE tokenizer trained on the demo corpus.

The demo model cannot download OpenAI's 49k vocabulary, so it gets its own, trained with
the `tokenizers` library through exactly the pipeline transformers' `CLIPTokenizer`
rebuilds from `vocab.json` + `merges.txt`: NFC, whitespace folding and lowercasing; CLIP's
split regex (contractions, letter runs, single digits, punctuation runs) followed by the
byte-level alphabet; BPE whose word-final symbols carry the "</w>" suffix; and the two
special tokens "<|startoftext|>" / "<|endoftext|>".

The vocabulary is laid out as CLIP's is: the 256 byte symbols, the same 256 with "</w>",
one entry per merge in merge order, then the two specials. So every byte sequence is
encodable (no unknown tokens) and the files load in any CLIP tokenizer implementation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from fgclip.core.storage import write_text_atomic

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
WORD_END = "</w>"
# CLIP's pre-tokenizer: special tokens, English contractions, letter runs, one digit at a
# time, and runs of anything else that is not whitespace.
CLIP_SPLIT_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
MERGES_HEADER = "#version: 0.2"


def byte_symbols() -> list[str]:
    """The byte-level alphabet in byte order: byte b -> one printable unicode character.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, ...) are
    shifted to code points from 256 up, in byte order. This is the mapping of the
    byte-level pre-tokenizer (GPT-2 / CLIP), so the symbols match what it emits.
    """
    printable = (
        set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    )
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _clip_pipeline_tokenizer():
    """A `tokenizers.Tokenizer` shell with CLIP's normaliser and pre-tokenizer."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    tokenizer = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix=WORD_END, unk_token=END_TOKEN))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return tokenizer


def train_bpe(
    texts: Iterable[str], vocab_size: int, min_frequency: int
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn BPE merges on `texts`; returns (vocab in CLIP layout, merges in order)."""
    from tokenizers import pre_tokenizers, trainers

    tokenizer = _clip_pipeline_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[START_TOKEN, END_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix=WORD_END,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    raw_merges = json.loads(tokenizer.to_str())["model"]["merges"]
    merges = [_merge_pair(item) for item in raw_merges]
    return clip_vocab(merges), merges


def _merge_pair(item: str | list[str]) -> tuple[str, str]:
    """tokenizers writes a merge as "a b" (older releases) or ["a", "b"] (newer ones)."""
    left, right = item.split(" ") if isinstance(item, str) else item
    return left, right


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's layout: bytes, bytes + "</w>", one token per merge, then the specials."""
    tokens = byte_symbols()
    tokens += [symbol + WORD_END for symbol in tokens]
    seen = set(tokens)
    for left, right in merges:
        merged = left + right
        if merged not in seen:  # a merge result is new by construction; guard anyway
            tokens.append(merged)
            seen.add(merged)
    tokens += [START_TOKEN, END_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def write_vocab_files(vocab: dict[str, int], merges: list[tuple[str, str]], out_dir: str | Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt (with the version header CLIP's loaders skip)."""
    out = Path(out_dir)
    vocab_path, merges_path = out / "vocab.json", out / "merges.txt"
    write_text_atomic(vocab_path, json.dumps(vocab, ensure_ascii=False))
    write_text_atomic(merges_path, "\n".join([MERGES_HEADER, *(f"{a} {b}" for a, b in merges)]) + "\n")
    return vocab_path, merges_path


def build_clip_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], model_max_length: int):
    """A transformers `CLIPTokenizer` over the trained vocabulary (pad = end token, as CLIP)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        vocab=vocab,
        # transformers annotates merges as list[str], but the BPE model beneath takes pairs.
        merges=list(merges),  # type: ignore[arg-type]
        unk_token=END_TOKEN,
        bos_token=START_TOKEN,
        eos_token=END_TOKEN,
        pad_token=END_TOKEN,
        model_max_length=model_max_length,
    )


def train_clip_tokenizer(
    texts: Iterable[str], out_dir: str | Path, *, vocab_size: int, min_frequency: int, model_max_length: int
):
    """Train, write vocab.json + merges.txt + the transformers files; returns the tokenizer."""
    vocab, merges = train_bpe(texts, vocab_size, min_frequency)
    write_vocab_files(vocab, merges, out_dir)
    tokenizer = build_clip_tokenizer(vocab, merges, model_max_length)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def load_tokenizer(model_dir: str | Path):
    """The tokenizer saved beside a CLIP or FG-CLIP checkpoint.

    AutoTokenizer reads config.json to pick a class, and the "fgclip" model type is not
    registered with AutoConfig; handing it the parsed FG-CLIP config avoids a misleading
    warning. Plain CLIP directories load as usual.
    """
    from transformers import AutoTokenizer

    config_file = Path(model_dir) / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "fgclip":
        from fgclip.model.modeling import FGCLIPConfig  # transformers: not in data loader workers until used

        return AutoTokenizer.from_pretrained(str(model_dir), config=FGCLIPConfig.from_pretrained(str(model_dir)))
    return AutoTokenizer.from_pretrained(str(model_dir))
