"""Tiny random Hugging Face models built from config and saved like a real checkpoint, so
the backends' real `from_pretrained(local_dir)` path runs in seconds without a model hub.
Their outputs are random: tests check mechanics, never words or box positions."""

from __future__ import annotations

from pathlib import Path

WORDS = ("a the large small red green blue yellow striped dotted solid circle square star triangle image shows "
         "on left right top bottom of in near with background picture there is are and describe this detail").split()
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}:"
    "{% if message['content'] is string %} {{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %} <image>{% elif part['type'] == 'text' %} {{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}</s>\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
LLAVA_SPECIALS = ["<pad>", "<s>", "</s>", "<image>", "user:", "assistant:"]


def word_tokenizer(specials: list[str], *, unknown: str = "[UNK]", lowercase: bool = False):
    """A word-level fast tokenizer over the test vocabulary (plus punctuation)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {token: index for index, token in enumerate([unknown, *specials, *WORDS, ".", ",", "\n"])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=unknown))
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"),
                                                       pre_tokenizers.WhitespaceSplit(),
                                                       pre_tokenizers.Punctuation()])
    tokenizer.add_special_tokens(specials)
    return tokenizer


def save_tiny_llava(folder: Path, image_size: int = 28) -> Path:
    """A 2-layer LLaVA (CLIP vision tower + Llama) with a word-level tokenizer, a chat
    template and its image processor, saved as a checkpoint folder."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_tokenizer(LLAVA_SPECIALS), unk_token="[UNK]",
                                        pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    patch = 14
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                               image_token="<image>", num_additional_image_tokens=1)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in LLAVA_SPECIALS}
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=image_size, patch_size=patch, projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"]),
        image_token_id=ids["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    # "." also ends a caption, so that random weights write some finished captions
    model.generation_config.eos_token_id = [ids["</s>"], tokenizer.convert_tokens_to_ids(".")]
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.bos_token_id = ids["<s>"]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
